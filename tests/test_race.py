"""Race: eight processes approve and execute the same requests at once, each in its own random order.

The racers, started together on one store:

- four Gate-API processes (tests/race_driver.py) that approve every request and race for its claim too;
- two MCP servers acting as different principals — `hitl serve --http` on a loopback port and `hitl serve`
  over stdio — each driven by a session calling `approve` on every request (their housekeeping also
  releases approvals that their approver has not claimed yet);
- two lanes of real `hitl approve ID --as NAME --yes` processes, one after another, each on a request still
  pending when it starts.

Every request must be executed exactly once: one order per request in the paper-trading ledger, one message
per request at the SMTP server, one decision, one `claimed` and one `executed` audit record each, none lost,
and the audit chain intact. HITL_STRESS_SCALE (default 1) multiplies the requests and CLI processes;
HITL_STRESS_SEED replays one run's orders.
"""

from __future__ import annotations

import os
import random
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from hitl_mcp.actions.send_email import message_id_for
from hitl_mcp.config import Settings
from hitl_mcp.gate import open_gate
from hitl_mcp.ledger import Ledger
from tests.smtp_sink import SmtpSink
from tests.test_cli import HITL, free_port
from tests.test_server import text

SCALE = float(os.environ.get("HITL_STRESS_SCALE", "1"))
REQUESTS = max(20, round(500 * SCALE))
DRIVERS = 4
CLI_LANES = 2
CLI_PER_LANE = max(2, round(40 * SCALE))
EMAIL_EVERY = 5  # one request in five sends an email; the others buy one share
SEED = int(os.environ.get("HITL_STRESS_SEED") or random.SystemRandom().randrange(1, 2**31))
DEADLINE = 90.0 * max(1.0, SCALE)
DRIVER = str(Path(__file__).with_name("race_driver.py"))


@dataclass
class Race:
    """Who raced (pid → racer name) and what each racer saw."""

    racers: dict[int, str] = field(default_factory=dict)
    driver_lines: list[str] = field(default_factory=list)
    driver_exits: list[int] = field(default_factory=list)
    cli_exits: list[int] = field(default_factory=list)
    cli_errors: list[str] = field(default_factory=list)
    mcp_refusals: list[str] = field(default_factory=list)


@pytest.mark.timeout(DEADLINE + 60)
def test_eight_racers_execute_every_request_exactly_once(
    env: dict[str, str], settings: Settings, smtp: SmtpSink, tmp_path: Path
) -> None:
    print(f"race seed {SEED}: HITL_STRESS_SEED={SEED} replays these orders")
    buys, emails = file_requests(settings, REQUESTS)
    ids = buys + emails
    race = anyio.run(run_race, env, settings, ids, tmp_path)

    # Each racer ended as it should: drivers cleanly, CLI processes executed or refused, MCP calls refused
    # only because someone else decided first.
    errors = [path.read_text() for path in sorted(tmp_path.glob("driver*.err"))]
    assert race.driver_exits == [0] * DRIVERS, (race.driver_lines, errors)
    assert set(race.cli_exits) <= {0, 4}, race.cli_errors
    assert all("not pending" in refusal for refusal in race.mcp_refusals), race.mcp_refusals[:3]

    with sqlite3.connect(settings.db_path) as conn:
        statuses = Counter(row[0] for row in conn.execute("SELECT status FROM requests"))
        claimants = dict(conn.execute("SELECT id, claimed_by FROM requests").fetchall())
        events = Counter(conn.execute("SELECT request_id, event FROM audit").fetchall())
        decisions = Counter(row[0] for row in conn.execute("SELECT request_id FROM decisions"))

    # None lost, none left behind: every request executed.
    assert statuses == {"executed": REQUESTS}

    # Each by one of the racers, and not all by the same one.
    pids = Counter(int(claimants[request_id].rpartition(":")[2]) for request_id in ids)
    strangers = set(pids) - set(race.racers)
    # The stdio server is the MCP client's child, so its pid is the one claimant not otherwise known.
    assert len(strangers) <= 1, f"claims by processes that were not racing: {strangers}"
    names = {**race.racers, **dict.fromkeys(strangers, "mcp-stdio")}
    wins = Counter(dict.fromkeys(names.values(), 0))
    for pid, count in pids.items():
        wins[names[pid]] += count
    print(f"claims won: {dict(wins)}; CLI exits: {dict(Counter(race.cli_exits))}")
    assert len(pids) > 1, "one process won every claim: there was no race"

    # Exactly once at the real sinks: one order per purchase, one message per email, nothing else.
    orders = anyio.run(Ledger(tmp_path / "ledger.db", 0.0).orders)
    assert Counter(fill.order_id for fill in orders) == Counter(buys)
    assert Counter(message.message_id for message in smtp.messages) == Counter(map(message_id_for, emails))

    # Exactly once in the audit trail, one decision each, and the hash chain intact.
    for request_id in ids:
        trail = {event: events[request_id, event] for event in ("approved", "claimed", "executed", "failed")}
        assert trail == {"approved": 1, "claimed": 1, "executed": 1, "failed": 0}, (request_id, trail)
        assert decisions[request_id] == 1, request_id
    verified = subprocess.run(
        [HITL, "audit", "verify"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr


def file_requests(settings: Settings, count: int) -> tuple[list[str], list[str]]:
    """File `count` requests as the agent through the Gate API: (buy_stock ids, send_email ids)."""

    async def run() -> tuple[list[str], list[str]]:
        buys: list[str] = []
        emails: list[str] = []
        async with open_gate(settings) as gate:
            for i in range(count):
                if i % EMAIL_EVERY == 0:
                    email = {"to": "racer@example.org", "subject": f"race {i}", "body": "exactly once"}
                    emails.append((await gate.file("send_email", email, "agent")).request_id)
                else:
                    buy = {"symbol": "RACE", "quantity": 1, "price": 1.0}
                    buys.append((await gate.file("buy_stock", buy, "agent")).request_id)
        return buys, emails

    return anyio.run(run)


async def run_race(env: dict[str, str], settings: Settings, ids: list[str], tmp_path: Path) -> Race:
    """Start every racer, release them together, and wait until every request has its outcome."""
    race = Race()
    rng = random.Random(SEED)
    orders = [rng.sample(ids, len(ids)) for _ in range(2 + CLI_LANES)]
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("\n".join(ids), encoding="utf-8")
    drivers_ready = anyio.Event()
    go = anyio.Event()
    ready: list[int] = []

    async def driver(index: int) -> None:
        with (tmp_path / f"driver{index}.err").open("wb") as errors:
            process = await anyio.open_process(
                [sys.executable, DRIVER, "--as", f"driver{index}", "--seed", str(SEED + index), ids_file],
                env=env,
                stderr=errors,
            )
        race.racers[process.pid] = f"driver{index}"
        assert process.stdin is not None and process.stdout is not None
        stdout = BufferedByteReceiveStream(process.stdout)
        async with process:  # if anything goes wrong, leaving kills it
            assert await read_line(stdout) == "READY"
            ready.append(index)
            if len(ready) == DRIVERS:
                drivers_ready.set()
            await go.wait()
            await process.stdin.send(b"go\n")
            race.driver_lines.append(await read_line(stdout))
            race.driver_exits.append(await process.wait())

    async def mcp_session(client: Client, name: str, order: list[str]) -> None:
        await go.wait()
        for request_id in order:
            result = await client.call_tool("approve", {"request_id": request_id, "reason": f"by {name}"})
            if result.is_error:
                race.mcp_refusals.append(text(result))

    async def cli_lane(name: str, order: list[str]) -> None:
        await go.wait()
        started = 0
        for request_id in order:
            if started == CLI_PER_LANE:
                break
            if not is_pending(settings.db_path, request_id):
                continue
            started += 1
            process = await anyio.open_process(
                [HITL, "approve", request_id, "--as", name, "--yes"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
            )
            race.racers[process.pid] = name
            assert process.stderr is not None
            async with process:
                errors = b"".join([chunk async for chunk in process.stderr])
                code = await process.wait()
            race.cli_exits.append(code)
            if code not in (0, 4):
                race.cli_errors.append(errors.decode(errors="replace"))

    port = free_port()
    stdio = StdioServerParameters(command=HITL, args=["serve"], env={**env, "HITL_PRINCIPAL": "mcp-stdio"})
    with anyio.fail_after(DEADLINE), (tmp_path / "mcp-stdio.err").open("w") as stdio_errors:
        async with (
            http_server({**env, "HITL_PRINCIPAL": "mcp-http"}, port) as http,
            Client(f"http://127.0.0.1:{port}/mcp") as over_http,
            # Its log (a line per refused approval) goes to a file rather than the test's output.
            Client(stdio_client(stdio, errlog=stdio_errors)) as over_stdio,
        ):
            race.racers[http.pid] = "mcp-http"
            async with anyio.create_task_group() as tasks:
                for index in range(DRIVERS):
                    tasks.start_soon(driver, index)
                tasks.start_soon(mcp_session, over_http, "mcp-http", orders[0])
                tasks.start_soon(mcp_session, over_stdio, "mcp-stdio", orders[1])
                for lane in range(CLI_LANES):
                    tasks.start_soon(cli_lane, f"cli{lane}", orders[2 + lane])
                await drivers_ready.wait()
                go.set()
            # A claim won by a server's housekeeping may still be running: wait for every outcome.
            async with open_gate(settings) as gate:
                for request_id in ids:
                    await gate.wait(request_id, DEADLINE)
    return race


async def read_line(stream: BufferedByteReceiveStream) -> str:
    return (await stream.receive_until(b"\n", 65_536)).decode(errors="replace").strip()


def is_pending(db: Path, request_id: str) -> bool:
    with sqlite3.connect(db) as conn:
        row = conn.execute("SELECT status FROM requests WHERE id = ?", (request_id,)).fetchone()
    return bool(row and row[0] == "pending")


@asynccontextmanager
async def http_server(env: dict[str, str], port: int) -> AsyncIterator[Process]:
    """`hitl serve --http` on a loopback port, yielded once uvicorn says it listens; its stderr (where the
    access log goes) is drained throughout so the server never blocks on a full pipe."""
    process = await anyio.open_process(
        [HITL, "serve", "--http", "--port", str(port)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    assert process.stderr is not None
    stderr = BufferedByteReceiveStream(process.stderr)
    listening = anyio.Event()
    lines: list[str] = []

    async def drain() -> None:
        try:
            while True:
                lines.append(await read_line(stderr))
                if "Uvicorn running on" in lines[-1]:
                    listening.set()
        except (anyio.EndOfStream, anyio.IncompleteRead):
            listening.set()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(drain)
        try:
            with anyio.fail_after(30):
                await listening.wait()
            assert process.returncode is None, "hitl serve --http exited:\n" + "\n".join(lines[-5:])
            yield process
        finally:
            with anyio.CancelScope(shield=True):
                process.terminate()
                with anyio.move_on_after(10):
                    await process.wait()
                if process.returncode is None:
                    process.kill()
                    await process.wait()
            tasks.cancel_scope.cancel()
