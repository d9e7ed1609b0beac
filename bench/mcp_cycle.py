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
import threading
import time
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
        self.rounds = 0

    @staticmethod
    def _agent(state: GraphState) -> GraphState:
        return {"proposal": {"tool": "buy_stock", "arguments": dict(BUY)}}

    @staticmethod
    def _act(state: GraphState) -> GraphState:
        return {"result": {"ok": True}}

    def cycle(self, thread_id: str) -> None:
        """One file + resume cycle on a fresh LangGraph thread (one per request, as ours are)."""
        config: Any = {"configurable": {"thread_id": thread_id}}
        paused = self.app.invoke({}, config)
        if "result" in paused:
            raise RuntimeError("the graph ran its tool node before being resumed")
        done = self.app.invoke(None, config)
        if done.get("result") != {"ok": True}:
            raise RuntimeError(f"the resumed graph did not run its tool node: {done}")

    def run(self, cycles: int) -> float:
        watch = Stopwatch()
        for _ in range(cycles):
            self.cycle(f"request-{self.cycles}")
            self.cycles += 1
        return watch.elapsed

    def run_threads(
        self, threads: int, warmup: float, seconds: float
    ) -> tuple[int, float, list[float], float]:
        """`threads` Python threads, each running cycles on thread ids of its own for `warmup` seconds and
        then a `seconds` window: the cycles completed inside the window, its length, their latencies, and
        this process's CPU seconds per cycle over the whole run (warm-up included)."""
        self.rounds += 1
        cycles_before, cpu_before = self.cycles, time.process_time()
        start_at = time.perf_counter() + warmup
        stop_at = start_at + seconds
        latencies: list[list[float]] = [[] for _ in range(threads)]
        errors: list[BaseException] = []
        lock = threading.Lock()

        def work(worker: int) -> None:
            n = 0
            try:
                while time.perf_counter() < stop_at:
                    begin = time.perf_counter()
                    self.cycle(f"round-{self.rounds}-worker-{worker}-{n}")
                    n += 1
                    end = time.perf_counter()
                    if start_at <= end <= stop_at:
                        latencies[worker].append(end - begin)
            except BaseException as error:
                errors.append(error)
            finally:
                with lock:
                    self.cycles += n

        workers = [threading.Thread(target=work, args=(k,), daemon=True) for k in range(threads)]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join(timeout=max(0.0, stop_at - time.perf_counter()) + 60)
        if errors:
            raise RuntimeError(f"a LangGraph thread failed: {errors[0]!r}") from errors[0]
        if any(thread.is_alive() for thread in workers):
            raise RuntimeError("a LangGraph thread did not finish within a minute of the window")
        samples = [latency for worker in latencies for latency in worker]
        cpu = (time.process_time() - cpu_before) / max(self.cycles - cycles_before, 1)
        return len(samples), seconds, samples, cpu

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

    commits: list[int] = []

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
            counts = getattr(gate.store, "commit_counts", None)
            before = (counts.commits, counts.transitions) if counts is not None else None
            for _ in range(ROUNDS):  # alternating rounds: drift on a shared machine hits both alike
                ours.append(await mcp_cycles(agent, approver, cycles))
                if graph is not None:
                    theirs.append(graph.run(cycles))
            if counts is not None and before is not None:
                commits.extend((counts.commits - before[0], counts.transitions - before[1]))
            return ours, theirs

    try:
        our_times, their_times = anyio.run(measure)
        total = cycles * ROUNDS
        counted = (
            f"the store committed {commits[0] / total:.2f} times a cycle for {commits[1] / total:.2f} "
            "transitions (SQLiteStore.commit_counts), plus the ledger's own commit of the order"
            if commits
            else "the store does not count its commits"
        )
        ours, theirs = sum(our_times), sum(their_times)
        our_rate = rate(total, ours)
        measured = f"MCP {our_rate:,.0f} cycles/s ({ours / total * 1000:.2f} ms)"
        if graph is None:
            return [
                Figure(
                    "mcp_cycle_vs_langgraph",
                    None,
                    "≥ 2",
                    None,
                    measured=measured,
                    baseline="LangGraph not installed",
                    notes=[missing or "", counted],
                )
            ]
        their_rate = rate(total, theirs)
        # The median of the rounds' ratios: a burst of someone else's load spoils one round, not all.
        ratio = median(t / o for o, t in zip(our_times, their_times, strict=True))
        return [
            Figure(
                "mcp_cycle_vs_langgraph",
                round(ratio, 3),
                "≥ 2",
                ratio >= 2,
                measured=measured,
                baseline=f"LangGraph {their_rate:,.0f} cycles/s ({theirs / total * 1000:.2f} ms)",
                notes=[
                    f"{total} cycles each in {ROUNDS} alternating rounds, the ratio is the median round's; "
                    f"LangGraph {_version()}",
                    counted,
                ],
            )
        ]
    finally:
        if graph is not None:
            graph.close()


def _version() -> str:
    from importlib.metadata import version

    return version("langgraph")
