"""Several servers on one PostgreSQL database: racing approvers, and a server killed mid-execution.

Three `hitl serve --http` processes share one database and one configuration (the same ledger and SMTP
server, so any of them may run any request). Against them race an MCP session per server calling `approve`
on every request, each in its own random order, and lanes of real `hitl approve ID --yes` processes; the
servers' own runners and housekeeping claim what others approved. Every request must be executed exactly
once at the real sinks — one order per purchase in the paper-trading ledger, one message per email at the
SMTP server — none lost, each with one decision and one `claimed` and one `executed` audit record, and
the one audit chain must verify.

In the crash race one server is killed with SIGKILL while it executes a request: the gate's test seam
(HITL_TEST_PAUSE_AT=after-action) stops it once the action has run and before its outcome is recorded,
and the test kills it there. The other servers and approvers go on; the request it held stays executing,
is shown as outcome unknown, ran once at its sink and is never run again; everything else ran once.
HITL_STRESS_SCALE multiplies the requests; HITL_STRESS_SEED replays one run's orders.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import asyncpg
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream
from mcp import Client

from hitl_mcp.actions.send_email import message_id_for
from hitl_mcp.config import Settings, load_settings
from hitl_mcp.gate import TEST_PAUSE_AT, open_gate
from hitl_mcp.ledger import Ledger
from hitl_mcp.models import Request, Status
from tests.environment import process_env
from tests.smtp_sink import SmtpSink
from tests.test_cli import HITL, free_port
from tests.test_race import file_requests, read_line
from tests.test_server import text

SCALE = float(os.environ.get("HITL_STRESS_SCALE", "1"))
REQUESTS = max(30, round(150 * SCALE))
SERVERS = 3
CLI_LANES = 2
CLI_PER_LANE = max(2, round(12 * SCALE))
SEED = int(os.environ.get("HITL_STRESS_SEED") or random.SystemRandom().randrange(1, 2**31))
DEADLINE = 120.0 * max(1.0, SCALE)


@dataclass
class Race:
    pids: dict[int, str] = field(default_factory=dict)
    cli_exits: list[int] = field(default_factory=list)
    cli_errors: list[str] = field(default_factory=list)
    mcp_refusals: list[str] = field(default_factory=list)
    held: str | None = None
    """The request the killed server was executing."""


@dataclass
class Server:
    process: Process
    port: int
    lines: list[str]


@pytest.fixture
def pg_env(tmp_path: Path, config_file: Path, pg_url: str) -> dict[str, str]:
    return {**process_env(tmp_path, config_file), "HITL_DB": pg_url}


@pytest.mark.timeout(DEADLINE + 90)
def test_three_servers_and_their_approvers_execute_every_request_exactly_once(
    pg_env: dict[str, str], smtp: SmtpSink, tmp_path: Path
) -> None:
    print(f"race seed {SEED}: HITL_STRESS_SEED={SEED} replays these orders")
    settings = load_settings(pg_env)
    buys, emails = file_requests(settings, REQUESTS)

    race = anyio.run(run_race, pg_env, settings, buys + emails, None)

    check_outcome(pg_env, settings, smtp, tmp_path, race, buys, emails)


@pytest.mark.timeout(DEADLINE + 90)
def test_a_server_killed_mid_execution_loses_nothing_and_runs_nothing_twice(
    pg_env: dict[str, str], smtp: SmtpSink, tmp_path: Path
) -> None:
    print(f"race seed {SEED}: HITL_STRESS_SEED={SEED} replays these orders")
    settings = load_settings(pg_env)
    buys, emails = file_requests(settings, REQUESTS)

    race = anyio.run(run_race, pg_env, settings, buys + emails, "after-action")

    assert race.held is not None, "the victim never reached its pause: nothing was killed"
    check_outcome(pg_env, settings, smtp, tmp_path, race, buys, emails)


def check_outcome(
    env: dict[str, str],
    settings: Settings,
    smtp: SmtpSink,
    tmp_path: Path,
    race: Race,
    buys: list[str],
    emails: list[str],
) -> None:
    ids = buys + emails
    assert set(race.cli_exits) <= {0, 4, 6}, race.cli_errors
    refused = [r for r in race.mcp_refusals if "not pending" not in r and "was executing" not in r]
    assert not refused, refused[:3]
    rows = anyio.run(read_store, settings)
    statuses, claimants, events, decisions = rows

    held = race.held
    # None lost, none left behind: every request executed, but the one its dead server held.
    expected = Counter({"executed": len(ids) - (held is not None)})
    if held is not None:
        expected["executing"] = 1
    assert Counter(statuses.values()) == expected
    if held is not None:
        assert statuses[held] == "executing"
        shown = anyio.run(observed, settings, held)
        assert shown.outcome_unknown, "the dead server's request is not shown as outcome unknown"
        assert claimants[held].rpartition(":")[2] == str(race_victim_pid(race))

    # Claims were spread over the racers.
    winners = Counter(claimants[request_id].rpartition(":")[2] for request_id in ids)
    print(f"claims won by pid: {dict(winners)}; CLI exits: {dict(Counter(race.cli_exits))}")
    assert len(winners) > 1, "one process won every claim: there was no race"

    # Exactly once at the real sinks — the held request too: its action ran before its server died.
    orders = anyio.run(Ledger(tmp_path / "ledger.db", 0.0).orders)
    assert Counter(fill.order_id for fill in orders) == Counter(buys)
    assert Counter(message.message_id for message in smtp.messages) == Counter(map(message_id_for, emails))

    for request_id in ids:
        trail = {event: events[request_id, event] for event in ("approved", "claimed", "executed", "failed")}
        ran = 0 if request_id == held else 1
        assert trail == {"approved": 1, "claimed": 1, "executed": ran, "failed": 0}, (request_id, trail)
        assert decisions[request_id] == 1, request_id
    verified = subprocess.run(
        [HITL, "audit", "verify"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr


def race_victim_pid(race: Race) -> int:
    return next(pid for pid, name in race.pids.items() if name == "victim")


async def read_store(
    settings: Settings,
) -> tuple[dict[str, str], dict[str, str], Counter[tuple[str, str]], Counter[str]]:
    assert settings.store_url is not None
    conn = await asyncpg.connect(settings.store_url)
    try:
        statuses = {row[0]: row[1] for row in await conn.fetch("SELECT id, status FROM requests")}
        claimants = {row[0]: row[1] for row in await conn.fetch("SELECT id, claimed_by FROM requests")}
        events = Counter((row[0], row[1]) for row in await conn.fetch("SELECT request_id, event FROM audit"))
        decisions = Counter(row[0] for row in await conn.fetch("SELECT request_id FROM decisions"))
    finally:
        await conn.close()
    return statuses, claimants, events, decisions


async def observed(settings: Settings, request_id: str) -> Request:
    async with open_gate(settings, readonly=True) as gate:
        return await gate.get(request_id)


async def run_race(env: dict[str, str], settings: Settings, ids: list[str], pause_at: str | None) -> Race:
    """Start three servers and every approver, release them together, and wait for every outcome."""
    race = Race()
    rng = random.Random(SEED)
    orders = [rng.sample(ids, len(ids)) for _ in range(SERVERS + CLI_LANES)]
    go = anyio.Event()
    killed = anyio.Event()

    async def mcp_session(server: Server, name: str, order: list[str]) -> None:
        await go.wait()
        try:
            async with Client(f"http://127.0.0.1:{server.port}/mcp") as client:
                for request_id in order:
                    result = await client.call_tool("approve", {"request_id": request_id, "reason": name})
                    if result.is_error:
                        race.mcp_refusals.append(text(result))
        except Exception:
            # Only the killed server's session may end this way; the check below says if another did.
            if race.pids.get(server.process.pid) != "victim":
                raise

    async def cli_lane(name: str, order: list[str]) -> None:
        await go.wait()
        started = 0
        for request_id in order:
            if started == CLI_PER_LANE:
                break
            if not await is_pending(settings, request_id):
                continue
            started += 1
            process = await anyio.open_process(
                [HITL, "approve", request_id, "--as", name, "--yes", "--wait", "5"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
            )
            race.pids[process.pid] = name
            assert process.stderr is not None
            async with process:
                errors = b"".join([chunk async for chunk in process.stderr])
                code = await process.wait()
            race.cli_exits.append(code)
            if code not in (0, 4):
                race.cli_errors.append(errors.decode(errors="replace"))

    def on_line(server: Server, line: str) -> None:
        # The victim says where it stopped: `hitl-test-pause: after-action ID PID`. Kill it there.
        if line.startswith("hitl-test-pause:") and race.held is None:
            race.held = line.split()[2]
            os.kill(server.process.pid, signal.SIGKILL)
            killed.set()

    with anyio.fail_after(DEADLINE):
        async with contextlib.AsyncExitStack() as stack:
            servers = []
            for index in range(SERVERS):
                victim = pause_at is not None and index == SERVERS - 1
                server_env = {**env, "HITL_PRINCIPAL": f"mcp-{index}"}
                if victim:
                    server_env[TEST_PAUSE_AT] = str(pause_at)
                server = await stack.enter_async_context(http_server(server_env, free_port(), on_line))
                race.pids[server.process.pid] = "victim" if victim else f"server{index}"
                servers.append(server)
            async with anyio.create_task_group() as tasks:
                for index, server in enumerate(servers):
                    tasks.start_soon(mcp_session, server, f"mcp-{index}", orders[index])
                for lane in range(CLI_LANES):
                    tasks.start_soon(cli_lane, f"cli{lane}", orders[SERVERS + lane])
                go.set()
            if pause_at is not None:
                await killed.wait()
            # Housekeeping may still be running a claim it won: wait for every outcome.
            async with open_gate(settings) as gate:
                for request_id in ids:
                    request = await gate.wait(request_id, DEADLINE)
                    assert request.status is Status.EXECUTED or request.outcome_unknown, request
    return race


async def is_pending(settings: Settings, request_id: str) -> bool:
    assert settings.store_url is not None
    conn = await asyncpg.connect(settings.store_url)
    try:
        status = await conn.fetchval("SELECT status FROM requests WHERE id = $1", request_id)
    finally:
        await conn.close()
    return bool(status == "pending")


@asynccontextmanager
async def http_server(
    env: dict[str, str], port: int, on_line: Callable[[Server, str], None]
) -> AsyncIterator[Server]:
    """`hitl serve --http` on a loopback port, yielded once it listens; each stderr line goes to
    `on_line` (and the pipe is drained throughout, so the server never blocks on it)."""
    process = await anyio.open_process(
        [HITL, "serve", "--http", "--port", str(port)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    assert process.stderr is not None
    stderr = BufferedByteReceiveStream(process.stderr)
    server = Server(process, port, [])
    listening = anyio.Event()

    async def drain() -> None:
        try:
            while True:
                line = await read_line(stderr)
                server.lines.append(line)
                on_line(server, line)
                if "Uvicorn running on" in line:
                    listening.set()
        except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError):
            listening.set()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(drain)
        try:
            with anyio.fail_after(30):
                await listening.wait()
            assert process.returncode is None, "hitl serve --http exited:\n" + "\n".join(server.lines[-5:])
            yield server
        finally:
            with anyio.CancelScope(shield=True):
                if process.returncode is None:
                    process.terminate()
                    with anyio.move_on_after(10):
                        await process.wait()
                if process.returncode is None:
                    process.kill()
                    await process.wait()
            tasks.cancel_scope.cancel()
