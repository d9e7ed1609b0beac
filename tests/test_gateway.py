"""The gateway: a real upstream MCP server's tools behind the gate — gated ones filed, previewed, decided
and run once on the upstream; passed ones forwarded at once and audited."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing
from pathlib import Path
from typing import Any

import anyio
from mcp import Client

from hitl_mcp.config import Settings, load_settings
from hitl_mcp.gate import arguments_digest
from hitl_mcp.server import build_server
from tests.cli_in_process import hitl
from tests.environment import process_env, write_config
from tests.smtp_sink import SmtpSink
from tests.test_server import ok, text
from tests.upstream_server import effects

UPSTREAM = Path(__file__).with_name("upstream_server.py")


def upstream_table(counter: Path, *extra_args: str, name: str = "notes", settings: str = "") -> str:
    args = json.dumps([str(UPSTREAM), "--counter", str(counter), *extra_args])
    return f"""
[upstreams.{name}]
command = {json.dumps(sys.executable)}
args = {args}
gate = ["write_*", "delete_*"]
pass = ["read_*", "stats", "add_*", "redefine"]
{settings}

[upstreams.{name}.preview.write_note]
tool = "read_note"
arguments = {{ path = "{{path}}" }}
"""


async def tool_names(client: Client) -> set[str]:
    return {tool.name for tool in (await client.list_tools()).tools}


async def until_listed(client: Client, name: str, timeout: float = 30.0) -> None:
    with anyio.fail_after(timeout):
        while name not in await tool_names(client):  # noqa: ASYNC110 -- the upstream starts on its own
            await anyio.sleep(0.05)


@asynccontextmanager
async def session(settings: Settings, principal: str) -> AsyncIterator[Client]:
    async with Client(build_server(settings, principal=principal)) as client:
        await until_listed(client, "notes__write_note")
        yield client


def writes(counter: Path) -> list[dict[str, Any]]:
    return [effect for effect in effects(counter) if effect["op"] == "write_note"]


async def test_upstream_tools_are_listed_gated_or_passed_by_the_rules(gateway_settings: Settings) -> None:
    async with session(gateway_settings, "agent") as agent:
        tools = {tool.name: tool for tool in (await agent.list_tools()).tools}

    write = tools["notes__write_note"]
    assert write.description is not None and write.description.startswith(
        "Files a request for human approval"
    )
    assert "Write `text` as the note" in write.description
    assert set(write.input_schema["properties"]) == {"path", "text"}
    assert write.output_schema is not None and "request_id" in write.output_schema["properties"]
    # Passed: the upstream's own description and output schema.
    assert tools["notes__stats"].output_schema is not None
    assert set(tools["notes__stats"].output_schema["properties"]) == {"count", "deletes"}
    assert tools["notes__read_note"].description == "The note at `path`."
    # Neither pattern nor read-only annotation: gated (fail closed); read-only and unmatched: passed.
    assert tools["notes__fail"].description is not None and tools["notes__fail"].description.startswith(
        "Files"
    )
    assert tools["notes__sleep"].description == "Answer after `seconds`."
    assert "buy_stock" in tools and "list_pending" in tools


async def test_a_gated_call_files_a_previewed_request_and_approval_runs_it_once(
    gateway_settings: Settings, counter: Path
) -> None:
    async with session(gateway_settings, "agent") as agent, session(gateway_settings, "alice") as alice:
        filed = ok(await agent.call_tool("notes__write_note", {"path": "a.txt", "text": "second " * 20}))
        before = len(writes(counter))
        decided = ok(await alice.call_tool("approve", {"request_id": filed["request_id"]}))
        again = await alice.call_tool("approve", {"request_id": filed["request_id"]})

    assert filed["status"] == "pending" and before == 0
    assert filed["summary"].startswith('notes__write_note(path="a.txt", text="second second')
    assert '…" 140 B)' in filed["summary"]
    preview = filed["preview"]
    assert preview["arguments"] == {"path": "a.txt", "text": "second " * 20}
    assert preview["preview_call"]["tool"] == "read_note"
    assert decided["status"] == "executed"
    assert decided["result"]["content"][0]["text"] == "wrote a.txt"
    assert again.is_error and "not pending" in text(again)
    assert [effect["text"] for effect in writes(counter)] == ["second " * 20]


async def test_the_preview_call_shows_what_the_call_would_overwrite(
    gateway_settings: Settings, counter: Path
) -> None:
    async with session(gateway_settings, "agent") as agent, session(gateway_settings, "alice") as alice:
        first = ok(await agent.call_tool("notes__write_note", {"path": "n.txt", "text": "old text"}))
        ok(await alice.call_tool("approve", {"request_id": first["request_id"]}))
        second = ok(await agent.call_tool("notes__write_note", {"path": "n.txt", "text": "new text"}))

    assert "no note at n.txt" in json.dumps(first["preview"]["preview_call"])
    shown = second["preview"]["preview_call"]
    assert shown["arguments"] == {"path": "n.txt"} and shown["content"][0]["text"] == "old text"


async def test_rejection_never_runs_the_upstream_tool(gateway_settings: Settings, counter: Path) -> None:
    async with session(gateway_settings, "agent") as agent, session(gateway_settings, "alice") as alice:
        filed = ok(await agent.call_tool("notes__delete_note", {"path": "keep.txt"}))
        ok(await alice.call_tool("reject", {"request_id": filed["request_id"], "reason": "keep it"}))
        waited = ok(
            await agent.call_tool(
                "wait_for_decision", {"request_id": filed["request_id"], "timeout_seconds": 1}
            )
        )

    assert waited["status"] == "rejected"
    assert effects(counter) == []


async def test_arguments_are_checked_against_the_upstream_schema_and_nothing_is_filed(
    gateway_settings: Settings,
) -> None:
    async with session(gateway_settings, "agent") as agent:
        missing = await agent.call_tool("notes__write_note", {"path": "a.txt"})
        wrong = await agent.call_tool("notes__write_note", {"path": 7, "text": "x"})
        page = ok(await agent.call_tool("list_pending", {}))

    assert missing.is_error and "'text' is a required property (required)" in text(missing)
    assert wrong.is_error and "path: 7 is not of type 'string' (type)" in text(wrong)
    assert page["requests"] == []


async def test_a_passed_call_is_forwarded_at_once_and_audited(
    gateway_settings: Settings, counter: Path
) -> None:
    async with session(gateway_settings, "agent") as agent:
        stats = await agent.call_tool("notes__stats", {})
        missing = await agent.call_tool("notes__read_note", {"path": "none.txt"})

    assert not stats.is_error and stats.structured_content == {"count": 0, "deletes": 0}
    assert missing.is_error and "no note at none.txt" in text(missing)
    with closing(sqlite3.connect(gateway_settings.db_path)) as conn:
        records = conn.execute("SELECT request_id, event, actor, details FROM audit ORDER BY seq").fetchall()
    # Each pass is recorded as it is forwarded; an error answer adds its outcome on the same id.
    stats_digest = arguments_digest("notes__stats", {})
    read_digest = arguments_digest("notes__read_note", {"path": "none.txt"})
    assert [(event, actor, json.loads(details)) for _, event, actor, details in records] == [
        (
            "passed",
            "agent",
            {"tool": "notes__stats", "arguments_digest": stats_digest, "outcome": "forwarded"},
        ),
        (
            "passed",
            "agent",
            {"tool": "notes__read_note", "arguments_digest": read_digest, "outcome": "forwarded"},
        ),
        ("pass-outcome", "agent", {"tool": "notes__read_note", "outcome": "answered with an error"}),
    ]
    assert records[0][0] != records[1][0] == records[2][0]


async def test_an_upstream_error_fails_the_request_with_the_upstreams_own_text(
    gateway_settings: Settings,
) -> None:
    async with session(gateway_settings, "agent") as agent, session(gateway_settings, "alice") as alice:
        filed = ok(await agent.call_tool("notes__fail", {"message": "quota exceeded"}))
        decided = ok(await alice.call_tool("approve", {"request_id": filed["request_id"]}))

    assert decided["status"] == "failed"
    # The upstream's own words (its SDK prefixes the tool's name).
    assert decided["error"] == "notes answered with an error: Error executing tool fail: quota exceeded"
    assert decided["result"]["content"][0]["text"].endswith("quota exceeded")


async def test_a_tool_the_upstream_adds_appears_and_is_announced(gateway_settings: Settings) -> None:
    async with session(gateway_settings, "agent") as agent:
        ok(await agent.call_tool("notes__add_tool", {"name": "brand_new"}))
        await until_listed(agent, "notes__brand_new")
        tools = {tool.name: tool for tool in (await agent.list_tools()).tools}

    added = tools["notes__brand_new"]
    assert added.description is not None and added.description.startswith("Files a request")


async def test_a_call_lost_after_it_was_sent_is_of_unknown_outcome_and_never_resent(
    tmp_path: Path, smtp: SmtpSink, counter: Path
) -> None:
    config = write_config(
        tmp_path / "crashing.toml", smtp_port=smtp.port, extra=upstream_table(counter, "--crash-after", "1")
    )
    settings = load_settings(process_env(tmp_path, config))
    async with session(settings, "agent") as agent, session(settings, "alice") as alice:
        filed = ok(await agent.call_tool("notes__write_note", {"path": "x", "text": "once"}))
        decided = ok(await alice.call_tool("approve", {"request_id": filed["request_id"]}))
        # The upstream comes back; the request is never sent again by itself.
        await until_listed(alice, "notes__write_note")
        later = ok(await agent.call_tool("get_request", {"request_id": filed["request_id"]}))

    assert decided["status"] == "executing" and decided["outcome_unknown"] is True
    assert "whether it took effect is unknown" in decided["error"]
    assert later["status"] == "executing" and later["outcome_unknown"] is True
    assert len(writes(counter)) == 1


async def test_policy_rules_name_an_upstream_tools_arguments(
    tmp_path: Path, smtp: SmtpSink, counter: Path
) -> None:
    rules = """
[policy."notes__write_note"]
rules = [
  { when = "path LIKE 'scratch/%'", approval = "none" },
  { when = "path LIKE 'secret/%'", approval = "deny" },
  { levels = [{ count = 1 }] },
]
"""
    config = write_config(tmp_path / "p.toml", smtp_port=smtp.port, extra=upstream_table(counter) + rules)
    settings = load_settings(process_env(tmp_path, config))
    async with session(settings, "agent") as agent:
        scratch = ok(await agent.call_tool("notes__write_note", {"path": "scratch/a", "text": "t"}))
        secret = await agent.call_tool("notes__write_note", {"path": "secret/b", "text": "t"})
        other = ok(await agent.call_tool("notes__write_note", {"path": "c", "text": "t"}))

    assert scratch["status"] == "executed"
    assert secret.is_error and "refuses this request" in text(secret)
    assert other["status"] == "pending"
    assert [effect["path"] for effect in writes(counter)] == ["scratch/a"]


def test_policy_check_and_explain_read_the_upstreams_tools(
    gateway_env: dict[str, str], tmp_path: Path
) -> None:
    config = Path(gateway_env["HITL_CONFIG"])
    config.write_text(
        config.read_text()
        + '\n[policy."notes__write_note"]\n'
        + "rules = [\n"
        + '  { when = "path = \'auto\'", approval = "none" },\n'
        + '  { when = "size > 3", approval = "none" },\n'
        + "]\n"
        + '\n[policy."notes__nothing"]\nrules = [ { levels = [{ count = 1 }] } ]\n'
    )

    checked = hitl(gateway_env, "policy", "check")
    explained = hitl(gateway_env, "policy", "explain", "notes__write_note", '{"path": "auto", "text": "b"}')
    invalid = hitl(gateway_env, "policy", "explain", "notes__write_note", '{"path": "a"}')

    assert checked.returncode == 0, checked.stderr
    assert "notes__write_note: gated (gate pattern 'write_*')" in checked.stdout
    assert "notes__read_note: passed" in checked.stdout
    assert "notes__write_note\".rules[1].when: write_note has no argument 'size'" in checked.stderr
    assert 'policy."notes__nothing": notes does not offer it' in checked.stderr
    assert explained.returncode == 0, explained.stderr
    assert 'notes__write_note(path="auto", text="b")' in explained.stdout
    assert "applies: rule 1 (when path = 'auto'): no approval needed" in explained.stdout
    assert invalid.returncode == 2 and "'text' is a required property" in invalid.stderr


async def test_hitls_own_clients_hear_when_an_upstreams_tools_change(gateway_settings: Settings) -> None:
    heard: list[str] = []

    async def listen(message: object) -> None:
        method = getattr(getattr(message, "root", message), "method", None)
        if isinstance(method, str):
            heard.append(method)

    app = build_server(gateway_settings, principal="agent")
    async with Client(app, mode="legacy", message_handler=listen) as older:
        await until_listed(older, "notes__write_note")
        before = heard.count("notifications/tools/list_changed")
        ok(await older.call_tool("notes__add_tool", {"name": "announced"}))
        with anyio.fail_after(30):
            # The announcement comes once the new tool is registered: then the listing holds it.
            while heard.count("notifications/tools/list_changed") == before:  # noqa: ASYNC110 -- appended by the handler
                await anyio.sleep(0.02)
        await until_listed(older, "notes__announced")


async def test_an_edit_is_checked_against_the_upstreams_schema(
    gateway_settings: Settings, counter: Path
) -> None:
    async with session(gateway_settings, "agent") as agent, session(gateway_settings, "alice") as alice:
        filed = ok(await agent.call_tool("notes__write_note", {"path": "e.txt", "text": "draft"}))
        wrong = await alice.call_tool(
            "approve", {"request_id": filed["request_id"], "arguments": {"text": 5}}
        )
        edited = ok(
            await alice.call_tool(
                "approve", {"request_id": filed["request_id"], "arguments": {"text": "final"}}
            )
        )

    assert wrong.is_error and "text: 5 is not of type 'string'" in text(wrong)
    assert edited["status"] == "executed" and edited["arguments"]["text"] == "final"
    assert edited["decisions"][0]["changes"]["text"] == {"before": "draft", "after": "final"}
    assert [effect["text"] for effect in writes(counter)] == ["final"]


async def test_an_approved_call_waits_for_its_upstream_and_runs_once_it_is_back(
    tmp_path: Path, smtp: SmtpSink, counter: Path
) -> None:
    pids = tmp_path / "pids.txt"
    table = upstream_table(counter, "--pids", str(pids)) + (
        "\n[upstreams.notes.restart]\ninitial_delay_seconds = 3\nmax_delay_seconds = 3\n"
    )
    settings = load_settings(
        process_env(tmp_path, write_config(tmp_path / "w.toml", smtp_port=smtp.port, extra=table))
    )
    async with session(settings, "agent") as agent:
        filed = ok(await agent.call_tool("notes__write_note", {"path": "w.txt", "text": "later"}))
        for pid in {int(line.split()[0]) for line in pids.read_text().splitlines() if line.strip()}:
            os.kill(pid, signal.SIGKILL)
        with anyio.fail_after(30):
            while "notes__write_note" in await tool_names(agent):  # noqa: ASYNC110 -- the supervisor notices
                await anyio.sleep(0.02)
        # Down: the approval (from a terminal, which has no upstream of its own) is recorded; the call
        # waits for the upstream rather than fail.
        env = process_env(tmp_path, tmp_path / "w.toml")
        approved = await anyio.to_thread.run_sync(
            lambda: hitl(env, "approve", filed["request_id"], "--as", "alice", "--yes", "--wait", "0")
        )
        down = writes(counter)
        waited = ok(
            await agent.call_tool(
                "wait_for_decision", {"request_id": filed["request_id"], "timeout_seconds": 40}
            )
        )

    assert approved.returncode == 0 and "still approved" in approved.stdout, approved.stderr
    assert down == []
    assert waited["status"] == "executed"
    assert [effect["path"] for effect in writes(counter)] == ["w.txt"]


async def test_a_call_to_a_tool_the_upstream_no_longer_offers_fails_saying_so(
    tmp_path: Path, smtp: SmtpSink, counter: Path
) -> None:
    pids = tmp_path / "pids.txt"
    table = upstream_table(counter, "--pids", str(pids))
    settings = load_settings(
        process_env(tmp_path, write_config(tmp_path / "v.toml", smtp_port=smtp.port, extra=table))
    )
    async with session(settings, "agent") as agent:
        ok(await agent.call_tool("notes__add_tool", {"name": "fleeting"}))
        await until_listed(agent, "notes__fleeting")
        filed = ok(await agent.call_tool("notes__fleeting", {}))
        for pid in {int(line.split()[0]) for line in pids.read_text().splitlines() if line.strip()}:
            os.kill(pid, signal.SIGKILL)
        # Back without the tool it added at run time.
        with anyio.fail_after(30):
            while "notes__fleeting" in await tool_names(agent):  # noqa: ASYNC110 -- the supervisor notices
                await anyio.sleep(0.02)
        await until_listed(agent, "notes__write_note")
        env = process_env(tmp_path, tmp_path / "v.toml")
        await anyio.to_thread.run_sync(
            lambda: hitl(env, "approve", filed["request_id"], "--as", "alice", "--yes", "--wait", "0")
        )
        done = ok(
            await agent.call_tool(
                "wait_for_decision", {"request_id": filed["request_id"], "timeout_seconds": 30}
            )
        )

    assert done["status"] == "failed" and done["effect"] == "none"
    assert "does not offer fleeting now" in done["error"] and "not sent" in done["error"]
