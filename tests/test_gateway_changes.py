"""An upstream cannot loosen its own gate: a tool first served gated stays gated whatever the upstream
re-announces, until the operator changes its rules; and every change of a tool's definition is announced
(the server log, an audit record). Real sessions to tests/upstream_server.py, which re-announces its tools
when asked (`redefine`) and keeps a redefinition across restarts, as a new version would."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import replace
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.subscriptions import InMemorySubscriptionBus
from mcp_types import CallToolResult

from hitl_mcp.config import Settings, load_settings
from hitl_mcp.gate import open_gate
from hitl_mcp.gateway.tools import GatewayTools
from hitl_mcp.gateway.view import SupervisedUpstreams
from hitl_mcp.report import build
from hitl_mcp.sdk_seams import registered_tool
from hitl_mcp.server import build_server
from hitl_mcp.upstream.settings import GatewaySettings
from hitl_mcp.upstream.supervisor import Upstreams
from tests.cli_in_process import hitl
from tests.smtp_sink import SmtpSink
from tests.test_gateway import session, until_listed
from tests.test_notify import Receiver, entry
from tests.test_report import Trail
from tests.test_server import ok, text

WAIT_SECONDS = 30.0


def changes_recorded(settings: Settings) -> list[dict[str, Any]]:
    with closing(sqlite3.connect(settings.db_path)) as conn:
        rows = conn.execute(
            "SELECT request_id, actor, details FROM audit WHERE event = 'tool-changed' ORDER BY seq"
        ).fetchall()
    return [{"request_id": trail, "actor": actor, **json.loads(details)} for trail, actor, details in rows]


async def until(check: Callable[[], bool]) -> None:
    with anyio.fail_after(WAIT_SECONDS):
        while not check():  # noqa: ASYNC110 -- the gateway records on its own
            await anyio.sleep(0.05)


async def description_of(client: Client, name: str) -> str:
    tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    return tools[name].description or ""


async def until_described(client: Client, name: str, words: str) -> None:
    with anyio.fail_after(WAIT_SECONDS):
        while words not in await description_of(client, name):  # noqa: ASYNC110 -- the upstream re-lists
            await anyio.sleep(0.05)


async def test_a_gated_tool_re_announced_as_read_only_stays_gated_and_the_change_is_announced(
    gateway_settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    async with session(gateway_settings, "agent") as agent:
        assert (await description_of(agent, "notes__fail")).startswith("Files a request")
        ok(
            await agent.call_tool(
                "notes__redefine", {"name": "fail", "read_only": True, "description": "Harmless lookup."}
            )
        )
        await until_described(agent, "notes__fail", "Harmless lookup.")
        described = await description_of(agent, "notes__fail")
        called = ok(await agent.call_tool("notes__fail", {"message": "boom"}))
        await until(lambda: len(changes_recorded(gateway_settings)) == 1)

    # Still filed for approval, never forwarded to the upstream.
    assert described.startswith("Files a request")
    assert called["status"] == "pending"
    [change] = changes_recorded(gateway_settings)
    assert change["request_id"] == change["actor"] == "upstream.notes"
    assert change["exposed_as"] == "notes__fail"
    assert change["changed"] == ["description", "annotations"]
    assert (change["decision"], change["held"]) == ("gated", True)
    assert change["gated_because"] == "no pattern and not marked read-only (fail closed)"
    assert (
        "notes: notes__fail changed its description, annotations after hitl first served it; held gated"
        in capsys.readouterr().err
    )


async def test_a_passed_tool_once_gated_by_its_annotations_is_never_passed_again(
    gateway_settings: Settings,
) -> None:
    async with session(gateway_settings, "agent") as agent:
        before = await description_of(agent, "notes__sleep")
        ok(await agent.call_tool("notes__redefine", {"name": "sleep", "read_only": False}))
        await until(lambda: len(changes_recorded(gateway_settings)) == 1)
        tightened = await description_of(agent, "notes__sleep")
        ok(await agent.call_tool("notes__redefine", {"name": "sleep", "read_only": True}))
        await until(lambda: len(changes_recorded(gateway_settings)) == 2)
        after = await description_of(agent, "notes__sleep")
        called = ok(await agent.call_tool("notes__sleep", {"seconds": 0}))

    assert before == "Answer after `seconds`."
    assert tightened.startswith("Files a request") and after.startswith("Files a request")
    assert called["status"] == "pending"
    first, second = changes_recorded(gateway_settings)
    assert (first["changed"], first["decision"], first["held"]) == (["annotations"], "gated", False)
    assert (second["changed"], second["decision"], second["held"]) == (["annotations"], "gated", True)


async def test_a_changed_input_schema_of_a_gated_tool_is_announced(gateway_settings: Settings) -> None:
    async with session(gateway_settings, "agent") as agent:
        ok(await agent.call_tool("notes__redefine", {"name": "write_note", "add_argument": "mode"}))
        await until(lambda: len(changes_recorded(gateway_settings)) == 1)
        tools = {tool.name: tool for tool in (await agent.list_tools()).tools}

    assert "mode" in tools["notes__write_note"].input_schema["properties"]
    [change] = changes_recorded(gateway_settings)
    assert (change["changed"], change["decision"], change["held"]) == (["input schema"], "gated", False)


async def test_a_held_tool_stays_held_after_a_restart_until_the_upstreams_rules_change(
    gateway_settings: Settings, gateway_env: dict[str, str]
) -> None:
    async with session(gateway_settings, "agent") as agent:
        ok(await agent.call_tool("notes__redefine", {"name": "fail", "read_only": True}))
        await until(lambda: len(changes_recorded(gateway_settings)) == 1)

    # Started again with the same config: the upstream now lists `fail` as read-only from the start.
    async with session(gateway_settings, "agent") as agent:
        held = await description_of(agent, "notes__fail")
        filed = await agent.call_tool("notes__fail", {"message": "boom"})

    shown = await anyio.to_thread.run_sync(lambda: hitl(gateway_env, "upstreams"))

    # Started again with its rules changed (one more gate pattern, about other tools): accepted as it is.
    config = anyio.Path(gateway_env["HITL_CONFIG"])
    written = await config.read_text()
    await config.write_text(
        written.replace('gate = ["write_*", "delete_*"]', 'gate = ["write_*", "delete_*", "x_*"]')
    )
    changed = load_settings(gateway_env)
    async with session(changed, "agent") as agent:
        accepted = await description_of(agent, "notes__fail")
        forwarded = await agent.call_tool("notes__fail", {"message": "boom"})
    shown_after = await anyio.to_thread.run_sync(lambda: hitl(gateway_env, "upstreams"))

    assert held.startswith("Files a request")
    assert ok(filed)["status"] == "pending"
    # `hitl upstreams` shows it as a server started now would: held, with the change that holds it.
    assert shown.returncode == 0, shown.stderr
    rows = {line.split()[0]: " ".join(line.split()[1:]) for line in shown.stdout.splitlines() if "__" in line}
    assert rows["notes__fail"].startswith("gated held gated: gated when first served (no pattern")
    assert (
        "  changed: notes__fail changed its annotations after hitl first served it; held gated"
        in shown.stdout
    )
    assert "changed:" not in shown_after.stdout
    assert "notes__fail passed annotation readOnlyHint = true" in " ".join(shown_after.stdout.split())
    assert accepted == "Answer with an error whose text is `message`."
    assert forwarded.is_error and "boom" in text(forwarded)


async def test_untrusted_annotations_gate_a_read_only_tool_served_through_the_gateway(
    gateway_settings: Settings,
) -> None:
    untrusted = GatewaySettings(trust_annotations=False).apply(gateway_settings.upstreams["notes"])
    settings = replace(gateway_settings, upstreams={"notes": untrusted})
    async with Client(build_server(settings, principal="agent")) as agent:
        await until_listed(agent, "notes__sleep")
        sleep = await description_of(agent, "notes__sleep")
        read = await description_of(agent, "notes__read_note")

    assert sleep.startswith("Files a request")  # read-only by its own word, matched by no pattern
    assert read == "The note at `path`."  # a pass pattern still passes


def test_a_recorded_tool_change_is_an_event_of_the_report_not_a_request() -> None:
    trail = Trail().filed("r1", "notes__write_note")
    trail.add("upstream.notes", "tool-changed", "upstream.notes", 5, tool="fail", exposed_as="notes__fail")

    report = build(trail.records)

    assert report.requests == 1 and report.tools == {"notes__write_note": {"pending": 1}}
    assert report.events["tool-changed"] == 1


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_a_tool_change_is_sent_to_the_notifiers_that_want_tool_changed(
    gateway_env: dict[str, str], receiver: Receiver, smtp: SmtpSink
) -> None:
    config = anyio.Path(gateway_env["HITL_CONFIG"])
    await config.write_text(
        await config.read_text()
        + entry(["tool-changed"], webhook=receiver.url("/hook"))
        + entry(["tool-changed"], slack_webhook=receiver.url("/services/T0/B0/X"))
        + entry(["tool-changed"], email="oncall@example.com")
        + entry(["filed"], webhook=receiver.url("/filed-only"))
    )
    settings = load_settings(gateway_env)
    async with session(settings, "agent") as agent:
        ok(await agent.call_tool("notes__redefine", {"name": "fail", "read_only": True}))
        [hook] = await receiver.wait_ok("/hook", 1, timeout=WAIT_SECONDS)
        [slack] = await receiver.wait_ok("/services/T0/B0/X", 1, timeout=WAIT_SECONDS)
        [mail] = await smtp.wait_for_async(1, timeout=WAIT_SECONDS)

    body = hook.json
    assert (body["event"], body["actor"]) == ("tool-changed", "upstream.notes")
    assert body["notice"] == {
        "upstream": "notes",
        "tool": "notes__fail",
        "changed": ["annotations"],
        "decision": "gated",
        "why": "held gated: gated when first served (no pattern and not marked read-only (fail closed))",
        "held": True,
    }
    assert body["text"].startswith("Tool changed: notes__fail (upstream notes)\n")
    assert "Now        gated, held: the upstream cannot loosen its own gate" in body["text"]
    header, facts = slack.json["blocks"]
    assert header["text"]["text"] == "Tool changed: notes__fail (upstream notes)"
    assert "*Changed:* annotations (after hitl first served it)" in facts["text"]["text"]
    assert str(mail.message["Subject"]) == "[hitl] Tool changed: notes__fail (upstream notes)"
    assert "Check:    hitl upstreams" in mail.body and "Accept:   to accept" in mail.body
    assert receiver.attempts("/filed-only") == []


async def test_a_passed_tool_re_listed_as_gated_is_not_forwarded_before_it_is_registered_again(
    gateway_settings: Settings,
) -> None:
    # The supervisor learns of the change a moment before hitl's tools are synced with it: a call made in
    # that moment reaches the tool still registered as passed, which must not forward it.
    async def never_filed(name: str, arguments: dict[str, Any], ctx: Any) -> CallToolResult:
        raise AssertionError(f"{name} was filed")

    app: MCPServer[Any] = MCPServer("gateway-test")
    upstream = gateway_settings.upstreams["notes"]
    async with open_gate(gateway_settings) as gate, Upstreams([upstream], log=lambda line: None) as upstreams:
        tools = GatewayTools(
            app,
            SupervisedUpstreams(upstreams),
            file=never_filed,
            principal_of=lambda ctx: "agent",
            bus=InMemorySubscriptionBus(),
        )
        await until(lambda: upstreams.live("notes", "sleep"))
        tools.sync(gate)
        passed = registered_tool(app, "notes__sleep")
        assert passed is not None
        nobody: Any = None  # the handlers read no context: the principal is given
        forwarded = await passed.run({"seconds": 0}, nobody)
        await upstreams.call("notes", "redefine", {"name": "sleep", "read_only": False})
        await until(lambda: upstreams.live("notes", "sleep") and not upstreams.passes("notes", "sleep"))
        with pytest.raises(ToolError) as refused:
            await passed.run({"seconds": 0}, nobody)

    assert not forwarded.is_error
    assert str(refused.value) == (
        "Error executing tool notes__sleep: notes__sleep is gated now (its upstream changed it); call it "
        "again to file a request. Nothing was sent."
    )
