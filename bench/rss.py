"""`rss_mb_100k`: peak RSS of a `hitl serve` process holding 100,000 pending requests while serving list
pages.

The server is a real `hitl serve` over stdio on the store `list_page_p50_ms_100k` filled (100,000 pending
beside 100,000 finished), with its housekeeping running. An approver walks `list_pending` from the first
page onwards, 50 at a time, for a few seconds; the figure is the process's high-water mark (`VmHWM` in
/proc), read after the walk while the process still runs.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import anyio
from mcp import Client, StdioServerParameters

from bench.common import APPROVER, HITL, Context, Figure
from bench.listing import PAGE, filled_store


def children() -> list[int]:
    """Pids of this process's children, from /proc."""
    me = os.getpid()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid …: comm may hold spaces, so split after its closing parenthesis.
        if int(stat.rsplit(")", 1)[1].split()[1]) == me:
            found.append(int(entry.name))
    return found


def memory_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/{pid}/status has no {field}")


def server_pid() -> int:
    for pid in children():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(part.endswith(b"hitl") for part in cmdline) and b"serve" in cmdline:
            return pid
    raise RuntimeError("no `hitl serve` child process found")


def run(ctx: Context) -> list[Figure]:
    if not Path("/proc/self/status").exists():
        return [Figure("rss_mb_100k", None, "≤ 120", None, notes=["needs /proc to read the peak RSS"])]
    env = filled_store(ctx)
    pages = ctx.reps(2000, 100)
    budget = ctx.reps(8, 2)  # seconds of walking: every page costs the same, the peak comes early
    params = StdioServerParameters(
        command=str(HITL), args=["serve"], env={**env.env, "HITL_PRINCIPAL": APPROVER}, cwd=env.folder
    )

    async def measure() -> tuple[float, float, float, int, float]:
        async with Client(params) as client:
            await client.list_tools()
            pid = server_pid()
            idle = memory_mb(pid, "VmRSS")
            start = time.perf_counter()
            cursor: str | None = None
            walked = 0
            for _ in range(pages):
                arguments: dict[str, object] = {"limit": PAGE}
                if cursor is not None:
                    arguments["cursor"] = cursor
                result = await client.call_tool("list_pending", arguments)
                if result.is_error or result.structured_content is None:
                    raise RuntimeError(f"list_pending failed: {result.content}")
                walked += len(result.structured_content["requests"])
                cursor = result.structured_content["next_cursor"]
                if cursor is None or time.perf_counter() - start > budget:
                    break
            elapsed = time.perf_counter() - start
            return idle, memory_mb(pid, "VmRSS"), memory_mb(pid, "VmHWM"), walked, elapsed

    idle, after, peak, walked, elapsed = anyio.run(measure)
    return [
        Figure(
            key="rss_mb_100k",
            value=round(peak, 1),
            target="≤ 120",
            met=peak <= 120 and not ctx.quick,
            measured=f"peak {peak:.1f} MB",
            baseline=f"idle after start {idle:.1f} MB, after the walk {after:.1f} MB",
            notes=[
                f"`hitl serve` over stdio walked {walked:,} pending requests in pages of {PAGE} "
                f"({elapsed:.1f} s, {elapsed / max(walked // PAGE, 1) * 1000:.1f} ms a page)"
            ],
        )
    ]
