"""Where one file + approve cycle's time goes: `python -m bench.profile_cycle [--seconds S] [--out DIR]`.

Not part of `make bench`: a report for whoever wants the cycle cheaper. One agent and one approver run
sequential cycles (file `buy_stock`, approve it, which runs the order) two ways:

- in process: the SDK's in-process `Client`, as `mcp_cycle_vs_langgraph` runs it (one gate, two servers);
- over streamable HTTP: the real server (`build_server` with bearer tokens, the SDK's Starlette app,
  uvicorn with its access log) in this process, and the clients in a `bench.http_load` process.

Each is run twice. The timing pass wraps methods in the server's process (bench-only monkeypatching) and
adds up, per cycle, the wall time of each layer as the code nests them — the SDK's handler chain, the
gate's steps, the store's transitions (queue, worker thread, COMMIT), the ledger — and, for what runs in
worker threads, that thread's CPU. The CPU pass runs cProfile (timer: the thread's CPU time) on the event
loop's thread, and, over HTTP, on the client process too, and puts each function's own time in a bucket by
its module: the server's own parts (gate, store, policy, actions, models, MCP face), pydantic, json, the
SDK (server, client, shared dispatch, types), the client's jsonschema check, anyio, uvicorn, httpx2…
Deterministic profiling inflates code made of many small calls: read its shares, not its milliseconds.
On a loaded machine both passes swing by a third from run to run; `python -m bench.instructions` counts a
cycle's instructions instead, which repeat within tenths of a percent, to decide a small change by.
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import functools
import json
import pstats
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread
import mcp.client.client as sdk_client
import mcp.server._streamable_http_modern as sdk_http
from mcp import Client

from bench.common import AGENT, APPROVER, REPO, Setup, setup
from bench.serving import free_port
from hitl_mcp import policy
from hitl_mcp.actions.base import Action
from hitl_mcp.actions.buy_stock import BuyStock
from hitl_mcp.auth import PrincipalTokens
from hitl_mcp.gate import Gate, open_gate
from hitl_mcp.ledger import Ledger
from hitl_mcp.server import build_server
from hitl_mcp.store.sqlite import SQLiteStore
from hitl_mcp.store.sqlite_connection import Connection, GroupCommit, RoutedConnection
from hitl_mcp.tokens import new_token

BUY = {"symbol": "GOOGL", "quantity": 1, "price": 1.0}


class Probe:
    """Wall time (and worker-thread CPU) per label, from wrapped methods; `restore()` unwraps them all."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)
        self.calls: Counter[str] = Counter()
        self._undo: list[tuple[Any, str, Any]] = []
        self._lock = threading.Lock()

    def add(self, label: str, wall: float, cpu: float | None = None) -> None:
        with self._lock:
            self.wall[label] += wall
            self.calls[label] += 1
            if cpu is not None:
                self.cpu[label] += cpu

    def reset(self) -> None:
        with self._lock:
            self.wall.clear()
            self.cpu.clear()
            self.calls.clear()

    def wrap_async(self, owner: Any, name: str, label: str) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return await original(*args, **kwargs)
            finally:
                self.add(label, time.perf_counter() - start)

        self._patch(owner, name, original, wrapper)

    def wrap_sync(self, owner: Any, name: str, label: str) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start, cpu = time.perf_counter(), time.thread_time()
            try:
                return original(*args, **kwargs)
            finally:
                self.add(label, time.perf_counter() - start, time.thread_time() - cpu)

        self._patch(owner, name, original, wrapper)

    def _patch(self, owner: Any, name: str, original: Any, wrapper: Any) -> None:
        setattr(owner, name, wrapper)
        self._undo.append((owner, name, original))

    def restore(self) -> None:
        while self._undo:
            owner, name, original = self._undo.pop()
            setattr(owner, name, original)


def instrument(probe: Probe) -> None:
    """Wrap every layer of a cycle in this process (class attributes, so every instance is seen)."""
    probe.wrap_async(Gate, "file_call", "gate.file_call")
    probe.wrap_sync(Action, "parse", "gate.file_call > action.parse (pydantic)")
    probe.wrap_async(BuyStock, "preview", "gate.file_call > buy_stock.preview")
    probe.wrap_sync(Ledger, "_read_sync", "ledger read in a thread (open ro, 2 SELECTs, close)")
    probe.wrap_sync(policy, "select", "gate.file_call > policy.select")
    probe.wrap_async(SQLiteStore, "insert", "store.insert")
    probe.wrap_async(Gate, "approve", "gate.approve")
    probe.wrap_async(Gate, "decide", "gate.approve > gate.decide")
    probe.wrap_async(SQLiteStore, "decide", "store.decide")
    probe.wrap_async(Gate, "execute", "gate.approve > gate.execute")
    probe.wrap_async(SQLiteStore, "claim", "store.claim")
    probe.wrap_async(BuyStock, "execute", "gate.execute > buy_stock.execute")
    probe.wrap_sync(Ledger, "_buy_sync", "ledger order in a thread (BEGIN IMMEDIATE … COMMIT)")
    probe.wrap_async(SQLiteStore, "finish", "store.finish")
    probe.wrap_async(SQLiteStore, "get", "store.get (read)")
    probe.wrap_async(SQLiteStore, "changed_since", "store.changed_since (read: live feed)")
    probe.wrap_async(SQLiteStore, "approved_unclaimed", "store.approved_unclaimed (read: runner)")
    probe.wrap_async(GroupCommit, "run", "group commit: queue + thread + COMMIT")
    probe.wrap_sync(GroupCommit, "_commit", "group commit: in the writer thread")
    plain_run = Connection.run

    async def run(self: Connection, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        def timed(conn: sqlite3.Connection) -> Any:
            start, cpu = time.perf_counter(), time.thread_time()
            try:
                return fn(conn)
            finally:
                probe.add("reader: in its thread", time.perf_counter() - start, time.thread_time() - cpu)

        start = time.perf_counter()
        try:
            return await plain_run(self, timed)
        finally:
            probe.add("reader connection: queue + thread", time.perf_counter() - start)

    probe._patch(Connection, "run", plain_run, run)
    begun: dict[int, tuple[str, int]] = {}
    plain_execute = sqlite3.Connection.execute

    def execute(self: sqlite3.Connection, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql.startswith("BEGIN"):
            begun[id(self)] = (sql, self.total_changes)
        elif sql == "COMMIT":
            kind, changes = begun.pop(id(self), ("", 0))
            start, cpu = time.perf_counter(), time.thread_time()
            try:
                return plain_execute(self, sql, *args)
            finally:
                label = "COMMIT of a read snapshot"
                if kind == "BEGIN IMMEDIATE":
                    label = (
                        "COMMIT that wrote (fsync)"
                        if self.total_changes != changes
                        else "COMMIT, nothing written"
                    )
                probe.add(label, time.perf_counter() - start, time.thread_time() - cpu)
        return plain_execute(self, sql, *args)

    probe._patch(RoutedConnection, "execute", RoutedConnection.execute, execute)


def timed_handler(probe: Probe, label: str) -> Callable[[Any], Any]:
    """A wrapper for the SDK's per-request handler (`serve_one` and what calls it)."""

    def wrap(handle: Any) -> Any:
        @functools.wraps(handle)
        async def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return await handle(*args, **kwargs)
            finally:
                probe.add(label, time.perf_counter() - start)

        return timed

    return wrap


# -- CPU buckets --------------------------------------------------------------------------------------------

HITL_PARTS = {
    "gate.py": "hitl gate",
    "decisions.py": "hitl gate",
    "policy.py": "hitl policy",
    "expr.py": "hitl policy",
    "ledger.py": "hitl actions + ledger",
    "server.py": "hitl MCP face (server.py, live.py, auth)",
    "live.py": "hitl MCP face (server.py, live.py, auth)",
    "client_log.py": "hitl MCP face (server.py, live.py, auth)",
    "auth.py": "hitl MCP face (server.py, live.py, auth)",
    "models.py": "hitl models",
    "audit.py": "hitl store (Python)",
}
PLACES = (
    ("/bench/", "bench harness"),
    ("/mcp/client/", "SDK client"),
    ("/mcp/server/", "SDK server"),
    ("/mcp/shared/", "SDK shared (dispatch, streams)"),
    ("/mcp_types/", "SDK types"),
    ("/pydantic/", "pydantic"),
    ("/pydantic_core/", "pydantic"),
    ("/jsonschema", "jsonschema (the client's output check)"),
    ("/referencing/", "jsonschema (the client's output check)"),
    ("/json/", "json"),
    ("/uvicorn/", "uvicorn"),
    ("/h11/", "h11 (HTTP parsing)"),
    ("/httptools/", "httptools (HTTP parsing)"),
    ("/starlette/", "starlette"),
    ("/httpx2/", "httpx2 + httpcore2"),
    ("/httpcore2/", "httpx2 + httpcore2"),
    ("/anyio/", "event loop, anyio, threads"),
    ("/asyncio/", "event loop, anyio, threads"),
    ("/opentelemetry/", "OpenTelemetry"),
    ("/logging/", "logging"),
)


def bucket(filename: str, function: str) -> str:
    path = filename.replace("\\", "/")
    if "/hitl_mcp/" in path:
        part = path.split("/hitl_mcp/", 1)[1]
        if part.startswith("store/"):
            return "hitl store (Python)"
        if part.startswith("actions/"):
            return "hitl actions + ledger"
        return HITL_PARTS.get(part, "hitl other")
    for marker, name in PLACES:
        if marker in path:
            return name
    if "pydantic_core" in function:
        return "pydantic"
    if "jsonschema" in function:
        return "jsonschema (the client's output check)"
    if "_json" in function or "json." in function:
        return "json"
    if "sqlite3" in function:
        return "sqlite3 on the loop thread (data_version)"
    if "epoll" in function or "select" in function or "socket" in function:
        return "event loop, anyio, threads"
    return NEUTRAL


NEUTRAL = "other (stdlib, builtins)"


def buckets(stats: pstats.Stats) -> dict[str, float]:
    """Own time per bucket. A builtin or generic stdlib function (dict.get, isinstance, typing's protocol
    checks, dataclass __init__…) has no bucket of its own: its time goes to its callers' buckets, in
    proportion to the time each caller spent in it, up the call graph until one has a bucket."""
    table = stats.stats  # type: ignore[attr-defined]
    found: dict[str, float] = defaultdict(float)

    def give(function: tuple[str, int, str], seconds: float, depth: int) -> None:
        name = bucket(function[0], function[2])
        callers = table.get(function, (0, 0, 0, 0, {}))[4]
        if name != NEUTRAL or depth > 8 or not callers:
            found[name] += seconds
            return
        spent = sum(entry[2] for entry in callers.values()) or 1.0
        for caller, entry in callers.items():
            give(caller, seconds * entry[2] / spent, depth + 1)

    for function, (_, _, own, _, _) in table.items():
        give(function, own, 0)
    return found


# -- the two ways ------------------------------------------------------------------------------------------


async def in_process_cycles(env: Setup, seconds: float, on_window: Callable[[str], None]) -> int:
    """Sequential cycles over the in-process client for `seconds` after a second of warm-up."""
    async with (
        open_gate(env.settings) as gate,
        Client(build_server(env.settings, principal=AGENT, gate=gate)) as agent,
        Client(build_server(env.settings, principal=APPROVER, gate=gate)) as approver,
    ):
        cycles = 0
        start = time.perf_counter()
        warm, end = start + 1.0, start + 1.0 + seconds
        windowed = False
        n = 0
        while time.perf_counter() < end:
            if not windowed and time.perf_counter() >= warm:
                on_window("start")
                windowed = True
            n += 1
            filed = await agent.call_tool("buy_stock", BUY | {"quantity": n})
            assert filed.structured_content is not None, filed.content
            done = await approver.call_tool("approve", {"request_id": filed.structured_content["request_id"]})
            if done.structured_content is None or done.structured_content["status"] != "executed":
                raise RuntimeError(f"approve: {done.content}")
            cycles += windowed
        on_window("stop")
        return cycles


def run_in_process(env: Setup, seconds: float, out: Path) -> dict[str, Any]:
    probe = Probe()
    instrument(probe)
    original = sdk_client.modern_on_request
    sdk_client.modern_on_request = lambda server, state: timed_handler(probe, "SDK handler (serve_one)")(  # type: ignore[assignment]
        original(server, state)
    )
    walls: list[float] = []

    def window(event: str) -> None:
        if event == "start":
            probe.reset()
        walls.append(time.perf_counter())

    try:
        cycles = anyio.run(in_process_cycles, env, seconds, window)
    finally:
        sdk_client.modern_on_request = original
        probe.restore()
    timing = {"cycles": cycles, "wall": walls[1] - walls[0], "probe": probe}
    # The CPU pass: nothing wrapped, cProfile on the one thread that runs client and server.
    profiler = cProfile.Profile(time.thread_time)
    counted: list[int] = []

    def cpu_window(event: str) -> None:
        if event == "start":
            profiler.enable()
        else:
            profiler.disable()

    cpu_env = setup(env.folder / "cpu")
    counted.append(anyio.run(in_process_cycles, cpu_env, seconds, cpu_window))
    profiler.dump_stats(out / "in-process.prof")
    return timing | {"cpu": pstats.Stats(profiler), "cpu_cycles": counted[0]}


def serve_in_process(
    env: Setup,
    probe: Probe | None,
    load_spec: dict[str, Any],
    load_argv: list[str],
    on_window: Callable[[str], None],
    *,
    access_log: bool = True,
    telemetry: bool = True,
) -> dict[str, Any]:
    """The HTTP server in this process (the event loop on this thread), one load process driving it.

    `access_log=False` and `telemetry=False` serve without uvicorn's access log and without the SDK's
    OpenTelemetry middleware, to see what each costs."""
    import uvicorn

    tokens = PrincipalTokens.from_settings(env.settings)
    app = build_server(env.settings, tokens=tokens)
    if not telemetry:
        lowlevel = app._lowlevel_server
        lowlevel.middleware[:] = [
            m for m in lowlevel.middleware if type(m).__name__ != "OpenTelemetryMiddleware"
        ]
    starlette = app.streamable_http_app(host="127.0.0.1")

    async def asgi(scope: Any, receive: Any, send: Any) -> None:
        start = time.perf_counter()
        try:
            await starlette(scope, receive, send)
        finally:
            if probe is not None and scope["type"] == "http":
                probe.add("ASGI app (starlette, auth, SDK transport, handler)", time.perf_counter() - start)

    port = free_port()
    log_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    log_config["handlers"]["access"] = {
        "class": "logging.FileHandler",
        "filename": str(env.folder / "access.log"),
        "formatter": "access",
    }
    log_config["handlers"]["default"] = {
        "class": "logging.FileHandler",
        "filename": str(env.folder / "server.log"),
        "formatter": "default",
    }
    config = uvicorn.Config(asgi, host="127.0.0.1", port=port, log_config=log_config, access_log=access_log)
    server = uvicorn.Server(config)
    result: dict[str, Any] = {}

    def drive() -> None:
        spec = load_spec | {"url": f"http://127.0.0.1:{port}/mcp"}
        with (env.folder / "load.log").open("wb") as log:
            load = subprocess.Popen(
                load_argv, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True
            )
            assert load.stdin is not None and load.stdout is not None
            load.stdin.write(json.dumps(spec) + "\n")
            load.stdin.close()
            for line in load.stdout:
                event = json.loads(line)
                if event["event"] in ("start", "stop"):
                    # On the event loop's thread: cProfile profiles the thread that enables it.
                    anyio.from_thread.run_sync(on_window, event["event"])
                elif event["event"] in ("end", "failed"):
                    result.update(event)
            load.wait(timeout=60)

    async def main() -> None:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(server.serve)
            while not server.started:  # noqa: ASYNC110 - uvicorn offers no event to wait on
                await anyio.sleep(0.01)
            await anyio.to_thread.run_sync(drive)
            server.should_exit = True

    anyio.run(main)
    if result.get("event") != "end":
        raise RuntimeError(f"the load failed: {result}")
    return result


def run_http(env: Setup, tokens: dict[str, str], seconds: float, client: str, out: Path) -> dict[str, Any]:
    spec = {
        "name": f"http {client}",
        "kind": "cycle",
        "client": client,
        "token": tokens[AGENT],
        "approver_token": tokens[APPROVER],
        "tool": "buy_stock",
        "arguments": BUY,
        "sessions": 1,
        "warmup": 1.0,
        "seconds": seconds,
    }
    probe = Probe()
    instrument(probe)
    original_serve_one = sdk_http.serve_one
    sdk_http.serve_one = timed_handler(probe, "SDK handler (serve_one)")(original_serve_one)  # type: ignore[assignment]
    walls: list[float] = []

    def window(event: str) -> None:
        if event == "start":
            probe.reset()
        walls.append(time.perf_counter())

    try:
        load = serve_in_process(env, probe, spec, [sys.executable, "-m", "bench.http_load"], window)
    finally:
        sdk_http.serve_one = original_serve_one  # type: ignore[assignment]
        probe.restore()
    timing = {"cycles": load["completed"], "wall": walls[1] - walls[0], "probe": probe, "load": load}
    # The CPU pass: cProfile on the server's loop thread, and on the client process (its whole run).
    cpu_env = setup(env.folder / f"cpu-{client}", tokens=tokens)
    profiler = cProfile.Profile(time.thread_time)

    def cpu_window(event: str) -> None:
        if event == "start":
            profiler.enable()
        else:
            profiler.disable()

    client_prof = out / f"http-{client}-client.prof"
    argv = [sys.executable, "-m", "bench.http_load"]
    cpu_load = serve_in_process(cpu_env, None, spec | {"profile": str(client_prof)}, argv, cpu_window)
    profiler.dump_stats(out / f"http-{client}-server.prof")
    return timing | {
        "cpu": pstats.Stats(profiler),
        "cpu_cycles": cpu_load["completed"],
        "client_cpu": pstats.Stats(str(client_prof)),
    }


async def _idle(*args: Any, **kwargs: Any) -> None:
    await anyio.sleep_forever()


@contextmanager
def without_followers() -> Iterator[None]:
    """Bench-only: the live feed and the runner of approved requests never start (each reads the store
    after every commit); approvals still run in the approving call."""
    from hitl_mcp.live import ChangeFeed

    saved = ChangeFeed.run, Gate.run_approved_forever
    ChangeFeed.run, Gate.run_approved_forever = _idle, _idle  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        ChangeFeed.run, Gate.run_approved_forever = saved  # type: ignore[method-assign]


def ablations(root: Path, tokens: dict[str, str], seconds: float, rounds: int) -> list[str]:
    """Sequential HTTP cycles (raw client) with parts of the serving stack left out, interleaved rounds:
    the server process's CPU (all its threads) and the wall time per cycle, the median round's."""
    spec = {
        "name": "ablation",
        "kind": "cycle",
        "client": "raw",
        "token": tokens[AGENT],
        "approver_token": tokens[APPROVER],
        "tool": "buy_stock",
        "arguments": BUY,
        "sessions": 1,
        "warmup": 1.0,
        "seconds": seconds,
    }
    variants: list[tuple[str, dict[str, bool], bool]] = [
        ("as served", {}, False),
        ("without uvicorn's access log", {"access_log": False}, False),
        ("without the SDK's OpenTelemetry middleware", {"telemetry": False}, False),
        ("without the live feed and the runner (their reads after each commit)", {}, True),
        ("without all three", {"access_log": False, "telemetry": False}, True),
    ]
    lines = [
        f"## what parts of the HTTP server cost: sequential cycles (raw client), {rounds} interleaved rounds",
        "",
        f"{'variant':72} {'server CPU ms':>13} {'wall ms':>8}  (per cycle, median round)",
    ]
    found: dict[str, list[tuple[float, float]]] = defaultdict(list)
    argv = [sys.executable, "-m", "bench.http_load"]
    for round_ in range(rounds):
        for n, (name, knobs, quiet) in enumerate(variants):
            env = setup(root / f"ablation-{round_}-{n}", tokens=tokens)
            marks: dict[str, tuple[float, float]] = {}

            def window(event: str, marks: dict[str, tuple[float, float]] = marks) -> None:
                marks[event] = (time.process_time(), time.perf_counter())

            with without_followers() if quiet else _nothing():
                load = serve_in_process(env, None, spec, argv, window, **knobs)
            cycles = max(int(load["completed"]), 1)
            cpu = (marks["stop"][0] - marks["start"][0]) / cycles * 1e3
            wall = (marks["stop"][1] - marks["start"][1]) / cycles * 1e3
            found[name].append((cpu, wall))
    for name, _, _ in variants:
        cpu = statistics.median(c for c, _ in found[name])
        wall = statistics.median(w for _, w in found[name])
        lines.append(f"{name:72} {cpu:13.2f} {wall:8.2f}")
    return [*lines, ""]


@contextmanager
def _nothing() -> Iterator[None]:
    yield


# -- the report ---------------------------------------------------------------------------------------------

ORDER = [
    "ASGI app (starlette, auth, SDK transport, handler)",
    "SDK handler (serve_one)",
    "gate.file_call",
    "gate.file_call > action.parse (pydantic)",
    "gate.file_call > buy_stock.preview",
    "ledger read in a thread (open ro, 2 SELECTs, close)",
    "gate.file_call > policy.select",
    "store.insert",
    "gate.approve",
    "gate.approve > gate.decide",
    "store.decide",
    "gate.approve > gate.execute",
    "store.claim",
    "gate.execute > buy_stock.execute",
    "ledger order in a thread (BEGIN IMMEDIATE … COMMIT)",
    "store.finish",
    "store.get (read)",
    "store.changed_since (read: live feed)",
    "store.approved_unclaimed (read: runner)",
    "group commit: queue + thread + COMMIT",
    "group commit: in the writer thread",
    "COMMIT that wrote (fsync)",
    "COMMIT, nothing written",
    "reader connection: queue + thread",
    "reader: in its thread",
    "COMMIT of a read snapshot",
]


def report_timing(title: str, timing: dict[str, Any]) -> list[str]:
    probe: Probe = timing["probe"]
    cycles = max(int(timing["cycles"]), 1)
    per = timing["wall"] / cycles * 1000
    lines = [f"## {title}: {cycles} cycles in {timing['wall']:.1f} s, {per:.2f} ms a cycle (wall)", ""]
    load = timing.get("load")
    if load:
        lat = load["latency"]
        lines.append(
            f"client-side: file p50 {lat['file']['p50'] * 1e3:.2f} ms, approve p50 "
            f"{lat['approve']['p50'] * 1e3:.2f} ms; load process CPU "
            f"{load['client_cpu'] / cycles * 1e3:.2f} ms a cycle"
        )
        lines.append("")
    lines.append(f"{'layer (inclusive, per cycle)':58} {'calls':>6} {'wall ms':>8} {'thread CPU':>10}")
    for label in [*ORDER, *sorted(set(probe.wall) - set(ORDER))]:
        if label not in probe.wall:
            continue
        cpu = f"{probe.cpu[label] / cycles * 1e3:10.3f}" if label in probe.cpu else " " * 10
        lines.append(
            f"{label:58} {probe.calls[label] / cycles:6.2f} {probe.wall[label] / cycles * 1e3:8.3f} {cpu}"
        )
    return [*lines, ""]


def report_cpu(title: str, stats: pstats.Stats, cycles: int) -> list[str]:
    found = buckets(stats)
    total = sum(found.values())
    cycles = max(cycles, 1)
    lines = [
        f"### CPU by module, {title}: {total / cycles * 1e3:.2f} ms a cycle on the loop thread (cProfile)",
        "",
    ]
    for name, seconds in sorted(found.items(), key=lambda item: -item[1]):
        lines.append(f"{name:48} {seconds / cycles * 1e3:7.3f} ms  {seconds / total * 100:5.1f} %")
    return [*lines, ""]


def top_functions(stats: pstats.Stats, cycles: int, count: int = 25) -> list[str]:
    rows = sorted(stats.stats.items(), key=lambda item: -item[1][2])[:count]  # type: ignore[attr-defined]
    lines = ["top functions by own time:"]
    for (filename, line, function), (_, calls, own, _, _) in rows:
        where = filename.split("site-packages/")[-1].split("/src/")[-1]
        lines.append(
            f"  {own / max(cycles, 1) * 1e3:7.3f} ms {calls / max(cycles, 1):7.1f}× {where}:{line} {function}"
        )
    return [*lines, ""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_cycle", description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per pass (default 5)")
    parser.add_argument("--out", type=Path, help="keep the .prof files here")
    parser.add_argument("--top", type=int, default=0, help="also list the N functions with most own time")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the ablation runs (default 3)")
    parser.add_argument("--only-ablations", action="store_true", help="skip the timing and CPU passes")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="hitl-profile-"))
    out = args.out or root
    out.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    tokens = {AGENT: new_token(), APPROVER: new_token()}
    try:
        if args.only_ablations:
            lines += ablations(root, tokens, args.seconds, args.rounds)
            return 0
        env = setup(root / "in-process")
        inproc = run_in_process(env, args.seconds, out)
        lines += report_timing("in process", inproc)
        lines += report_cpu(
            "in process (client and server on one thread)", inproc["cpu"], inproc["cpu_cycles"]
        )
        if args.top:
            lines += top_functions(inproc["cpu"], inproc["cpu_cycles"], args.top)
        for client in ("raw", "sdk"):
            http_env = setup(root / f"http-{client}", tokens=tokens)
            result = run_http(http_env, tokens, args.seconds, client, out)
            lines += report_timing(f"streamable HTTP, {client} client", result)
            lines += report_cpu(f"HTTP server, {client} client", result["cpu"], result["cpu_cycles"])
            lines += report_cpu(f"HTTP client process ({client})", result["client_cpu"], result["cpu_cycles"])
            if args.top:
                lines += top_functions(result["cpu"], result["cpu_cycles"], args.top)
        lines += ablations(root, tokens, args.seconds, args.rounds)
    finally:
        shutil.rmtree(root, ignore_errors=True)  # the .prof files, when kept, are in --out
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
