"""What a file + approve cycle costs in CPU instructions, part by part: `python -m bench.instructions`.

Not part of `make bench`: on a shared 2-core machine the wall and CPU times of `bench.profile_cycle` swing
by a third with other people's load, and a change worth a tenth of a cycle drowns in that. Instructions
do not: each variant runs sequential in-process cycles (the `mcp_cycle_vs_langgraph` setup) under
valgrind's callgrind, which counts only while the measured loop runs (switched on by `callgrind_control`),
once with 20 cycles and once with 60; the difference over 40 is one cycle's instructions in every thread
of the process — client and server, the event loop, the store's threads, SQLite — and repeats to within a
few tenths of a percent at any load. Ablations (the answer's client-side check left out, the gate's work
replaced by a canned answer, no log records) say what each part costs; two no-op servers give the SDK's
own floor. Needs valgrind; takes about a minute a variant on this machine (two run at a time).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
from pydantic import BaseModel

from bench.common import AGENT, APPROVER, REPO, setup

BUY = {"symbol": "GOOGL", "quantity": 1, "price": 1.0}
SMALL, LARGE = 20, 60
VARIANTS = {
    "cycle": "file + approve, as served",
    "cycle-unchecked": "… the client not checking answers against their output schemas",
    "cycle-unlogged": "… without hitl's log records (root logger at warning)",
    "canned": "… the gate answering canned results (the MCP face, the SDK, the client)",
    "canned-unchecked": "… both: hitl's MCP face and the SDK on both ends",
    "noop": "two calls of a no-op MCPServer tool returning a small model (no client check)",
    "noop-lowlevel": "two calls of a no-op tool on the SDK's low-level Server (no client check)",
}


class Filed(BaseModel):
    """The no-op tool's answer: a small model, so the SDK checks and serialises structured content."""

    request_id: str
    status: str


def count_from_here() -> None:
    """Switch callgrind's counting on for this process (when run under it)."""
    if os.environ.get("HITL_BENCH_CALLGRIND"):
        subprocess.run(["callgrind_control", "-i", "on", str(os.getpid())], check=True, capture_output=True)


def unchecked() -> None:
    import mcp.client.session as client_session

    async def no_check(self: Any, name: str, result: Any) -> None:
        return None

    client_session.ClientSession.validate_tool_result = no_check  # type: ignore[method-assign]


async def cycles(variant: str, count: int) -> None:
    from mcp import Client

    from hitl_mcp.gate import Gate, open_gate
    from hitl_mcp.server import build_server

    env = setup(Path(tempfile.mkdtemp(prefix="hitl-instructions-")))
    try:
        async with (
            open_gate(env.settings) as gate,
            Client(build_server(env.settings, principal=AGENT, gate=gate)) as agent,
            Client(build_server(env.settings, principal=APPROVER, gate=gate)) as approver,
        ):

            async def cycle() -> None:
                filed = await agent.call_tool("buy_stock", BUY)
                assert filed.structured_content is not None, filed.content
                request_id = filed.structured_content["request_id"]
                done = await approver.call_tool("approve", {"request_id": request_id})
                assert done.structured_content is not None and done.structured_content["status"] == "executed"

            for _ in range(3):
                await cycle()
            if variant.startswith("canned"):
                filing = await gate.file_call("buy_stock", BUY, AGENT)
                approved = await gate.approve(filing.request.request_id, APPROVER, None, None)

                async def file_call(*args: Any, **kwargs: Any) -> Any:
                    return filing

                async def approve(*args: Any, **kwargs: Any) -> Any:
                    return approved

                Gate.file_call, Gate.approve = file_call, approve  # type: ignore[method-assign]
            count_from_here()
            for _ in range(count):
                await cycle()
    finally:
        shutil.rmtree(env.folder, ignore_errors=True)


async def noops(variant: str, count: int) -> None:
    from mcp import Client
    from mcp.server.lowlevel.server import Server
    from mcp.server.mcpserver import MCPServer
    from mcp_types import CallToolResult, ListToolsResult, TextContent, Tool

    server: Any
    if variant == "noop":
        server = MCPServer("noop")

        async def noop(x: int) -> Filed:
            return Filed(request_id="r", status="pending")

        server.add_tool(noop)

    else:

        async def call_tool(ctx: Any, params: Any) -> CallToolResult:
            text = '{"request_id":"r","status":"pending"}'
            return CallToolResult(
                content=[TextContent(type="text", text=text)],
                structured_content={"request_id": "r", "status": "pending"},
            )

        async def list_tools(ctx: Any, params: Any) -> ListToolsResult:
            return ListToolsResult(tools=[Tool(name="noop", input_schema={"type": "object"})])

        server = Server("noop", on_call_tool=call_tool, on_list_tools=list_tools)
    async with Client(server) as client:
        for _ in range(5):
            await client.call_tool("noop", {"x": 1})
        count_from_here()
        for _ in range(2 * count):
            await client.call_tool("noop", {"x": 1})


def work(variant: str, count: int) -> None:
    """The measured process: `count` cycles of `variant`."""
    if "unchecked" in variant or variant.startswith("noop"):
        unchecked()
    if variant == "cycle-unlogged":
        logging.getLogger().addHandler(logging.NullHandler())
        logging.getLogger().setLevel(logging.WARNING)
    anyio.run(noops if variant.startswith("noop") else cycles, variant, count)


def instructions(variant: str, count: int, out: Path) -> int:
    """The instructions callgrind counted in `count` cycles of `variant`, in a process of its own."""
    dump = out / f"callgrind.{variant}.{count}"
    argv = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={dump}",
        sys.executable,
        "-m",
        "bench.instructions",
        "--worker",
        variant,
        str(count),
    ]
    # A fixed hash seed: dict and set layouts, and so the work, are the same from run to run.
    env = os.environ | {"HITL_BENCH_CALLGRIND": "1", "PYTHONHASHSEED": "0"}
    run = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    if run.returncode != 0:
        raise RuntimeError(f"{variant}: the measured process failed: {run.stderr[-800:]}")
    for line in run.stderr.splitlines():
        if "Collected :" in line:
            return int(line.rsplit(":", 1)[1].strip())
    raise RuntimeError(f"{variant}: callgrind counted nothing (exit {run.returncode}): {run.stderr[-800:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__)
    parser.add_argument("--worker", nargs=2, metavar=("VARIANT", "CYCLES"), help=argparse.SUPPRESS)
    parser.add_argument("--only", nargs="+", choices=sorted(VARIANTS), help="run only these variants")
    parser.add_argument("--jobs", type=int, default=2, help="valgrind processes at a time (default 2)")
    args = parser.parse_args(argv)
    if args.worker:
        work(args.worker[0], int(args.worker[1]))
        return 0
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("valgrind (with callgrind_control) is needed: apt-get install valgrind", file=sys.stderr)
        return 2
    chosen = args.only or list(VARIANTS)
    out = Path(tempfile.mkdtemp(prefix="hitl-callgrind-"))
    try:
        with ThreadPoolExecutor(args.jobs) as pool:
            runs = {(v, n): pool.submit(instructions, v, n, out) for v in chosen for n in (SMALL, LARGE)}
            counted = {key: future.result() for key, future in runs.items()}
    finally:
        shutil.rmtree(out, ignore_errors=True)
    print(f"{'variant':18} {'M instructions a cycle':>22}  what")
    for variant in chosen:
        per = (counted[variant, LARGE] - counted[variant, SMALL]) / (LARGE - SMALL) / 1e6
        print(f"{variant:18} {per:22.2f}  {VARIANTS[variant]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
