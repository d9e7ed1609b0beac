"""The upstream supervisor against real upstreams: tests/upstream_server.py as a child process over stdio
and as an HTTP server, and the official filesystem server when it is installed. Nothing is mocked; every
wait is on a state change or a poll with a deadline."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

from hitl_mcp.upstream.session import Session, SessionFailed, open_session
from hitl_mcp.upstream.settings import UpstreamSettings, build_upstream
from hitl_mcp.upstream.state import Status, UpstreamState
from hitl_mcp.upstream.supervisor import LostAfterSend, NotSent, Upstreams, probe
from tests.fs_upstream import fs_server_command
from tests.test_cli import free_port
from tests.upstream_server import command_line, effects

FAST_RESTART = {"initial_delay_seconds": 0.05, "max_delay_seconds": 0.5}
WAIT_SECONDS = 30.0


def notes(name: str, counter: Path, *flags: str, **table: Any) -> UpstreamSettings:
    """The test upstream, started over stdio, restarted quickly."""
    command, *args = command_line(counter, *flags)
    return configure(name, {"command": command, "args": args, "restart": FAST_RESTART, **table})


def configure(name: str, table: dict[str, Any]) -> UpstreamSettings:
    return build_upstream(
        name, table, key=f"upstreams.{name}", base_dir=Path.cwd(), env=os.environ, source="test"
    )


class Log:
    """What the supervisor writes to hitl's log, line by line."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        self.lines.append(line)


@asynccontextmanager
async def running(*upstreams: UpstreamSettings, log: Log | None = None) -> AsyncIterator[Upstreams]:
    async with Upstreams(upstreams, log=log or Log()) as supervisor:
        yield supervisor


async def until(upstreams: Upstreams, check: Callable[[], bool], timeout: float = WAIT_SECONDS) -> None:
    """Wait for the supervisor's state to satisfy `check`, woken by each change."""
    with anyio.fail_after(timeout):
        seen = upstreams.generation
        while not check():
            seen = await upstreams.wait_for_change(seen)


async def ready(upstreams: Upstreams, name: str, *, after: UpstreamState | None = None) -> UpstreamState:
    """The upstream's state once it is ready: with `after`, ready anew since that state was reported."""

    def is_ready() -> bool:
        state = upstreams.state(name)
        return state.status is Status.READY and (after is None or state.since > after.since)

    await until(upstreams, is_ready)
    return upstreams.state(name)


async def eventually(check: Callable[[], bool], timeout: float = WAIT_SECONDS) -> None:
    """Poll `check` (what no event announces: a file, a port) until it holds, within `timeout`."""
    with anyio.fail_after(timeout):
        while not check():  # noqa: ASYNC110 - nothing to wait on but the thing itself
            await anyio.sleep(0.02)


def listening(port: int) -> bool:
    with socket.socket() as probe_socket:
        return probe_socket.connect_ex(("127.0.0.1", port)) == 0


def pids(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has ended; only its parent (or an init that does not reap) keeps its entry.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[-1].split()[0] == "Z")


def text(result: Any) -> str:
    return "\n".join(block.text for block in result.content if hasattr(block, "text"))


async def test_upstreams_start_together_and_a_slow_one_does_not_hold_up_the_others(tmp_path: Path) -> None:
    log = Log()
    quick = notes("quick", tmp_path / "quick.jsonl", "--say", "starting \x1b[31mred\x1b[0m\nsecond line")
    slow = notes("slow", tmp_path / "slow.jsonl", "--slow-start", "4")

    async with running(quick, slow, log=log) as upstreams:
        state = await ready(upstreams, "quick")
        assert upstreams.state("slow").status is Status.STARTING

        await ready(upstreams, "slow")

    exposures = {listed.name: listed.exposure for listed in state.tools}
    assert exposures["write_note"].exposed_name == "quick__write_note"
    assert (exposures["write_note"].decision, exposures["write_note"].why) == (
        "gated",
        "no pattern and not marked read-only (fail closed)",
    )
    assert (exposures["read_note"].decision, exposures["read_note"].why) == (
        "passed",
        "annotation readOnlyHint = true",
    )
    assert {listed.name for listed in state.tools} >= {
        "write_note",
        "delete_note",
        "stats",
        "crash",
        "add_tool",
    }
    assert (state.kind, state.server, state.protocol_version) == ("stdio", "test-upstream", "2026-07-28")
    # Its stderr, a line each, named and escaped: never raw control characters, never on stdout.
    assert "quick: starting \\x1b[31mred\\x1b[0m" in log.lines
    assert "quick: second line" in log.lines
    assert upstreams.state("quick").status is Status.STOPPED


async def test_a_call_runs_once_and_every_kind_of_answer_comes_back_as_a_result(tmp_path: Path) -> None:
    counter = tmp_path / "counter.jsonl"
    async with running(notes("notes", counter)) as upstreams:
        await ready(upstreams, "notes")

        written = await upstreams.call("notes", "write_note", {"path": "a.txt", "text": "hello"})
        failed = await upstreams.call("notes", "fail", {"message": "no such ledger"})
        refused = await upstreams.call("notes", "refuse", {"code": -32602, "message": "bad arguments"})
        stats = await upstreams.call("notes", "stats", {})

    assert (written.is_error, text(written)) == (False, "wrote a.txt")
    assert failed.is_error and "no such ledger" in text(failed)
    # A JSON-RPC error the upstream answered is an answer too: the call completed, with an error.
    assert refused.is_error and text(refused) == "notes answered refuse with error -32602: bad arguments"
    assert stats.structured_content == {"count": 1, "deletes": 0}
    assert [effect["op"] for effect in effects(counter)] == ["write_note"]


async def test_concurrent_calls_each_run_exactly_once(tmp_path: Path) -> None:
    counter = tmp_path / "counter.jsonl"
    async with running(notes("notes", counter)) as upstreams:
        await ready(upstreams, "notes")

        async with anyio.create_task_group() as tasks:
            for number in range(25):
                tasks.start_soon(upstreams.call, "notes", "write_note", {"path": f"n{number}", "text": "x"})

    assert sorted(effect["path"] for effect in effects(counter)) == sorted(
        f"n{number}" for number in range(25)
    )


@pytest.mark.parametrize("flags", [(), ("--legacy",)], ids=["2026-07-28 listen stream", "older protocol"])
async def test_a_tool_added_at_run_time_is_listed_and_callable(
    tmp_path: Path, flags: tuple[str, ...]
) -> None:
    async with running(notes("notes", tmp_path / "counter.jsonl", *flags)) as upstreams:
        state = await ready(upstreams, "notes")
        assert not upstreams.live("notes", "summarise")

        await upstreams.call("notes", "add_tool", {"name": "summarise"})
        await until(upstreams, lambda: upstreams.live("notes", "summarise"))
        ran = await upstreams.call("notes", "summarise", {})

        relisted = upstreams.state("notes")
    assert text(ran) == "summarise ran"
    assert relisted.since == state.since  # still the same session, ready since it connected
    assert relisted.protocol_version == ("2025-11-25" if flags else "2026-07-28")
    summarise = relisted.tool("summarise")
    assert (
        summarise is not None
        and summarise.exposure.why == "no pattern and not marked read-only (fail closed)"
    )


async def test_a_killed_upstream_is_failed_with_the_reason_then_restarted_and_ready_again(
    tmp_path: Path,
) -> None:
    started = tmp_path / "pids"
    async with running(notes("notes", tmp_path / "counter.jsonl", "--pids", str(started))) as upstreams:
        await ready(upstreams, "notes")
        [first] = pids(started)

        os.kill(first, signal.SIGKILL)
        await until(upstreams, lambda: upstreams.state("notes").status is Status.FAILED)
        failed = upstreams.state("notes")
        with pytest.raises(NotSent, match="notes is not ready"):
            await upstreams.call("notes", "write_note", {"path": "p", "text": "t"})

        await ready(upstreams, "notes", after=failed)
        answered = await upstreams.call("notes", "stats", {})

    assert failed.reason == "killed by SIGKILL"
    assert not upstreams.live("notes", "write_note")
    [_, second] = pids(started)
    assert second != first and not alive(second)
    assert answered.structured_content == {"count": 0, "deletes": 0}


async def test_an_upstream_that_cannot_start_is_failed_and_tried_again_ever_later(tmp_path: Path) -> None:
    missing = configure("missing", {"command": str(tmp_path / "no-such-server"), "restart": FAST_RESTART})
    refusing = notes("refusing", tmp_path / "counter.jsonl", "--exit-at-start", "1")
    waited: dict[datetime, float] = {}  # each failure (by when it failed): the delay before the next try

    def failed_five_times() -> bool:
        state = upstreams.state("missing")
        if state.status is Status.FAILED and state.retry_at is not None:
            waited[state.since] = (state.retry_at - state.since).total_seconds()
        return len(waited) >= 5

    async with running(missing, refusing) as upstreams:
        await until(upstreams, failed_five_times)
        await until(upstreams, lambda: upstreams.state("refusing").status is Status.FAILED)
        reasons = {name: upstreams.state(name).reason for name in ("missing", "refusing")}
        with pytest.raises(NotSent, match="missing is not ready \\(failed: command not found"):
            await upstreams.call("missing", "write_note", {})
        with pytest.raises(NotSent, match="no upstream is named 'other'"):
            await upstreams.call("other", "write_note", {})

    assert reasons == {
        "missing": f"command not found: {tmp_path / 'no-such-server'}",
        "refusing": "exited with status 1; its last line on stderr: "
        "upstream_server: refusing to start (status 1)",
    }
    # Doubling from 0.05 s, each somewhere in the upper half of its step, up to the 0.5 s maximum.
    delays = [waited[since] for since in sorted(waited)]
    assert delays[0] < delays[1] < delays[2] < delays[3] and all(0.025 <= delay <= 0.5 for delay in delays)


async def test_a_call_cut_off_by_the_upstream_dying_is_lost_after_send_and_may_have_run(
    tmp_path: Path,
) -> None:
    counter = tmp_path / "counter.jsonl"
    async with running(notes("notes", counter, "--crash-after", "1")) as upstreams:
        first = await ready(upstreams, "notes")
        with pytest.raises(LostAfterSend, match="whether it ran is unknown"):
            await upstreams.call("notes", "crash", {})

        await ready(upstreams, "notes", after=first)
        with pytest.raises(LostAfterSend, match="exited with status 3"):
            await upstreams.call("notes", "write_note", {"path": "ran.txt", "text": "t"})

    # Lost after send means unknown, not "did not run": this one ran, then its answer was lost.
    assert [effect["path"] for effect in effects(counter)] == ["ran.txt"]


async def test_a_call_with_no_answer_in_time_is_lost_after_send_and_the_session_goes_on(
    tmp_path: Path,
) -> None:
    async with running(notes("notes", tmp_path / "counter.jsonl")) as upstreams:
        await ready(upstreams, "notes")
        begun = time.monotonic()
        with pytest.raises(LostAfterSend, match=r"no answer within 0\.5 s"):
            await upstreams.call("notes", "sleep", {"seconds": 30}, timeout=0.5)
        waited = time.monotonic() - begun

        after = await upstreams.call("notes", "stats", {})

    assert waited < 5
    assert not after.is_error


async def test_a_call_given_up_on_before_its_request_was_written_is_not_sent_and_never_runs(
    tmp_path: Path,
) -> None:
    counter = tmp_path / "counter.jsonl"
    started = tmp_path / "pids"
    async with running(notes("notes", counter, "--pids", str(started))) as upstreams:
        await ready(upstreams, "notes")
        [pid] = pids(started)
        # Stopped, it reads nothing: the first call's request fills the pipe and its write never finishes.
        os.kill(pid, signal.SIGSTOP)
        try:
            with pytest.raises(LostAfterSend):
                await upstreams.call(
                    "notes", "write_note", {"path": "big", "text": "x" * 1_000_000}, timeout=1
                )
            # The next call's request waits behind it, in hitl, and is given up on there.
            with pytest.raises(NotSent, match="was not sent"):
                await upstreams.call("notes", "write_note", {"path": "small", "text": "y"}, timeout=1)
        finally:
            os.kill(pid, signal.SIGCONT)

        await eventually(lambda: len(effects(counter)) >= 1)
        after = await upstreams.call("notes", "stats", {})

    # The one begun reached the upstream and ran; the one given up on before it was written never did.
    assert [effect["path"] for effect in effects(counter)] == ["big"]
    assert after.structured_content == {"count": 1, "deletes": 0}


@asynccontextmanager
async def http_upstream(counter: Path, port: int) -> AsyncIterator[anyio.abc.Process]:
    """The test upstream serving streamable HTTP on `port`, killed on exit."""
    server = await anyio.open_process(
        command_line(counter, "--http", "--port", str(port)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await eventually(lambda: listening(port) or server.returncode is not None)
        assert server.returncode is None, "the HTTP upstream did not start"
        yield server
    finally:
        await stop(server)


async def stop(server: anyio.abc.Process) -> None:
    if server.returncode is None:
        server.kill()
    with anyio.fail_after(10):
        await server.wait()


async def test_an_http_upstream_works_and_reconnects_after_its_server_restarts(tmp_path: Path) -> None:
    counter, port = tmp_path / "counter.jsonl", free_port()
    upstream = configure("remote", {"url": f"http://127.0.0.1:{port}/mcp", "restart": FAST_RESTART})
    async with running(upstream) as upstreams:
        async with http_upstream(counter, port):
            state = await ready(upstreams, "remote")
            written = await upstreams.call("remote", "write_note", {"path": "one", "text": "t"})
            refused = await upstreams.call("remote", "refuse", {"code": -32602, "message": "no"})
            with pytest.raises(LostAfterSend):
                await upstreams.call("remote", "crash", {})

        await until(upstreams, lambda: upstreams.state("remote").status is Status.FAILED)
        down = upstreams.state("remote")

        async with http_upstream(counter, port):
            await ready(upstreams, "remote", after=down)
            again = await upstreams.call("remote", "write_note", {"path": "two", "text": "t"})

    assert (state.kind, state.protocol_version) == ("http", "2026-07-28")
    assert state.target == {"upstream": "remote", "url": f"http://127.0.0.1:{port}/mcp"}
    assert not written.is_error and not again.is_error
    assert text(refused) == "remote answered refuse with error -32602: no"
    assert down.reason
    assert [effect["path"] for effect in effects(counter)] == ["one", "two"]


async def test_an_http_call_whose_connection_is_refused_is_not_sent(tmp_path: Path) -> None:
    counter, port = tmp_path / "counter.jsonl", free_port()
    upstream = configure("remote", {"url": f"http://127.0.0.1:{port}/mcp"})
    opened: list[Session] = []
    async with http_upstream(counter, port) as server, anyio.create_task_group() as tasks:
        # The session lives in a task of its own, as in the supervisor: the failed POST ends it there,
        # and the call, made from elsewhere, is answered.
        async def hold(*, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
            with contextlib.suppress(SessionFailed):
                async with open_session(upstream, log=Log()) as session:
                    opened.append(session)
                    task_status.started()
                    await anyio.sleep_forever()

        await tasks.start(hold)
        await stop(server)
        await eventually(lambda: not listening(port))

        with pytest.raises(NotSent, match="write_note was not sent"):
            await opened[0].call("write_note", {"path": "never", "text": "t"}, timeout=10)
        tasks.cancel_scope.cancel()

    assert effects(counter) == []


async def test_stopping_ends_every_process_even_one_that_ignores_stdin_and_sigterm(tmp_path: Path) -> None:
    polite, stubborn = tmp_path / "polite.pids", tmp_path / "stubborn.pids"
    quiet = ("--ignore-stdin-eof", "--ignore-sigterm")
    async with running(
        notes("polite", tmp_path / "c1.jsonl", "--child", "--pids", str(polite)),
        notes("stubborn", tmp_path / "c2.jsonl", "--child", *quiet, "--pids", str(stubborn)),
    ) as upstreams:
        await ready(upstreams, "polite")
        await ready(upstreams, "stubborn")
        started = pids(polite) + pids(stubborn)
        assert len(started) == 4 and all(alive(pid) for pid in started)

    # Each upstream and the child it started in its process group: gone once the supervisor has stopped.
    assert [pid for pid in started if alive(pid)] == []


async def test_a_probe_connects_lists_and_closes(tmp_path: Path) -> None:
    started = tmp_path / "pids"
    state = await probe(notes("notes", tmp_path / "counter.jsonl", "--pids", str(started), "--child"), 30)
    slow = await probe(
        notes("slow", tmp_path / "counter.jsonl", "--slow-start", "30", "--say", "warming up"), 3
    )

    assert state.status is Status.READY and state.tool("write_note") is not None
    assert [pid for pid in pids(started) if alive(pid)] == []
    assert (slow.status, slow.reason) == (
        Status.FAILED,
        "not ready within 3 s (its last line on stderr: warming up)",
    )


async def test_a_preview_served_by_a_gated_tool_is_not_offered_and_says_why(tmp_path: Path) -> None:
    previews = {
        "write_note": {"tool": "read_note", "arguments": {"path": "{path}"}},
        "delete_note": {"tool": "write_note", "arguments": {}},
        "gone": {"tool": "read_note"},
    }
    state = await probe(notes("notes", tmp_path / "counter.jsonl", preview=previews), 30)

    write, delete = state.tool("write_note"), state.tool("delete_note")
    assert write is not None and write.preview is not None and write.preview.tool == "read_note"
    assert delete is not None and delete.preview is None
    assert state.warnings == (
        "the preview of delete_note calls write_note, which is gated (no pattern and not marked read-only "
        "(fail closed)); a preview runs without approval, so it must be a tool that passes",
        "a preview is configured for gone, which notes does not offer",
    )


async def test_the_official_filesystem_server_lists_its_tools_through_the_supervisor(tmp_path: Path) -> None:
    command = fs_server_command(tmp_path)
    if command is None:
        message = "@modelcontextprotocol/server-filesystem is not installed: npm install --prefix interop"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    (tmp_path / "hello.txt").write_text("hello from disk\n", encoding="utf-8")
    fs = configure(
        "fs", {"command": command[0], "args": command[1:], "gate": ["write_*"], "pass": ["list_*"]}
    )

    async with running(fs) as upstreams:
        state = await ready(upstreams, "fs")
        read = await upstreams.call("fs", "read_text_file", {"path": str(tmp_path / "hello.txt")})

    decided = {listed.name: (listed.exposure.decision, listed.exposure.why) for listed in state.tools}
    assert decided["write_file"] == ("gated", "gate pattern 'write_*'")
    assert decided["list_directory"] == ("passed", "pass pattern 'list_*'")
    assert decided["read_text_file"] == ("passed", "annotation readOnlyHint = true")
    assert decided["move_file"] == ("gated", "no pattern and not marked read-only (fail closed)")
    assert state.server is not None and state.server.startswith("secure-filesystem-server")
    assert "hello from disk" in text(read)
