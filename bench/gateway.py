"""`gateway_pass_ratio`: what the gateway adds to a passed call, and `gateway_cycle_ratio`: a gated
upstream call filed and approved, each against its baseline in the same run.

- Passed: the Python SDK client calls the test upstream's read-only `stats` tool over stdio, once
  straight to the upstream and once through `hitl serve` (stdio) with that upstream behind it, where the
  call is forwarded and audited: the durable commit of its `passed` record runs while the upstream works,
  and the answer waits for both. Interleaved, one session each, p50 of each; beside them, the p50 of that
  commit alone (the same record written by a store in this process, on the same disk), which is the floor
  of a pass whenever the disk is slower than the upstream.
- Gated: file `notes__write_note` and approve it (two in-process sessions: the agent and an approver),
  against the same cycle with the built-in `buy_stock` on the same store. The upstream's write is its own
  fsync (tests/upstream_server.py records every effect durably).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import anyio
from mcp import Client, StdioServerParameters

from bench.common import AGENT, APPROVER, HITL, REPO, Context, Figure, median, ms, setup
from hitl_mcp.config import load_settings
from hitl_mcp.gate import new_request_id
from hitl_mcp.server import build_server
from hitl_mcp.store.sqlite import SQLiteStore

UPSTREAM = REPO / "tests" / "upstream_server.py"


def upstream_table(counter: Path) -> str:
    args = json.dumps([str(UPSTREAM), "--counter", str(counter)])
    return (
        f"\n[upstreams.notes]\ncommand = {json.dumps(sys.executable)}\nargs = {args}\n"
        'gate = ["write_*"]\npass = ["stats", "read_*"]\n'
    )


async def until_listed(client: Client, name: str) -> None:
    with anyio.fail_after(60):
        while name not in {tool.name for tool in (await client.list_tools()).tools}:  # noqa: ASYNC110
            await anyio.sleep(0.05)


async def timed(client: Client, tool: str, arguments: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    start = time.perf_counter()
    result = await client.call_tool(tool, arguments)
    elapsed = time.perf_counter() - start
    if result.is_error:
        raise RuntimeError(f"{tool} failed: {result.content}")
    return elapsed, dict(result.structured_content or {})


def run(ctx: Context) -> list[Figure]:
    env = setup(ctx.folder("gateway"))
    counter = env.folder / "effects.jsonl"
    config = Path(env.env["HITL_CONFIG"])
    config.write_text(config.read_text() + upstream_table(counter))
    settings = load_settings(env.env)
    calls = ctx.reps(400, 40)
    cycles = ctx.reps(150, 20)
    upstream = StdioServerParameters(command=sys.executable, args=[str(UPSTREAM), "--counter", str(counter)])
    gateway = StdioServerParameters(command=str(HITL), args=["serve"], env=env.env)

    async def passed() -> tuple[list[float], list[float], list[float]]:
        direct: list[float] = []
        through: list[float] = []
        commits: list[float] = []
        store = SQLiteStore(env.folder / "commits.db")
        await store.open()
        details = {"tool": "notes__stats", "arguments_digest": "0" * 64, "outcome": "forwarded"}

        async def commit() -> float:
            start = time.perf_counter()
            await store.record_event(new_request_id(), "passed", AGENT, details, time.time())
            return time.perf_counter() - start

        try:
            async with Client(upstream) as straight, Client(gateway) as hitl:
                await until_listed(hitl, "notes__stats")
                for _ in range(20):
                    await timed(straight, "stats", {})
                    await timed(hitl, "notes__stats", {})
                    await commit()
                for _ in range(calls):
                    direct.append((await timed(straight, "stats", {}))[0])
                    through.append((await timed(hitl, "notes__stats", {}))[0])
                    commits.append(await commit())
        finally:
            await store.close()
        return direct, through, commits

    async def gated() -> tuple[float, float]:
        async def cycle_rate(agent: Client, approver: Client, tool: str, make: Any) -> float:
            start = time.perf_counter()
            for n in range(cycles):
                _, filed = await timed(agent, tool, make(n))
                _, decided = await timed(approver, "approve", {"request_id": filed["request_id"]})
                if decided.get("status") != "executed":
                    raise RuntimeError(f"{tool} ended {decided.get('status')}: {decided.get('error')}")
            return cycles / (time.perf_counter() - start)

        async with (
            Client(build_server(settings, principal=AGENT)) as agent,
            Client(build_server(settings, principal=APPROVER)) as approver,
        ):
            await until_listed(agent, "notes__write_note")
            await until_listed(approver, "notes__write_note")

            def note(n: int) -> dict[str, Any]:
                return {"path": f"n{n}", "text": "x"}

            def buy(n: int) -> dict[str, Any]:
                return {"symbol": "GOOGL", "quantity": 1 + n, "price": 1.0}

            await cycle_rate(agent, approver, "notes__write_note", note)  # warm-up
            upstream_rate = await cycle_rate(agent, approver, "notes__write_note", note)
            builtin_rate = await cycle_rate(agent, approver, "buy_stock", buy)
        return upstream_rate, builtin_rate

    direct, through, commits = anyio.run(passed)
    upstream_rate, builtin_rate = anyio.run(gated)
    pass_ratio = median(through) / median(direct)
    cycle_ratio = upstream_rate / builtin_rate
    return [
        Figure(
            key="gateway_pass_ratio",
            value=round(pass_ratio, 3),
            target="≤ 1.3",
            met=pass_ratio <= 1.3,
            measured=f"through hitl p50 {ms(median(through))}",
            baseline=f"straight to the upstream p50 {ms(median(direct))}",
            notes=[
                f"{calls} calls each over stdio, interleaved; through hitl is two stdio hops, hitl's "
                "dispatch and its call to the upstream, with the durable audit commit alongside (its p50 "
                f"alone here: {ms(median(commits))})"
            ],
            extra={"gateway_audit_commit_p50_ms": round(median(commits) * 1000, 3)},
        ),
        Figure(
            key="gateway_cycle_ratio",
            value=round(cycle_ratio, 3),
            target="-",
            met=None,
            measured=f"upstream file + approve {upstream_rate:,.0f} cycles/s",
            baseline=f"buy_stock file + approve {builtin_rate:,.0f} cycles/s",
            extra={"gateway_cycles_per_second": round(upstream_rate, 1)},
        ),
    ]
