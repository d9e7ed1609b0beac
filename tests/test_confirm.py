"""`approval = "confirm"`: the person at the calling client confirms through elicitation, on both protocol
generations, with real SDK clients in process; a request nobody confirms waits for someone else."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.client.session import ClientRequestContext
from mcp.shared.exceptions import MCPError
from mcp_types import (
    ElicitRequestFormParams,
    ElicitRequestParams,
    ElicitRequestURLParams,
    ElicitResult,
    ErrorData,
)

from hitl_mcp.config import Settings, load_settings
from hitl_mcp.errors import ConfigError, NotAllowed
from hitl_mcp.gate import open_gate
from hitl_mcp.ledger import Ledger
from hitl_mcp.server import build_server
from tests.cli_in_process import hitl
from tests.environment import process_env, write_config
from tests.smtp_sink import SmtpSink
from tests.test_server import ok, text

SMALL = {"symbol": "GOOGL", "quantity": 5, "price": 100.0}  # $500: the confirm rule
LARGE = {"symbol": "GOOGL", "quantity": 100, "price": 150.0}  # $15,000: one approval by someone else
POLICY = """
[policy.buy_stock]
rules = [
  { when = "quantity * price <= 1000", approval = "confirm" },
  { levels = [{ count = 1 }] },
]
"""
MODES = ["legacy", "2026-07-28"]
Answer = Callable[[ClientRequestContext, ElicitRequestParams], Awaitable[ElicitResult | ErrorData]]


@pytest.fixture
def confirm_env(tmp_path: Path, smtp: SmtpSink) -> dict[str, str]:
    config = write_config(tmp_path / "hitl.toml", smtp_port=smtp.port, extra=POLICY)
    text_now = config.read_text(encoding="utf-8")
    config.write_text(
        text_now.replace("dedup_seconds = 0\n", "dedup_seconds = 0\nconfirm_timeout_seconds = 1\n")
    )
    return process_env(tmp_path, config)


@pytest.fixture
def confirm_settings(confirm_env: dict[str, str]) -> Settings:
    return load_settings(confirm_env)


def answering(
    content: dict[str, Any] | None,
    action: str = "accept",
    asked: list[str] | None = None,
    schemas: list[dict[str, Any]] | None = None,
) -> Answer:
    async def answer(context: ClientRequestContext, params: ElicitRequestParams) -> ElicitResult:
        if asked is not None:
            asked.append(params.message)
        if schemas is not None and isinstance(params, ElicitRequestFormParams):
            schemas.append(params.requested_schema)
        return ElicitResult(action=action, content=content)

    return answer


@asynccontextmanager
async def client(
    settings: Settings, principal: str, mode: str = "legacy", answer: Answer | None = None
) -> AsyncIterator[Client]:
    app = build_server(settings, principal=principal)
    async with Client(app, mode=mode, elicitation_callback=answer) as opened:  # type: ignore[arg-type]
        yield opened


def ledger(settings: Settings) -> Ledger:
    return Ledger(settings.config_path.parent / "ledger.db", 100_000.0)  # type: ignore[union-attr]


async def trail(settings: Settings, request_id: str) -> list[tuple[str, str, dict[str, Any]]]:
    async with open_gate(settings) as gate:
        return [(e.event, e.actor, e.details) for e in await gate.store.audit_trail(request_id)]


@pytest.mark.parametrize("mode", MODES)
async def test_yes_runs_it_once_and_the_same_call_returns_the_result(
    confirm_settings: Settings, mode: str
) -> None:
    asked: list[str] = []
    schemas: list[dict[str, Any]] = []
    answer = answering({"confirm": True}, asked=asked, schemas=schemas)
    async with client(confirm_settings, "agent", mode, answer) as agent:
        result = await agent.call_tool("buy_stock", SMALL)

    filed = ok(result)
    assert filed["status"] == "executed", text(result)
    assert filed["result"]["quantity"] == 5
    assert "confirmed it, so it ran once" in text(result)
    # The question states exactly what will run: the summary and the preview's values.
    assert len(asked) == 1
    assert "Buy 5 GOOGL at $100.00 — total $500.00" in asked[0]
    assert "total: 500.0" in asked[0]
    # The spec's flat form: primitive properties only, which every client can render.
    assert schemas[0]["properties"]["confirm"]["type"] == "boolean"
    assert schemas[0]["properties"]["reason"]["type"] == "string"
    assert schemas[0]["required"] == ["confirm"]
    assert [fill.quantity for fill in await ledger(confirm_settings).orders()] == [5]
    events = await trail(confirm_settings, filed["request_id"])
    assert ("confirmed", "agent") in [(event, actor) for event, actor, _ in events]
    assert "approved" not in [event for event, _, _ in events]


@pytest.mark.parametrize("mode", MODES)
async def test_no_rejects_it_with_the_reason_and_nothing_runs(confirm_settings: Settings, mode: str) -> None:
    answer = answering({"confirm": False, "reason": "wrong ticker"})
    async with client(confirm_settings, "agent", mode, answer) as agent:
        result = await agent.call_tool("buy_stock", SMALL)

    filed = ok(result)
    assert filed["status"] == "rejected"
    assert "said no" in text(result)
    assert await ledger(confirm_settings).orders() == []
    rejected = [
        d for event, _, d in await trail(confirm_settings, filed["request_id"]) if event == "rejected"
    ]
    assert len(rejected) == 1
    assert (rejected[0]["reason"], rejected[0]["confirmation"]) == ("wrong ticker", True)


@pytest.mark.parametrize("mode", MODES)
async def test_a_decline_leaves_it_pending_for_someone_else(confirm_settings: Settings, mode: str) -> None:
    async with client(confirm_settings, "agent", mode, answering(None, action="decline")) as agent:
        filed = ok(await agent.call_tool("buy_stock", SMALL))

    assert filed["status"] == "pending"
    assert "1 × anyone but the requester" in filed["next_step"]
    assert await ledger(confirm_settings).orders() == []


@pytest.mark.parametrize("mode", MODES)
async def test_without_elicitation_it_waits_and_only_someone_else_approves_it(
    confirm_settings: Settings, mode: str
) -> None:
    async with (
        client(confirm_settings, "agent", mode) as agent,
        client(confirm_settings, "reviewer") as other,
    ):
        filed = ok(await agent.call_tool("buy_stock", SMALL))
        assert filed["status"] == "pending"

        own = await agent.call_tool("approve", {"request_id": filed["request_id"]})
        assert own.is_error and "may not decide its own request" in text(own)
        assert await ledger(confirm_settings).orders() == []

        approved = ok(await other.call_tool("approve", {"request_id": filed["request_id"]}))
        assert approved["status"] == "executed"
    assert [fill.quantity for fill in await ledger(confirm_settings).orders()] == [5]


async def test_an_unanswered_question_times_out_and_the_request_waits(confirm_settings: Settings) -> None:
    never = anyio.Event()

    async def silent(context: ClientRequestContext, params: ElicitRequestParams) -> ElicitResult:
        await never.wait()
        raise AssertionError("unreachable")

    async with client(confirm_settings, "agent", "legacy", silent) as agent:
        with anyio.fail_after(10):
            filed = ok(await agent.call_tool("buy_stock", SMALL))
        never.set()

    assert filed["status"] == "pending"
    assert await ledger(confirm_settings).orders() == []


async def test_a_rule_with_levels_never_asks(confirm_settings: Settings) -> None:
    asked: list[str] = []
    async with client(
        confirm_settings, "agent", "legacy", answering({"confirm": True}, asked=asked)
    ) as agent:
        filed = ok(await agent.call_tool("buy_stock", LARGE))

    assert filed["status"] == "pending"
    assert asked == []


async def test_the_gate_lets_only_the_requester_confirm_and_only_under_a_confirm_rule(
    confirm_settings: Settings,
) -> None:
    async with open_gate(confirm_settings) as gate:
        small = await gate.file("buy_stock", SMALL, "agent")
        with pytest.raises(NotAllowed, match="only its requester confirms it"):
            await gate.confirm(small.request_id, "reviewer", True)
        large = await gate.file("buy_stock", LARGE, "agent")
        with pytest.raises(NotAllowed, match="does not ask its requester to confirm"):
            await gate.confirm(large.request_id, "agent", True)
        done = await gate.confirm(small.request_id, "agent", True)
        assert done.status.value == "executed"
        # A confirmation is no decision: nobody is recorded as having approved it.
        assert done.decisions == []


async def test_a_forged_request_state_cannot_confirm_another_principals_request(
    confirm_settings: Settings,
) -> None:
    async with open_gate(confirm_settings) as gate:
        theirs = await gate.file("buy_stock", SMALL, "someone-else")
    forged = json.dumps(
        {"kind": "hitl-confirm/1", "request_id": theirs.request_id, "digest": theirs.arguments_digest}
    )
    async with client(confirm_settings, "agent", "2026-07-28") as agent:
        # The SDK seals the state it sends: one the client made up is refused before the tool runs.
        with pytest.raises(MCPError, match="requestState"):
            await agent.session.call_tool(
                "buy_stock",
                SMALL,
                input_responses={"hitl_confirm": ElicitResult(action="accept", content={"confirm": True})},
                request_state=forged,
                allow_input_required=True,
            )
    assert await ledger(confirm_settings).orders() == []


def test_confirm_mixed_with_levels_is_refused_naming_the_rule(tmp_path: Path, smtp: SmtpSink) -> None:
    mixed = '[policy.buy_stock]\nrules = [ { approval = "confirm", levels = [{ count = 1 }] } ]\n'
    config = write_config(tmp_path / "hitl.toml", smtp_port=smtp.port, extra=mixed)
    with pytest.raises(ConfigError) as refused:
        load_settings(process_env(tmp_path, config))
    message = str(refused.value)
    assert message.startswith("policy.buy_stock.rules.0: ")
    assert "never counts toward levels" in message
    assert "\n" not in message


async def test_every_face_shows_a_confirmation_as_the_requesters_consent(
    confirm_env: dict[str, str], confirm_settings: Settings
) -> None:
    async with client(confirm_settings, "agent", "legacy", answering({"confirm": True})) as agent:
        request_id = ok(await agent.call_tool("buy_stock", SMALL))["request_id"]
        record = ok(await agent.call_tool("get_request", {"request_id": request_id}))
    assert record["confirmation"] == "confirmed"
    assert record["decisions"] == []

    shown = await anyio.to_thread.run_sync(lambda: hitl(confirm_env, "show", request_id))
    assert shown.returncode == 0, shown.stderr
    assert "Confirm    confirmed: agent's person said yes through their client" in shown.stdout


async def test_policy_check_explains_the_confirm_rule(confirm_env: dict[str, str]) -> None:
    checked = await anyio.to_thread.run_sync(lambda: hitl(confirm_env, "policy", "check"))
    assert checked.returncode == 0, checked.stderr
    assert (
        "rule 1 (when quantity * price <= 1000): the requester confirms through their client, or else "
        "1 × anyone but the requester (a confirmation is consent, never a counted approval)"
    ) in checked.stdout


async def test_the_question_shows_hidden_characters_escaped(tmp_path: Path, smtp: SmtpSink) -> None:
    policy = '[policy.send_email]\nrules = [ { approval = "confirm" } ]\n'
    config = write_config(tmp_path / "hitl.toml", smtp_port=smtp.port, extra=policy)
    settings = load_settings(process_env(tmp_path, config))
    asked: list[str] = []
    email = {"to": "erin@example.org", "subject": "Hi \u202egnp.exe", "body": "Hello"}
    async with client(settings, "agent", "legacy", answering(None, "decline", asked)) as agent:
        filed = ok(await agent.call_tool("send_email", email))

    assert filed["status"] == "pending"
    assert len(asked) == 1
    assert "\u202e" not in asked[0]  # the raw override never reaches the person's screen
    assert 'Email erin@example.org: "Hi \\u202egnp.exe"' in asked[0]


async def test_the_report_counts_no_confirmation_as_an_approvers_decision(confirm_settings: Settings) -> None:
    from hitl_mcp import report

    async with open_gate(confirm_settings) as gate:
        yes = await gate.file("buy_stock", SMALL, "agent")
        no = await gate.file("buy_stock", {**SMALL, "quantity": 6}, "agent")
        await gate.confirm(yes.request_id, "agent", True)
        await gate.confirm(no.request_id, "agent", False, "not today")
        made = await report.from_store(gate.store)

    assert made.tools["buy_stock"] == {"executed": 1, "rejected": 1}
    assert made.events["confirmed"] == 1
    assert "agent" not in made.approvers


@pytest.mark.parametrize("mode", MODES)
async def test_a_client_that_opens_links_is_offered_the_inbox_page_which_decides_nothing(
    tmp_path: Path, smtp: SmtpSink, mode: str
) -> None:
    web = '[web]\npublic_url = "https://hitl.example.com/"\n'
    config = write_config(tmp_path / "hitl.toml", smtp_port=smtp.port, extra=POLICY + web)
    settings = load_settings(process_env(tmp_path, config))
    offered: list[ElicitRequestParams] = []

    async def open_it(context: ClientRequestContext, params: ElicitRequestParams) -> ElicitResult:
        offered.append(params)
        return ElicitResult(action="accept")

    async with client(settings, "agent", mode, open_it) as agent:
        filed = ok(await agent.call_tool("buy_stock", LARGE))

    assert filed["status"] == "pending"
    assert len(offered) == 1
    link = offered[0]
    assert isinstance(link, ElicitRequestURLParams)
    assert link.url == f"https://hitl.example.com/requests/{filed['request_id']}"
    assert "opening it decides nothing" in link.message
    assert await ledger(settings).orders() == []
    events = [event for event, _, _ in await trail(settings, filed["request_id"])]
    assert events == ["filed"]
