"""`mcp_cycle_vs_langgraph`: file + approve cycles over the in-process MCP client, against LangGraph's
`interrupt_before` + `SqliteSaver` file + resume cycle with a scripted (no-LLM) agent node, same run.

Our cycle: the agent's session calls `buy_stock`, the approver's session (another principal, same server
process) calls `approve`, which runs the order on the paper ledger once. LangGraph's cycle: `invoke` runs
a scripted agent node that proposes the same order and stops before the tool node (checkpointed in
SQLite), then `invoke(None)` resumes and runs a tool node that does nothing — LangGraph is spared the
ledger write ours does. Both checkpoint stores use WAL with synchronous=FULL.
"""

from __future__ import annotations

import importlib
import sqlite3
from pathlib import Path
from typing import Any, TypedDict

import anyio
from mcp import Client

from bench.common import AGENT, APPROVER, Context, Figure, Stopwatch, file_size, median, rate, setup
from hitl_mcp.gate import open_gate
from hitl_mcp.server import build_server

BUY = {"symbol": "GOOGL", "quantity": 1, "price": 1.0}
ROUNDS = 8


class GraphState(TypedDict, total=False):
    proposal: dict[str, Any]
    result: dict[str, Any]


class LangGraphCycle:
    """A compiled graph agent → act, interrupted before act, checkpointed by SqliteSaver in `path`."""

    def __init__(self, path: Path) -> None:
        from langgraph.checkpoint.sqlite import SqliteSaver
        from langgraph.graph import END, START, StateGraph

        self.path = path
        self.conn = sqlite3.connect(path, check_same_thread=False)
        saver = SqliteSaver(self.conn)
        saver.setup()  # sets journal_mode=WAL
        self.conn.execute("PRAGMA synchronous = FULL")
        graph = StateGraph(GraphState)
        graph.add_node("agent", self._agent)
        graph.add_node("act", self._act)
        graph.add_edge(START, "agent")
        graph.add_edge("agent", "act")
        graph.add_edge("act", END)
        self.app = graph.compile(checkpointer=saver, interrupt_before=["act"])
        self.cycles = 0

    @staticmethod
    def _agent(state: GraphState) -> GraphState:
        return {"proposal": {"tool": "buy_stock", "arguments": dict(BUY)}}

    @staticmethod
    def _act(state: GraphState) -> GraphState:
        return {"result": {"ok": True}}

    def run(self, cycles: int) -> float:
        watch = Stopwatch()
        for _ in range(cycles):
            config: Any = {"configurable": {"thread_id": f"request-{self.cycles}"}}
            self.cycles += 1
            paused = self.app.invoke({}, config)
            if "result" in paused:
                raise RuntimeError("the graph ran its tool node before being resumed")
            done = self.app.invoke(None, config)
            if done.get("result") != {"ok": True}:
                raise RuntimeError(f"the resumed graph did not run its tool node: {done}")
        return watch.elapsed

    def bytes_per_cycle(self) -> float:
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return file_size(self.path) / self.cycles

    def close(self) -> None:
        self.conn.close()


def langgraph_missing() -> str | None:
    try:
        for module in ("langgraph.graph", "langgraph.checkpoint.sqlite"):
            importlib.import_module(module)
    except ImportError as error:
        return f"LangGraph is not installed ({error.name}); pip install -e '.[bench]' to compare"
    return None


def run(ctx: Context) -> list[Figure]:
    env = setup(ctx.folder("mcp_cycle"))
    cycles = ctx.reps(50, 10)
    missing = langgraph_missing()
    graph = None if missing else LangGraphCycle(env.folder / "langgraph.db")

    async def mcp_cycles(agent: Client, approver: Client, count: int) -> float:
        watch = Stopwatch()
        for _ in range(count):
            filed = await agent.call_tool("buy_stock", BUY)
            assert filed.structured_content is not None, filed.content
            request_id = filed.structured_content["request_id"]
            done = await approver.call_tool("approve", {"request_id": request_id})
            if done.is_error or done.structured_content is None:
                raise RuntimeError(f"approve failed: {done.content}")
            if done.structured_content["status"] != "executed":
                raise RuntimeError(f"request ended {done.structured_content['status']}, not executed")
        return watch.elapsed

    async def measure() -> tuple[list[float], list[float]]:
        # One server process serving two sessions, as over HTTP: the gate is shared.
        async with (
            open_gate(env.settings) as gate,
            Client(build_server(env.settings, principal=AGENT, gate=gate)) as agent,
            Client(build_server(env.settings, principal=APPROVER, gate=gate)) as approver,
        ):
            await mcp_cycles(agent, approver, 20)
            if graph is not None:
                graph.run(20)
            ours: list[float] = []
            theirs: list[float] = []
            for _ in range(ROUNDS):  # alternating rounds: drift on a shared machine hits both alike
                ours.append(await mcp_cycles(agent, approver, cycles))
                if graph is not None:
                    theirs.append(graph.run(cycles))
            return ours, theirs

    try:
        our_times, their_times = anyio.run(measure)
        total = cycles * ROUNDS
        ours, theirs = sum(our_times), sum(their_times)
        our_rate = rate(total, ours)
        measured = f"MCP {our_rate:,.0f} cycles/s ({ours / total * 1000:.2f} ms)"
        if graph is None:
            return [
                Figure(
                    "mcp_cycle_vs_langgraph",
                    None,
                    "≥ 5",
                    None,
                    measured=measured,
                    baseline="LangGraph not installed",
                    notes=[missing or ""],
                )
            ]
        their_rate = rate(total, theirs)
        # The median of the rounds' ratios: a burst of someone else's load spoils one round, not all.
        ratio = median(t / o for o, t in zip(our_times, their_times, strict=True))
        return [
            Figure(
                "mcp_cycle_vs_langgraph",
                round(ratio, 3),
                "≥ 5",
                ratio >= 5,
                measured=measured,
                baseline=f"LangGraph {their_rate:,.0f} cycles/s ({theirs / total * 1000:.2f} ms)",
                notes=[
                    f"{total} cycles each in {ROUNDS} alternating rounds, the ratio is the median round's; "
                    f"LangGraph {_version()}"
                ],
            )
        ]
    finally:
        if graph is not None:
            graph.close()


def _version() -> str:
    from importlib.metadata import version

    return version("langgraph")
