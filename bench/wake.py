"""`wake_p99_ms`: a decision made by another process (`hitl approve`) until `wait_for_decision` returns.

The server runs in this process (the SDK's in-process client, the agent's session); for each sample the
agent files a `buy_stock` request and waits on it, and a `hitl approve ID --yes` subprocess — a human at
a terminal — approves it, which also runs the order. The latency runs from the decision's own timestamp
(its audit record's `at`, taken just before the approval commits in the other process) to the moment the
waiting call returns to the agent. A request counts as decided for good once it has run, so the figure
includes the other process's claim, order and finish; the time from its `executed` record is shown too.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import anyio
from mcp import Client

from bench.common import AGENT, APPROVER, HITL, Context, Figure, percentile, setup
from hitl_mcp.server import build_server

BUY = {"symbol": "GOOGL", "quantity": 1, "price": 1.0}


def decision_times(db: Path, request_id: str) -> dict[str, float]:
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT event, at FROM audit WHERE request_id = ?", (request_id,)).fetchall()
        return {str(event): float(at) for event, at in rows}
    finally:
        conn.close()


def run(ctx: Context) -> list[Figure]:
    env = setup(ctx.folder("wake"))
    samples = ctx.reps(40, 6)

    async def measure() -> tuple[list[float], list[float]]:
        from_decision: list[float] = []
        from_execution: list[float] = []
        async with Client(build_server(env.settings, principal=AGENT)) as agent:
            for index in range(samples + 1):  # the first is a warm-up
                filed = await agent.call_tool("buy_stock", BUY)
                assert filed.structured_content is not None, filed.content
                request_id = filed.structured_content["request_id"]
                returned: list[float] = []

                async def wait(request_id: str = request_id, returned: list[float] = returned) -> None:
                    result = await agent.call_tool(
                        "wait_for_decision", {"request_id": request_id, "timeout_seconds": 30}
                    )
                    returned.append(time.time())
                    if result.structured_content is None or result.structured_content["status"] != "executed":
                        raise RuntimeError(f"wait_for_decision returned {result.content}")

                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(wait)
                    await anyio.sleep(0.05)  # the wait is under way before the approver starts
                    with anyio.fail_after(60):
                        done = await anyio.run_process(
                            [str(HITL), "approve", request_id, "--yes", "--as", APPROVER],
                            env=env.env,
                            check=False,
                        )
                    if done.returncode != 0:
                        raise RuntimeError(f"hitl approve failed: {done.stderr.decode()}")
                times = decision_times(env.db_path, request_id)
                if index:
                    from_decision.append(returned[0] - times["approved"])
                    from_execution.append(returned[0] - times["executed"])
        return from_decision, from_execution

    from_decision, from_execution = anyio.run(measure)
    p50 = percentile(from_decision, 50) * 1000
    p99 = percentile(from_decision, 99) * 1000
    return [
        Figure(
            key="wake_p99_ms",
            value=round(p99, 2),
            target="p99 ≤ 150, p50 ≤ 50",
            met=p99 <= 150 and p50 <= 50,
            measured=f"decision → return p50 {p50:.1f} ms, p99 {p99:.1f} ms",
            baseline=(
                f"from the executed record p50 {percentile(from_execution, 50) * 1000:.1f} ms, "
                f"p99 {percentile(from_execution, 99) * 1000:.1f} ms"
            ),
            notes=[
                f"{samples} samples, each a separate `hitl approve` process; "
                f"max {max(from_decision) * 1e3:.1f} ms",
                *(
                    [
                        f"{late} samples took over a second: waits that missed the change and slept until "
                        "their next 5 s re-check"
                    ]
                    if (late := sum(1 for t in from_decision if t > 1.0))
                    else []
                ),
            ],
            extra={"wake_p50_ms": round(p50, 2)},
        )
    ]
