"""`pg_cycles_3proc_vs_sqlite_1proc` and `pg_wake_p99_ms`: the PostgreSQL store with several processes.

Both run against a throwaway PostgreSQL cluster started from the machine's server binaries (durable:
fsync on, as a server would run), and are null, saying why, where there are none.

- Cycles: a cycle is one gated call filed and approved, which claims, runs (a no-op action) and finishes
  it: four transitions. Three processes, each a gate on the same PostgreSQL database with LANES
  concurrent sessions, against one process with as many sessions on an SQLite file (group commit,
  synchronous=FULL), same run, the same seconds each. The ratio is the three processes' cycles per
  second over the one's.
- Wake: as `wake_p99_ms`, on PostgreSQL — a `hitl approve ID --yes` process decides and runs a request
  while the agent's session waits in `wait_for_decision` in this process; from the decision's audit `at`
  to the wait's return. The other process's commit reaches this one through LISTEN/NOTIFY.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import anyio
import asyncpg
from mcp import Client

from bench.common import AGENT, APPROVER, HITL, Context, Figure, percentile, setup
from hitl_mcp.server import build_server

LANES = 8
PROCESSES = 3
BUY = {"symbol": "GOOGL", "quantity": 1, "price": 1.0}

# One process of the cycles figure: a gate with the no-op action, LANES sessions filing and approving.
DRIVER = """
import sys, time, anyio
from bench.common import AGENT, APPROVER, setup, with_noop
from hitl_mcp.gate import Gate
from hitl_mcp.store import open_store
from pathlib import Path

async def main(folder: str, seconds: float, lanes: int) -> None:
    settings, actions = with_noop(setup(Path(folder)).settings)
    store = await open_store(settings)
    gate = Gate(store, actions, settings)
    done = [0]
    n = [0]

    async def lane(deadline: float) -> None:
        while time.monotonic() < deadline:
            n[0] += 1
            request = await gate.file("noop", {"n": n[0]}, AGENT)
            finished = await gate.approve(request.request_id, APPROVER)
            assert finished.status.value == "executed", finished
            done[0] += 1

    for _ in range(3):  # warm-up
        request = await gate.file("noop", {"n": 0}, AGENT)
        await gate.approve(request.request_id, APPROVER)
    print("ready", flush=True)
    sys.stdin.readline()
    deadline = time.monotonic() + seconds
    async with anyio.create_task_group() as tasks:
        for _ in range(lanes):
            tasks.start_soon(lane, deadline)
    await store.close()
    print(done[0], flush=True)

anyio.run(main, sys.argv[1], float(sys.argv[2]), int(sys.argv[3]))
"""


def run(ctx: Context) -> list[Figure]:
    from tests.postgres_cluster import start_cluster

    cluster = start_cluster(durable=True)
    if cluster is None:
        missing = "no PostgreSQL server binaries (initdb, pg_ctl) here"
        return [
            Figure("pg_cycles_3proc_vs_sqlite_1proc", None, "", None, notes=[missing]),
            Figure("pg_wake_p99_ms", None, "p99 ≤ 150, p50 ≤ 50", None, notes=[missing]),
        ]
    try:
        return [cycles(ctx, cluster.create_database()), wake(ctx, cluster.create_database())]
    finally:
        cluster.stop()


def cycles(ctx: Context, url: str) -> Figure:
    seconds = ctx.reps(8, 2)
    sqlite_folder = ctx.folder("pg_cycles_sqlite")
    pg_folder = ctx.folder("pg_cycles_pg")
    rounds = ctx.reps(2, 1)
    ours: list[float] = []
    theirs: list[float] = []
    for _ in range(rounds):  # alternating: drift on a shared machine hits both alike
        theirs.append(_drive([sqlite_folder], {}, seconds))
        ours.append(_drive([pg_folder] * PROCESSES, {"HITL_DB": url}, seconds))
    pg_rate, sqlite_rate = max(ours), max(theirs)
    ratio = pg_rate / sqlite_rate
    return Figure(
        key="pg_cycles_3proc_vs_sqlite_1proc",
        value=round(ratio, 3),
        target="",
        met=None,
        measured=f"PostgreSQL, {PROCESSES} processes × {LANES} sessions: {pg_rate:,.0f} cycles/s",
        baseline=f"SQLite, 1 process × {LANES} sessions: {sqlite_rate:,.0f} cycles/s",
        notes=[
            f"a cycle is file + approve (claim, no-op run, finish): 4 transitions; best of {rounds} "
            f"round(s) of {seconds} s each; both durable (PostgreSQL fsync on, SQLite synchronous=FULL)",
            f"rounds: PostgreSQL {', '.join(f'{r:,.0f}' for r in ours)}; "
            f"SQLite {', '.join(f'{r:,.0f}' for r in theirs)} cycles/s; {os.cpu_count()} cores for all",
        ],
        extra={"pg_cycles_per_second": round(pg_rate, 1), "sqlite_cycles_per_second": round(sqlite_rate, 1)},
    )


def _drive(folders: list[Path], env_extra: dict[str, str], seconds: float) -> float:
    """Cycles per second of len(folders) driver processes started together."""
    processes = []
    for folder in folders:
        env = {**setup(folder).env, **env_extra, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
        processes.append(
            subprocess.Popen(
                [sys.executable, "-c", DRIVER, str(folder), str(seconds), str(LANES)],
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
        )
    try:
        for process in processes:
            assert process.stdout is not None
            if process.stdout.readline() != "ready\n":
                raise RuntimeError("a driver did not start")
        started = time.perf_counter()
        for process in processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        done = 0
        for process in processes:
            out, _ = process.communicate(timeout=seconds + 60)
            if process.returncode != 0:
                raise RuntimeError(f"a driver failed with {process.returncode}")
            done += int(out.strip().splitlines()[-1])
        elapsed = max(time.perf_counter() - started, seconds)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    return done / elapsed


def wake(ctx: Context, url: str) -> Figure:
    env = setup(ctx.folder("pg_wake"))
    process_env = {**env.env, "HITL_DB": url}
    from hitl_mcp.config import load_settings

    settings = load_settings(process_env)
    samples = ctx.reps(40, 6)

    async def decided_at(request_id: str) -> dict[str, float]:
        conn = await asyncpg.connect(url)
        try:
            rows = await conn.fetch("SELECT event, at FROM audit WHERE request_id = $1", request_id)
        finally:
            await conn.close()
        return {str(row[0]): float(row[1]) for row in rows}

    async def measure() -> list[float]:
        latencies: list[float] = []
        async with Client(build_server(settings, principal=AGENT)) as agent:
            for index in range(samples + 1):  # the first is a warm-up
                filed = await agent.call_tool("buy_stock", BUY)
                assert filed.structured_content is not None, filed.content
                request_id = filed.structured_content["request_id"]
                returned: list[float] = []

                async def wait(request_id: str = request_id, returned: list[float] = returned) -> None:
                    result = await agent.call_tool(
                        "wait_for_decision", {"request_id": request_id, "timeout_seconds": 50}
                    )
                    returned.append(time.time())
                    if result.structured_content is None or result.structured_content["status"] != "executed":
                        raise RuntimeError(f"wait_for_decision returned {result.content}")

                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(wait)
                    await anyio.sleep(0.05)
                    with anyio.fail_after(60):
                        done = await anyio.run_process(
                            [str(HITL), "approve", request_id, "--yes", "--as", APPROVER],
                            env=process_env,
                            check=False,
                        )
                    if done.returncode != 0:
                        raise RuntimeError(f"hitl approve failed: {done.stderr.decode()}")
                times = await decided_at(request_id)
                if index:
                    latencies.append(returned[0] - times["approved"])
        return latencies

    latencies = anyio.run(measure)
    p50 = percentile(latencies, 50) * 1000
    p99 = percentile(latencies, 99) * 1000
    return Figure(
        key="pg_wake_p99_ms",
        value=round(p99, 2),
        target="p99 ≤ 150, p50 ≤ 50",
        met=p99 <= 150 and p50 <= 50,
        measured=f"decision → return p50 {p50:.1f} ms, p99 {p99:.1f} ms",
        baseline="wake_p99_ms is the same on SQLite",
        notes=[
            f"{samples} samples, each a separate `hitl approve` process on PostgreSQL; includes its claim, "
            f"order and finish; max {max(latencies) * 1e3:.1f} ms"
        ],
        extra={"pg_wake_p50_ms": round(p50, 2)},
    )
