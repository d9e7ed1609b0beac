"""Load for the HTTP figures, in a process of its own so that the clients' CPU is not the server's.

`python -m bench.http_load` reads phases from stdin, one JSON object a line, and runs each in turn in one
asyncio loop; between phases it waits, its sessions open and idle, for the next line, and it closes them
all and exits at the end of its input. A phase:

    {"name": …, "kind": "call" | "cycle", "client": "sdk" | "raw", "url": …, "token": … | null,
     "approver_token": … | null, "tool": …, "arguments": {…}, "sessions": 32, "warmup": s, "seconds": s}

- `call`: each session calls `tool` with `arguments` (its `quantity`, when it has one, varied call by call
  so that no two calls repeat each other) as fast as it gets answers.
- `cycle`: sessions come in pairs, an agent (`token`) and an approver (`approver_token`); the agent files
  `tool`, the approver approves the request, which runs it; the pair checks it ended `executed`.

`sdk` clients are the SDK's `Client` over `streamable_http_client`, one `httpx2.AsyncClient` (so one
connection) per session, the bearer token in its headers; `raw` clients post the same JSON-RPC requests
(the 2026-07-28 envelope and headers the SDK sends) with httpx2 and read the JSON answer without any
schema check. Every phase warms up for `warmup` seconds, then measures for `seconds`: it prints
`{"event": "start"}` and `{"event": "stop"}` as the window opens and closes (the caller reads the server's
counters then), and, once the calls in flight have finished, `{"event": "end", …}` with the count of calls
(or cycles) that completed inside the window, their latencies, the errors, and this process's CPU time
inside the window.
"""

from __future__ import annotations

import cProfile
import itertools
import json
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

PROTOCOL = "2026-07-28"
CALL_TIMEOUT = 30.0
META = {
    "io.modelcontextprotocol/protocolVersion": PROTOCOL,
    "io.modelcontextprotocol/clientInfo": {"name": "hitl-bench", "version": "0"},
    "io.modelcontextprotocol/clientCapabilities": {},
}


class CallFailed(Exception):
    pass


def _headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _timeout() -> httpx2.Timeout:
    return httpx2.Timeout(CALL_TIMEOUT, read=CALL_TIMEOUT)


class SdkSession:
    """The SDK's client over streamable HTTP: what an agent written with the Python SDK runs."""

    def __init__(self, client: Client) -> None:
        self.client = client

    @classmethod
    async def open(cls, stack: AsyncExitStack, url: str, token: str | None) -> SdkSession:
        http = await stack.enter_async_context(
            httpx2.AsyncClient(headers=_headers(token), timeout=_timeout())
        )
        client = await stack.enter_async_context(Client(streamable_http_client(url, http_client=http)))
        return cls(client)

    async def call(self, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        result = await self.client.call_tool(tool, arguments)
        if result.is_error or result.structured_content is None:
            raise CallFailed(f"{tool}: {result.content}")
        return result.structured_content


class RawSession:
    """The same JSON-RPC requests posted with httpx2, the answers read as JSON and nothing more."""

    def __init__(self, http: httpx2.AsyncClient, url: str) -> None:
        self.http = http
        self.url = url
        self.ids = itertools.count(1)

    @classmethod
    async def open(cls, stack: AsyncExitStack, url: str, token: str | None) -> RawSession:
        headers = {"Accept": "application/json, text/event-stream", "Mcp-Protocol-Version": PROTOCOL}
        http = await stack.enter_async_context(
            httpx2.AsyncClient(headers=headers | _headers(token), timeout=_timeout())
        )
        return cls(http, url)

    async def call(self, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        body = {
            "jsonrpc": "2.0",
            "id": next(self.ids),
            "method": "tools/call",
            "params": {"name": tool, "arguments": arguments, "_meta": META},
        }
        response = await self.http.post(
            self.url,
            content=json.dumps(body, separators=(",", ":")).encode(),
            headers={"Content-Type": "application/json", "Mcp-Method": "tools/call", "Mcp-Name": tool},
        )
        if response.status_code != 200 or not response.headers.get("content-type", "").startswith(
            "application/json"
        ):
            raise CallFailed(f"{tool}: HTTP {response.status_code} {response.text[:300]}")
        answer = response.json()
        result = answer.get("result")
        if result is None or result.get("isError") or result.get("structuredContent") is None:
            raise CallFailed(f"{tool}: {str(answer)[:300]}")
        return dict(result["structuredContent"])


Session = SdkSession | RawSession


@dataclass
class Stats:
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: int = 0
    first_error: str | None = None

    def add(self, parts: dict[str, float]) -> None:
        for name, seconds in parts.items():
            self.latencies.setdefault(name, []).append(seconds)

    def error(self, error: BaseException) -> None:
        self.errors += 1
        if self.first_error is None:
            self.first_error = f"{type(error).__name__}: {error}"[:500]


def percentile(ordered: list[float], q: float) -> float:
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    if not ordered:
        return {}
    return {
        "count": len(ordered),
        "p50": percentile(ordered, 50),
        "p90": percentile(ordered, 90),
        "p99": percentile(ordered, 99),
        "max": ordered[-1],
        "mean": sum(ordered) / len(ordered),
    }


def emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


class Load:
    def __init__(self, stack: AsyncExitStack) -> None:
        self.stack = stack
        self.pools: dict[tuple[str, str, str | None], list[Session]] = {}
        self.counter = itertools.count()

    async def sessions(self, client: str, url: str, token: str | None, count: int) -> list[Session]:
        pool = self.pools.setdefault((client, url, token), [])
        opener = SdkSession.open if client == "sdk" else RawSession.open
        while len(pool) < count:
            # No timeout scope around it: a session's task group must be left in the scope it was entered
            # in. A server that does not answer fails the first call instead (and the caller's timeout).
            pool.append(await opener(self.stack, url, token))
        return pool[:count]

    def arguments(self, template: dict[str, Any]) -> dict[str, Any]:
        arguments = dict(template)
        if "quantity" in arguments:
            arguments["quantity"] = 1 + next(self.counter) % 1000
        return arguments

    async def run(self, phase: dict[str, Any]) -> None:
        count, client, url = int(phase["sessions"]), phase["client"], phase["url"]
        tool, template = phase["tool"], phase.get("arguments", {})
        steps: list[Callable[[], Awaitable[dict[str, float]]]] = []
        if phase["kind"] == "call":
            for session in await self.sessions(client, url, phase.get("token"), count):

                async def call(session: Session = session) -> dict[str, float]:
                    start = time.perf_counter()
                    await session.call(tool, self.arguments(template))
                    return {"call": time.perf_counter() - start}

                steps.append(call)
        else:
            agents = await self.sessions(client, url, phase.get("token"), count)
            approvers = await self.sessions(client, url, phase.get("approver_token"), count)
            for agent, approver in zip(agents, approvers, strict=True):

                async def cycle(agent: Session = agent, approver: Session = approver) -> dict[str, float]:
                    start = time.perf_counter()
                    filed = await agent.call(tool, self.arguments(template))
                    middle = time.perf_counter()
                    done = await approver.call("approve", {"request_id": filed["request_id"]})
                    end = time.perf_counter()
                    if done.get("status") != "executed":
                        raise CallFailed(f"request {filed['request_id']} ended {done.get('status')}")
                    return {"call": end - start, "file": middle - start, "approve": end - middle}

                steps.append(cycle)
        stats = Stats()
        begin = time.perf_counter()
        start_at = begin + float(phase["warmup"])
        stop_at = start_at + float(phase["seconds"])
        cpu: dict[str, float] = {}

        profiler = cProfile.Profile(time.thread_time) if phase.get("profile") else None

        async def mark(at: float, event: str) -> None:
            await anyio.sleep(max(0.0, at - time.perf_counter()))
            cpu[event] = time.process_time()
            if profiler is not None:
                profiler.enable() if event == "start" else profiler.disable()
            emit({"event": event, "phase": phase["name"]})

        async def drive(step: Callable[[], Awaitable[dict[str, float]]]) -> None:
            while time.perf_counter() < stop_at:
                try:
                    with anyio.fail_after(CALL_TIMEOUT):
                        parts = await step()
                except Exception as error:
                    stats.error(error)
                    await anyio.sleep(0.01)
                    continue
                if start_at <= time.perf_counter() <= stop_at:
                    stats.add(parts)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(mark, start_at, "start")
            tasks.start_soon(mark, stop_at, "stop")
            for step in steps:
                tasks.start_soon(drive, step)
        if profiler is not None:
            profiler.dump_stats(phase["profile"])
        emit(
            {
                "event": "end",
                "phase": phase["name"],
                "seconds": stop_at - start_at,
                "latency": {name: summary(samples) for name, samples in stats.latencies.items()},
                "completed": len(stats.latencies.get("call", [])),
                "samples": [round(seconds, 6) for seconds in stats.latencies.get("call", [])],
                "errors": stats.errors,
                "first_error": stats.first_error,
                "client_cpu": cpu["stop"] - cpu["start"],
            }
        )


async def main() -> None:
    async with AsyncExitStack() as stack:
        load = Load(stack)
        while line := await anyio.to_thread.run_sync(sys.stdin.readline):
            if not line.strip():
                continue
            phase = json.loads(line)
            try:
                await load.run(phase)
            except Exception as error:
                traceback.print_exc()
                emit(
                    {
                        "event": "failed",
                        "phase": phase.get("name"),
                        "error": f"{type(error).__name__}: {error}",
                    }
                )
        # The sessions close here, in the task that opened them; the caller kills a process that hangs.


if __name__ == "__main__":
    anyio.run(main)
