"""`hitl serve` over stdio, where passed gateway calls take the lane beneath the SDK
(`hitl_mcp.gateway.fast_pass`): the same answers and audit records as the SDK's path gives in process,
an unanswered call and a cancelled one handled as there, and everything else left to the SDK — a gated
call, a client of the handshake era, an upstream of another protocol version, stdin that is a file."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import anyio
import pytest
from mcp import Client, StdioServerParameters
from mcp_types import CallToolResult

from hitl_mcp.config import load_settings
from hitl_mcp.gate import arguments_digest
from tests.environment import process_env, write_config
from tests.smtp_sink import SmtpSink
from tests.test_cli import HITL
from tests.test_gateway import session, until_listed, upstream_table
from tests.test_gateway_pass_outcome import CALL_TIMEOUT, trail
from tests.test_server import ok, text


@asynccontextmanager
async def over_stdio(env: dict[str, str], mode: Literal["auto", "legacy"] = "auto") -> AsyncIterator[Client]:
    params = StdioServerParameters(command=str(HITL), args=["serve"], env=env)
    async with Client(params, mode=mode) as client:
        await until_listed(client, "notes__stats")
        yield client


def gateway(tmp_path: Path, smtp: SmtpSink, counter: Path, *flags: str, settings: str = "") -> dict[str, str]:
    extra = upstream_table(counter, "--request-ids", *flags, settings=settings)
    tmp_path.mkdir(exist_ok=True)
    return process_env(tmp_path, write_config(tmp_path / "gateway.toml", smtp_port=smtp.port, extra=extra))


def seen(result: CallToolResult) -> dict[str, Any]:
    """What a client reads of a tool's answer."""
    return {"error": result.is_error, "text": text(result), "structured": result.structured_content}


async def passed_calls(client: Client) -> list[dict[str, Any]]:
    return [
        seen(await client.call_tool("notes__stats", {})),
        seen(await client.call_tool("notes__read_note", {"path": "none.txt"})),
    ]


async def test_passed_calls_over_stdio_answer_and_are_audited_as_in_process(
    tmp_path: Path, smtp: SmtpSink, counter: Path
) -> None:
    env = gateway(tmp_path, smtp, counter)
    async with session(load_settings(env), "agent") as agent:
        in_process = await passed_calls(agent)
        sdk_request = text(await agent.call_tool("notes__read_request", {}))
    async with over_stdio(env) as client:
        stdio = await passed_calls(client)
        lane_request = text(await client.call_tool("notes__read_request", {}))
        filed = ok(await client.call_tool("notes__write_note", {"path": "a.txt", "text": "x"}))

    assert stdio == in_process
    assert stdio[0] == {"error": False, "text": stdio[0]["text"], "structured": {"count": 0, "deletes": 0}}
    assert stdio[1]["error"] and "no note at none.txt" in stdio[1]["text"]
    # The upstream tells whose session sent each call: the SDK's numbers them, the lane names them.
    assert sdk_request.isdigit() and lane_request.startswith("hitl-pass-")
    assert filed["status"] == "pending"  # a gated call is filed as ever
    records = [(event, details) for _, event, details in trail(Path(env["HITL_DB"]))]
    stats = {
        "tool": "notes__stats",
        "arguments_digest": arguments_digest("notes__stats", {}),
        "outcome": "forwarded",
    }
    read = {
        "tool": "notes__read_note",
        "arguments_digest": arguments_digest("notes__read_note", {"path": "none.txt"}),
        "outcome": "forwarded",
    }
    error = {"tool": "notes__read_note", "outcome": "answered with an error"}
    twice = [("passed", stats), ("passed", read), ("pass-outcome", error)]
    assert [record for record in records if record[1].get("tool") != "notes__read_request"][
        :6
    ] == twice + twice


async def test_a_call_never_answered_over_stdio_is_recorded_before_and_after(
    tmp_path: Path, smtp: SmtpSink, counter: Path
) -> None:
    env = gateway(tmp_path, smtp, counter, settings=f"call_timeout_seconds = {CALL_TIMEOUT}")
    async with over_stdio(env) as client:
        lost = await client.call_tool("notes__sleep", {"seconds": 60})
        after = await client.call_tool("notes__stats", {})

    why = f"notes: no answer within {CALL_TIMEOUT:g} s, after sleep was sent; whether it ran is unknown"
    assert lost.is_error and text(lost) == f"notes did not answer: {why}"
    assert not after.is_error
    (passed_id, _, passed), (outcome_id, event, outcome), *_ = trail(Path(env["HITL_DB"]))
    assert passed["outcome"] == "forwarded" and event == "pass-outcome" and outcome_id == passed_id
    assert outcome == {"tool": "notes__sleep", "outcome": f"failed: LostAfterSend: {why}"}


async def test_a_call_the_client_gives_up_on_leaves_the_server_serving(
    tmp_path: Path, smtp: SmtpSink, counter: Path
) -> None:
    env = gateway(tmp_path, smtp, counter)
    async with over_stdio(env) as client:
        with pytest.raises(Exception, match=r"(?i)timed out|timeout"):
            await client.call_tool("notes__sleep", {"seconds": 60}, read_timeout_seconds=0.5)
        after = await client.call_tool("notes__stats", {})

    assert after.structured_content == {"count": 0, "deletes": 0}
    assert [event for _, event, _ in trail(Path(env["HITL_DB"]))][:1] == ["passed"]


async def test_a_call_takes_the_lane_only_when_client_and_upstream_speak_the_same_version(
    tmp_path: Path, smtp: SmtpSink, counter: Path
) -> None:
    modern_upstream = gateway(tmp_path, smtp, counter)
    legacy_upstream = gateway(tmp_path / "legacy", smtp, counter, "--legacy")
    seen_by: dict[str, str] = {}
    answers: dict[str, Any] = {}
    for label, env, mode in [
        ("older client, newer upstream", modern_upstream, "legacy"),
        ("newer client, older upstream", legacy_upstream, "auto"),
        ("older client, older upstream", legacy_upstream, "legacy"),
    ]:
        async with over_stdio(env, mode) as client:  # type: ignore[arg-type]
            seen_by[label] = text(await client.call_tool("notes__read_request", {}))
            answers[label] = await passed_calls(client)

    assert seen_by["older client, newer upstream"].isdigit()  # the SDK's session sent it
    assert seen_by["newer client, older upstream"].isdigit()
    assert seen_by["older client, older upstream"].startswith("hitl-pass-")  # the lane's
    first, *others = answers.values()
    assert first[0]["structured"] == {"count": 0, "deletes": 0} and all(other == first for other in others)


def test_stdin_from_a_file_is_answered_by_the_sdks_transport(
    tmp_path: Path, smtp: SmtpSink, counter: Path
) -> None:
    env = gateway(tmp_path, smtp, counter)
    meta = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    requests = tmp_path / "requests.jsonl"
    call = {"name": "list_pending", "arguments": {}, "_meta": meta}
    requests.write_text(
        json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": call}) + "\n"
    )
    with requests.open("rb") as stdin:
        done = subprocess.run(
            [str(HITL), "serve"], stdin=stdin, capture_output=True, env=env, timeout=60, check=False
        )

    assert done.returncode == 0, done.stderr.decode()
    (answer,) = [json.loads(line) for line in done.stdout.splitlines()]
    # Answered (the SDK's transport closes the session at the file's end, so the answer says that): no
    # crash on a stdin the event loop cannot wait on.
    assert answer["jsonrpc"] == "2.0" and answer["id"] == 1


def test_stray_output_on_stdout_never_reaches_the_client(tmp_path: Path) -> None:
    # While serving, fd 1 is stderr: what a library prints cannot corrupt the protocol.
    script = (
        "import anyio, os, sys\n"
        "from hitl_mcp.stdio_server import stdio_streams\n"
        "async def main():\n"
        "    async with stdio_streams() as (read, write):\n"
        "        print('stray', flush=True)\n"
        "        os.write(1, b'raw stray\\n')\n"
        "anyio.run(main)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == b"" and b"stray" in done.stderr and b"raw stray" in done.stderr


def test_stdout_to_the_null_device_is_served_by_the_sdks_transport(tmp_path: Path) -> None:
    # uvloop's pipes abort on a device that is not a terminal; such a stdout goes to the SDK's transport.
    env = process_env(tmp_path, write_config(tmp_path / "hitl.toml", smtp_port=1))
    done = subprocess.run(
        [str(HITL), "serve"],
        input=b"",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr.decode()


ENVELOPE = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
}


async def test_hostile_lines_are_refused_and_the_server_goes_on(
    tmp_path: Path, smtp: SmtpSink, counter: Path
) -> None:
    from anyio.streams.buffered import BufferedByteReceiveStream

    env = gateway(tmp_path, smtp, counter)
    process = await anyio.open_process([str(HITL), "serve"], env=env)
    assert process.stdin is not None and process.stdout is not None
    lines = BufferedByteReceiveStream(process.stdout)

    async def send(request_id: int, name: str, arguments: str = "{}") -> None:
        params = f'{{"name": "{name}", "arguments": {arguments}, "_meta": {json.dumps(ENVELOPE)}}}'
        line = f'{{"jsonrpc": "2.0", "id": {request_id}, "method": "tools/call", "params": {params}}}\n'
        assert process.stdin is not None
        await process.stdin.send(line.encode())

    async def answer_to(request_id: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The answer to `request_id`, and the lines before it."""
        before: list[dict[str, Any]] = []
        with anyio.fail_after(30):
            while (answer := json.loads(await lines.receive_until(b"\n", 1 << 24))).get("id") != request_id:
                before.append(answer)
        return answer, before

    try:
        with anyio.fail_after(60):
            while True:
                await send(0, "notes__stats")
                if not (await answer_to(0))[0].get("result", {}).get("isError", True):
                    break
                await anyio.sleep(0.1)  # the upstream is starting
        await send(1, "notes__stats", '{"a": ' + "[" * 5000 + "]" * 5000 + "}")
        await send(2, "notes__read_note", '{"path": NaN}')
        await send(3, "notes__stats")
        after, before = await answer_to(3)
    finally:
        await process.stdin.aclose()
        with anyio.fail_after(30):
            await process.wait()

    # Left to the SDK's parser, as before the lane: the nesting refused, no crash on either line.
    assert not [line for line in before if line.get("id") == 1 and "result" in line]
    assert after["result"]["structuredContent"] == {"count": 0, "deletes": 0}
    stats = [event for _, event, details in trail(Path(env["HITL_DB"])) if details["tool"] == "notes__stats"]
    assert stats == ["passed", "passed"]  # the first that answered, and the last: the deep one never went
