"""`engine_cycle_ratio`: file → approve → execute through the Gate's Python API, against raw sqlite3.

The floor commits as many transactions per cycle as the gate does, with the same durability: the store's
WAL journal and its `synchronous` setting, one small write per `BEGIN IMMEDIATE … COMMIT` (two in the
decision's). Reading gate.py and store/sqlite.py, a cycle that needs one approval commits three
transactions — insert (with its `filed` record), decide with its claim (`approved`, `claimed`), finish
(`executed`) — and writes four audit records, which the run checks.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import anyio

from bench.common import AGENT, APPROVER, Context, Figure, Stopwatch, median, rate, setup, with_noop
from hitl_mcp.gate import Gate
from hitl_mcp.models import Status
from hitl_mcp.store.sqlite import SQLiteStore

TRANSACTIONS_PER_CYCLE = 3
TRANSACTIONS = "insert, decide with its claim, finish"
ROUNDS = 12


def floor_cycles(path: Path, cycles: int, synchronous: str) -> float:
    """Seconds raw sqlite3 takes to commit `TRANSACTIONS_PER_CYCLE` small transactions `cycles` times."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
        conn.execute("CREATE TABLE IF NOT EXISTS requests (seq INTEGER PRIMARY KEY, status TEXT NOT NULL)")
        watch = Stopwatch()
        for _ in range(cycles):
            conn.execute("BEGIN IMMEDIATE")
            seq = conn.execute("INSERT INTO requests (status) VALUES ('pending')").lastrowid
            conn.execute("COMMIT")
            for statuses in (("approved", "executing"), ("executed",)):
                conn.execute("BEGIN IMMEDIATE")
                for status in statuses:
                    conn.execute("UPDATE requests SET status = ? WHERE seq = ?", (status, seq))
                conn.execute("COMMIT")
        return watch.elapsed
    finally:
        conn.close()


async def gate_cycles(gate: Gate, cycles: int, start: int) -> float:
    watch = Stopwatch()
    for n in range(start, start + cycles):
        filed = await gate.file("noop", {"n": n}, AGENT)
        done = await gate.approve(filed.request_id, APPROVER)
        if done.status is not Status.EXECUTED:
            raise RuntimeError(f"cycle {n} ended {done.status}, not executed")
    return watch.elapsed


class CommitCounter:
    """Durable commits and transitions on the store's writer since this was made (`commit_counts`)."""

    def __init__(self, store: SQLiteStore) -> None:
        self.store = store
        counts = store.commit_counts
        self.commits, self.transitions = counts.commits, counts.transitions

    def stop(self) -> tuple[int, int]:
        counts = self.store.commit_counts
        return counts.commits - self.commits, counts.transitions - self.transitions


def audit_records(path: Path) -> tuple[int, int]:
    conn = sqlite3.connect(path)
    try:
        requests = conn.execute("SELECT count(*) FROM requests").fetchone()[0]
        records = conn.execute("SELECT count(*) FROM audit").fetchone()[0]
        return int(requests), int(records)
    finally:
        conn.close()


def run(ctx: Context) -> list[Figure]:
    env = setup(ctx.folder("engine"))
    settings, actions = with_noop(env.settings)
    synchronous = settings.gate.synchronous
    cycles = ctx.reps(80, 20)
    floor_path = env.folder / "floor.db"
    counted: list[float] = []

    async def measure() -> tuple[list[float], list[float]]:
        store = SQLiteStore(settings.db_path, synchronous=synchronous)
        await store.open()
        try:
            gate = Gate(store, actions, settings)
            # Warm-up (imports, caches, the file's first pages), counting the store's commits meanwhile.
            commits = CommitCounter(store)
            await gate_cycles(gate, 20, 0)
            counted.extend(n / 20 for n in commits.stop())
            floor_cycles(floor_path, 20, synchronous)
            gate_times: list[float] = []
            floor_times: list[float] = []
            # Alternate short rounds so drift on a shared machine hits both sides alike.
            for round_ in range(ROUNDS):
                floor_times.append(floor_cycles(floor_path, cycles, synchronous))
                gate_times.append(await gate_cycles(gate, cycles, 20 + round_ * cycles))
            return gate_times, floor_times
        finally:
            await store.close()

    gate_times, floor_times = anyio.run(measure)
    total = cycles * ROUNDS
    gate_time, floor_time = sum(gate_times), sum(floor_times)
    gate_rate, floor_rate = rate(total, gate_time), rate(total, floor_time)
    requests, records = audit_records(settings.db_path)
    # The median of the rounds' ratios: a burst of someone else's disk traffic spoils one round, not all.
    ratio = median(f / g for f, g in zip(floor_times, gate_times, strict=True))
    traced, transitions = counted if counted else (float("nan"), float("nan"))
    warning = (
        []
        if traced == TRANSACTIONS_PER_CYCLE
        else [f"the store committed {traced:g} times a cycle, not {TRANSACTIONS_PER_CYCLE}: the floor is off"]
    )
    return [
        Figure(
            key="engine_cycle_ratio",
            value=round(ratio, 3),
            target="≥ 0.5",
            met=ratio >= 0.5,
            measured=f"gate {gate_rate:,.0f} cycles/s ({gate_time / total * 1000:.2f} ms)",
            baseline=f"sqlite3 {floor_rate:,.0f} cycles/s ({floor_time / total * 1000:.2f} ms)",
            notes=[
                f"a cycle commits {TRANSACTIONS_PER_CYCLE} transactions ({TRANSACTIONS}), read from the "
                f"code; counted by the store (commit_counts): {traced:g} commits for {transitions:g} "
                "transitions a cycle, "
                f"{records / requests:.2f} audit records a request; WAL, "
                f"synchronous={synchronous.upper()} on both sides; {total} cycles each in {ROUNDS} "
                "alternating rounds, the ratio is the median round's",
                *warning,
            ],
            extra={"engine_transactions_per_cycle": TRANSACTIONS_PER_CYCLE},
        )
    ]
