"""Crash: `kill -9` the process executing an approval at a random moment, restart, and check every request.

Each trial files a request and runs `hitl approve ID --as alice --yes`, killed with SIGKILL at one moment:

- before-claim, after-claim, after-action (the action done, its outcome not recorded): the gate's test
  seam `HITL_TEST_PAUSE_AT` stops the process there and says so on stderr, and the test kills it. The
  approval that completes a policy claims the request in the same commit, so before-claim is also before
  the decision: the request must still be pending;
- mid-action: the email's SMTP server holds the delivery in DATA — it has the whole message and has not
  answered — and the test kills the sender then;
- anywhere: after a delay, wherever the process happens to be, classified afterwards; the delays home in
  on the few milliseconds in which the request is decided, claimed and run.

Then a restarted server (`hitl serve`) must recover every request but the ones whose executor died holding
the claim: pending ones can still be approved and run once, approved-but-unclaimed ones are run by its
housekeeping, executed ones stay executed — and an `executing` one is shown as outcome unknown (in
`get_request`, `hitl show` and `hitl list`) and never runs again. Nothing runs twice at the real sinks (the
ledger's orders, the SMTP server's messages). HITL_STRESS_SCALE multiplies the number of trials.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiosmtpd.controller import Controller
from anyio.abc import ByteReceiveStream
from anyio.streams.buffered import BufferedByteReceiveStream
from mcp import Client, StdioServerParameters

from hitl_mcp.actions.send_email import message_id_for
from hitl_mcp.cli.common import describe, status_label
from hitl_mcp.config import Settings, load_settings
from hitl_mcp.errors import ConfigError
from hitl_mcp.gate import TEST_PAUSE_AT, Gate, open_gate
from hitl_mcp.ledger import Ledger
from hitl_mcp.models import Request, Status
from tests.environment import process_env, write_config
from tests.test_cli import HITL

SCALE = float(os.environ.get("HITL_STRESS_SCALE", "1"))
WINDOWS = ("before-claim", "after-claim", "mid-action", "after-action", "anywhere")
SEAM_POINTS = frozenset({"before-claim", "after-claim", "after-action"})
TRIALS = max(len(WINDOWS), round(100 * SCALE))
CONCURRENT_TRIALS = 3
ANYWHERE_START = 0.2  # seconds: about when `hitl approve` decides, after its start-up
SEED = int(os.environ.get("HITL_STRESS_SEED") or random.SystemRandom().randrange(1, 2**31))
DEADLINE = 30.0
# The whole run's bound: each trial starts a `hitl` process, which takes seconds on a loaded 2-core machine
# (a suite on parallel workers), so allow several seconds a trial; it is a safety net, not a measure.
WHOLE_RUN = DEADLINE + 4 * TRIALS
BUY = {"symbol": "CRSH", "quantity": 1, "price": 1.0}
HOST = socket.gethostname()


# -- a real SMTP server that can hold a delivery --------------------------------------------------------


@dataclass
class Hold:
    arrived: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)


class HoldingSmtp:
    """aiosmtpd on 127.0.0.1 counting messages by Message-ID. A delivery whose Message-ID has a `Hold` is
    received whole and then not answered until the hold is released: the sender is mid-action."""

    def __init__(self) -> None:
        self.received: Counter[str] = Counter()
        self.holds: dict[str, Hold] = {}
        self._lock = threading.Lock()
        self._controller = _EphemeralController(self, hostname="127.0.0.1", port=0)

    @property
    def port(self) -> int:
        return int(self._controller.port)

    def hold(self, message_id: str) -> Hold:
        with self._lock:
            return self.holds.setdefault(message_id, Hold())

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        headers = BytesHeaderParser().parsebytes(bytes(envelope.original_content or envelope.content))
        message_id = str(headers["Message-ID"])
        with self._lock:
            self.received[message_id] += 1
            hold = self.holds.get(message_id)
        if hold is not None:
            hold.arrived.set()
            await asyncio.get_running_loop().run_in_executor(None, hold.released.wait, DEADLINE)
        return "250 Message accepted for delivery"

    def __enter__(self) -> HoldingSmtp:
        self._controller.start()
        return self

    def __exit__(self, *_: object) -> None:
        for hold in list(self.holds.values()):
            hold.released.set()
        self._controller.stop()


class _EphemeralController(Controller):
    """Binds port 0 and learns the real port before aiosmtpd's readiness probe connects to it."""

    def _trigger_server(self) -> None:
        if self.port == 0 and isinstance(self.server, asyncio.Server):
            self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()  # type: ignore[no-untyped-call]


@pytest.fixture
def holding_smtp() -> Iterator[HoldingSmtp]:
    with HoldingSmtp() as server:
        yield server


@pytest.fixture
def crash_env(tmp_path: Path, holding_smtp: HoldingSmtp) -> dict[str, str]:
    return process_env(tmp_path, write_config(tmp_path / "crash.toml", smtp_port=holding_smtp.port))


# -- the trials -----------------------------------------------------------------------------------------


@dataclass
class Trial:
    request_id: str
    tool: str
    window: str
    pid: int = 0
    delay: float = 0.0  # for `anywhere`: seconds from start to the kill
    status: Status | None = None  # as the kill left it


# A bound for a stuck run, not a speed figure: 100 kill trials took up to 115 s on a busy 2-core machine.
@pytest.mark.timeout(300 * max(1.0, SCALE))
def test_kill_minus_9_at_any_moment_runs_nothing_twice_and_loses_nothing(
    crash_env: dict[str, str], holding_smtp: HoldingSmtp, tmp_path: Path
) -> None:
    print(f"crash seed {SEED}: HITL_STRESS_SEED={SEED} replays these trials")
    settings = load_settings(crash_env)
    rng = random.Random(SEED)
    windows = [WINDOWS[i % len(WINDOWS)] for i in range(TRIALS)]
    rng.shuffle(windows)
    tools = ["send_email" if w == "mid-action" else rng.choice(["buy_stock", "send_email"]) for w in windows]
    ids = file_requests(settings, tools)
    trials = [Trial(*trial) for trial in zip(ids, tools, windows, strict=True)]

    anyio.run(kill_every_trial, trials, crash_env, holding_smtp, rng)
    ledger = Ledger(tmp_path / "ledger.db", 0.0)

    def sinks() -> Counter[str]:
        """How many times each request's action reached its real sink: an order, or a message."""
        orders = Counter(fill.order_id for fill in anyio.run(ledger.orders))
        received = holding_smtp.received
        return orders + Counter({t.request_id: received[message_id_for(t.request_id)] for t in trials})

    # What each moment must leave behind, before anything restarts.
    expected = {
        "before-claim": {Status.PENDING},
        "after-claim": {Status.EXECUTING},
        "mid-action": {Status.EXECUTING},
        "after-action": {Status.EXECUTING},
        # Never approved and unclaimed: deciding and claiming are one commit.
        "anywhere": {Status.PENDING, Status.EXECUTING, Status.EXECUTED},
    }
    for trial in trials:
        assert trial.status in expected[trial.window], trial
    runs = {"after-claim": 0, "mid-action": 1, "after-action": 1}
    ran = sinks()
    for trial in trials:
        if trial.window in runs:
            assert ran[trial.request_id] == runs[trial.window], trial
    print("left behind:", dict(Counter((t.window, t.status and t.status.value) for t in trials)))

    # A restarted server recovers everything else and leaves the orphaned executions alone.
    unknown = [t for t in trials if t.status is Status.EXECUTING]
    records = anyio.run(restart_and_recover, trials, crash_env, settings)
    for trial in trials:
        record = records[trial.request_id]
        if trial in unknown:
            assert record["status"] == "executing" and record["outcome_unknown"] is True, record
            assert record["claimed_by"] == f"{HOST}:{trial.pid}"
        else:
            assert record["status"] == "executed", (trial, record["error"])
            assert record["outcome_unknown"] is False

    # Nothing ran twice; everything that executed ran exactly once; the audit trail agrees.
    ran = sinks()
    assert max(ran.values()) <= 1 and max(holding_smtp.received.values()) <= 1
    with sqlite3.connect(settings.db_path) as conn:
        events = Counter(conn.execute("SELECT request_id, event FROM audit").fetchall())
        statuses = dict(conn.execute("SELECT id, status FROM requests").fetchall())
    for trial in trials:
        executed = statuses[trial.request_id] == "executed"
        assert ran[trial.request_id] == 1 if executed else ran[trial.request_id] <= 1, trial
        assert events[trial.request_id, "executed"] == int(executed), trial
        assert events[trial.request_id, "claimed"] == 1, trial
    assert Counter(statuses.values()) == {"executed": TRIALS - len(unknown) + 1, "executing": len(unknown)}

    # People see the orphaned executions as outcome unknown, in the list and in each record.
    listed = hitl(crash_env, "list", "--status", "executing")
    assert listed.returncode == 0, listed.stderr
    rows = listed.stdout.splitlines()[1:]
    assert sorted(row.split()[0] for row in rows) == sorted(t.request_id[:10] for t in unknown)
    assert all("executing (outcome unknown)" in row for row in rows)
    for trial in unknown[:3]:
        shown = hitl(crash_env, "show", trial.request_id)
        assert "Status     executing (outcome unknown)" in shown.stdout, shown.stdout
        assert f"Claimed    by {HOST}:{trial.pid}" in shown.stdout
    verified = hitl(crash_env, "audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def file_requests(settings: Settings, tools: list[str]) -> list[str]:
    async def run() -> list[str]:
        async with open_gate(settings) as gate:
            filed = [await gate.file(tool, arguments(tool, i), "agent") for i, tool in enumerate(tools)]
            return [request.request_id for request in filed]

    return anyio.run(run)


def arguments(tool: str, index: int) -> dict[str, Any]:
    if tool == "send_email":
        return {"to": "crash@example.org", "subject": f"trial {index}", "body": "at most once"}
    return BUY


async def kill_every_trial(
    trials: list[Trial], env: dict[str, str], smtp: HoldingSmtp, rng: random.Random
) -> None:
    """Kill the trials at a named moment a few at a time, then the `anywhere` ones one by one; record what
    each kill left behind."""
    limiter = anyio.CapacityLimiter(CONCURRENT_TRIALS)

    async def one(trial: Trial) -> None:
        async with limiter:
            await kill_trial(trial, env, smtp)

    async with open_gate(load_settings(env)) as gate:
        with anyio.fail_after(WHOLE_RUN):
            async with anyio.create_task_group() as tasks:
                for trial in trials:
                    if trial.window != "anywhere":
                        tasks.start_soon(one, trial)
            # A staircase: a kill that found the request still pending moves the next one later, one that
            # found it executed moves it earlier, halving the step at each turn — so the kills home in on the
            # few milliseconds in which the request is decided, claimed and run, jittered around them.
            delay, step, last = ANYWHERE_START, ANYWHERE_START / 4, 0
            for trial in (t for t in trials if t.window == "anywhere"):
                trial.delay = max(0.0, delay + rng.uniform(-step, step) / 2)
                await kill_trial(trial, env, smtp)
                status = (await gate.get(trial.request_id)).status
                direction = {Status.PENDING: 1, Status.EXECUTED: -1}.get(status, 0)
                if direction and direction != last:
                    step = max(step / 2, 0.001)
                delay, last = delay + direction * step, direction or last
        for trial in trials:
            trial.status = (await gate.get(trial.request_id)).status


async def kill_trial(trial: Trial, env: dict[str, str], smtp: HoldingSmtp) -> None:
    """Start the approver, wait for the trial's moment, and SIGKILL it there."""
    hold = smtp.hold(message_id_for(trial.request_id)) if trial.window == "mid-action" else None
    if trial.window in SEAM_POINTS:
        env = {**env, TEST_PAUSE_AT: trial.window}
    process = await anyio.open_process(
        [HITL, "approve", trial.request_id, "--as", "alice", "--yes"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    trial.pid = process.pid
    assert process.stderr is not None
    try:
        with anyio.fail_after(DEADLINE):
            if trial.window in SEAM_POINTS:
                await paused(process.stderr, trial)
            elif hold is not None:
                arrived = await anyio.to_thread.run_sync(hold.arrived.wait, DEADLINE)
                assert arrived, f"the email of {trial} never reached DATA"
            else:
                await anyio.sleep(trial.delay)  # the random moment itself, not a wait for anything
    finally:
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            if hold is not None:
                hold.released.set()


async def paused(stderr: ByteReceiveStream, trial: Trial) -> None:
    """Read the process's stderr until the seam says it stopped at the trial's point."""
    lines = BufferedByteReceiveStream(stderr)
    marker = f"hitl-test-pause: {trial.window} {trial.request_id} "
    seen: list[str] = []
    while True:
        try:
            line = (await lines.receive_until(b"\n", 65_536)).decode(errors="replace")
        except (anyio.EndOfStream, anyio.IncompleteRead):
            raise AssertionError(f"{trial} ended before pausing:\n" + "\n".join(seen)) from None
        if line.startswith(marker):
            return
        seen.append(line)


async def restart_and_recover(trials: list[Trial], env: dict[str, str], settings: Settings) -> dict[str, Any]:
    """Start a fresh server and bring every request to the end it can reach; return every record."""
    records: dict[str, Any] = {}
    with anyio.fail_after(WHOLE_RUN):
        async with server(env, "bob") as bob:
            for trial in trials:
                # Pending: a person can still decide it, and it runs once.
                if trial.status is Status.PENDING:
                    await call(bob, "approve", request_id=trial.request_id)
                # Approved but never claimed: the server's housekeeping runs it on its own.
                if trial.status in (Status.PENDING, Status.APPROVED):
                    await call(bob, "wait_for_decision", request_id=trial.request_id, timeout_seconds=20)
            # One more approval left unclaimed, released by a housekeeping pass that necessarily comes after
            # every orphaned execution was already there to be (wrongly) picked up.
            probe = await approved_unclaimed(settings)
            probed = await call(bob, "wait_for_decision", request_id=probe, timeout_seconds=20)
            assert probed["status"] == "executed", probed
            for trial in trials:
                records[trial.request_id] = await call(bob, "get_request", request_id=trial.request_id)
    return records


async def approved_unclaimed(settings: Settings) -> str:
    """File a purchase and approve it without claiming it, as if its approver died right after deciding."""
    async with open_gate(settings) as gate:
        request = await gate.file("buy_stock", BUY, "agent")
        await gate.decide(request.request_id, "alice", "approve")
    return request.request_id


@asynccontextmanager
async def server(env: dict[str, str], principal: str) -> AsyncIterator[Client]:
    params = StdioServerParameters(command=HITL, args=["serve"], env={**env, "HITL_PRINCIPAL": principal})
    async with Client(params) as client:
        yield client


async def call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments)
    assert not result.is_error and result.structured_content is not None, (tool, arguments, result.content)
    return dict(result.structured_content)


def hitl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([HITL, *args], env=env, capture_output=True, text=True, timeout=60, check=False)


# -- a server killed while running an orphan ------------------------------------------------------------


def test_a_server_killed_mid_execution_leaves_it_outcome_unknown_and_its_restart_never_reruns_it(
    crash_env: dict[str, str], tmp_path: Path
) -> None:
    settings = load_settings(crash_env)

    async def scenario() -> tuple[str, int, dict[str, Any]]:
        # The server's housekeeping claims the orphaned approval, runs it, and is killed before recording it.
        request_id = await approved_unclaimed(settings)
        process = await anyio.open_process(
            [HITL, "serve"], env={**crash_env, TEST_PAUSE_AT: "after-action"}, stdout=subprocess.DEVNULL
        )
        assert process.stderr is not None
        try:
            with anyio.fail_after(DEADLINE):
                await paused(process.stderr, Trial(request_id, "buy_stock", "after-action"))
        finally:
            with anyio.CancelScope(shield=True):
                process.kill()
                await process.wait()
        async with server(crash_env, "bob") as bob:
            probe = await approved_unclaimed(settings)
            probed = await call(bob, "wait_for_decision", request_id=probe, timeout_seconds=20)
            assert probed["status"] == "executed", probed
            record = await call(bob, "get_request", request_id=request_id)
        return request_id, process.pid, record

    request_id, pid, record = anyio.run(scenario)

    assert record["status"] == "executing"
    assert record["outcome_unknown"] is True
    assert record["claimed_by"] == f"{HOST}:{pid}"
    # It did run once — the order is in the ledger — and the restarted server did not run it again.
    orders = anyio.run(Ledger(tmp_path / "ledger.db", 0.0).orders)
    assert [fill.order_id for fill in orders].count(request_id) == 1
    assert len(orders) == 2  # and the probe's


# -- how outcome-unknown is judged and shown ------------------------------------------------------------


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait(timeout=30)
    return process.pid


async def claimed_by(gate: Gate, worker: str) -> Request:
    request = await gate.file("buy_stock", BUY, "agent")
    await gate.decide(request.request_id, "alice", "approve")
    claimed = await gate.store.claim(request.request_id, worker, gate.clock())
    assert claimed is not None
    return await gate.get(request.request_id)


async def test_an_executing_request_whose_claimant_died_is_outcome_unknown_and_stays_put(gate: Gate) -> None:
    request = await claimed_by(gate, f"{HOST}:{dead_pid()}")

    assert request.status is Status.EXECUTING
    assert request.outcome_unknown
    assert request.claimed_at is not None and abs(request.claimed_at.timestamp() - time.time()) < 60
    [listed] = (await gate.list(statuses=(Status.EXECUTING,))).requests
    assert listed.outcome_unknown
    # Waiting returns at once: nothing but a person will change it now.
    with anyio.fail_after(5):
        assert (await gate.wait(request.request_id, 30)).outcome_unknown
    # Housekeeping and a new approval attempt leave it alone.
    assert await gate.release_orphans() == 0
    assert (await gate.execute(request.request_id)).status is Status.EXECUTING
    assert status_label(request) == "executing (outcome unknown)"
    assert "Outcome    unknown" in describe(request)


async def test_a_live_or_remote_claimant_is_outcome_unknown_only_past_the_timeout(
    gate: Gate, settings: Settings
) -> None:
    alive = await claimed_by(gate, gate.worker)
    remote = await claimed_by(gate, "another-host:1")

    assert not alive.outcome_unknown and not remote.outcome_unknown
    assert status_label(alive) == "executing"
    assert alive.claimed_by == gate.worker and alive.claimed_at is not None

    timeout = settings.gate.executing_timeout_seconds
    later = Gate(gate.store, gate.actions, settings, clock=lambda: time.time() + timeout + 1)
    assert (await later.get(remote.request_id)).outcome_unknown
    assert (await later.get(alive.request_id)).outcome_unknown


async def test_finished_requests_keep_their_claimant_but_never_show_outcome_unknown(gate: Gate) -> None:
    request = await gate.file("buy_stock", BUY, "agent")

    done = await gate.approve(request.request_id, "alice")

    assert done.status is Status.EXECUTED
    assert done.claimed_by == gate.worker and done.claimed_at is None
    assert not done.outcome_unknown


def test_executing_timeout_is_a_gate_setting_checked_at_start(tmp_path: Path) -> None:
    config = tmp_path / "timeout.toml"
    config.write_text("[gate]\nexecuting_timeout_seconds = 30\n")
    assert load_settings({"HITL_CONFIG": str(config)}).gate.executing_timeout_seconds == 30

    config.write_text("[gate]\nexecuting_timeout_seconds = 0\n")
    with pytest.raises(ConfigError, match=r"gate\.executing_timeout_seconds"):
        load_settings({"HITL_CONFIG": str(config)})
