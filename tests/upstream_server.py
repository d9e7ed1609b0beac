"""A real MCP server to stand behind hitl as an upstream, for the gateway's tests.

    python tests/upstream_server.py --counter FILE [--http --port P] [--slow-start S] [--crash-after N] …

Every side effect is one line of JSON appended to the counter file (O_APPEND, flushed and fsynced before
the tool answers), so a test counts exactly how often a tool ran, across concurrent calls, restarts and
crashes: `effects(path)` reads them back. Tools:

- `write_note(path, text)` — one `write_note` line (not annotated: only a rule or fail-closed decides)
- `read_note(path)` — the last text written to `path` (readOnlyHint)
- `delete_note(path)` — one `delete_note` line (destructiveHint)
- `fail(message)` — answers isError with `message`
- `refuse(code, message)` — answers with a JSON-RPC error instead of a result
- `add_tool(name)` — registers a tool `name` at run time and announces tools/list_changed
- `redefine(name, read_only?, description?, add_argument?)` — re-announces tool `name` with other
  annotations (readOnlyHint), description or one more string argument, and announces tools/list_changed;
  recorded as a `redefine` line, so the server started again offers the tool as redefined (a new version)
- `sleep(seconds)` — answers after that long (readOnlyHint)
- `crash()` — the process exits at once, without answering
- `stats()` — structured content `{count, deletes}`: write_note and delete_note lines so far (readOnlyHint)
- `read_request()` — with `--request-ids` only: the JSON-RPC id of the request that called it, as text
  (readOnlyHint): whose session sent it (the SDK numbers its requests; hitl's lane for passed calls names
  them `hitl-pass-N`)

It prints `upstream_server: serving (pid N)` on stderr once it serves, and serves stdio unless `--http`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError
from mcp.shared.message import SessionMessage
from mcp_types import METHOD_NOT_FOUND, ErrorData, JSONRPCError, JSONRPCRequest, ToolAnnotations
from pydantic import BaseModel

SCRIPT = Path(__file__).resolve()
READ_ONLY = ToolAnnotations(read_only_hint=True)
DESTRUCTIVE = ToolAnnotations(read_only_hint=False, destructive_hint=True)
CRASH_STATUS = 3


class Stats(BaseModel):
    count: int
    deletes: int


def command_line(counter: Path, *flags: str) -> list[str]:
    """How to start this server with this Python: `[python, upstream_server.py, --counter FILE, *flags]`."""
    return [sys.executable, str(SCRIPT), "--counter", str(counter), *flags]


def effects(counter: Path) -> list[dict[str, Any]]:
    """Every side effect recorded in `counter` so far, oldest first."""
    if not counter.exists():
        return []
    # Whole lines only: one may be half written while a test reads (the last, without its newline yet).
    *complete, _ = counter.read_text(encoding="utf-8").split("\n")
    return [json.loads(line) for line in complete if line]


def record(counter: Path, effect: dict[str, Any]) -> None:
    # One write(2) of one line on an O_APPEND descriptor: concurrent writers (tasks, processes) never
    # interleave, and fsync makes it count before the tool answers.
    line = (json.dumps({**effect, "pid": os.getpid()}) + "\n").encode()
    fd = os.open(counter, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def build(options: argparse.Namespace) -> MCPServer:
    counter = Path(options.counter)
    app = MCPServer(options.name, instructions="A test upstream: notes on a counter file.")
    writes = 0

    @app.tool()
    async def write_note(path: str, text: str) -> str:
        """Write `text` as the note at `path` (one effect line)."""
        nonlocal writes
        record(counter, {"op": "write_note", "path": path, "text": text})
        writes += 1
        if options.crash_after is not None and writes >= options.crash_after:
            os._exit(CRASH_STATUS)  # after the effect, before the answer: the caller cannot know
        return f"wrote {path}"

    @app.tool(annotations=READ_ONLY)
    async def read_note(path: str) -> str:
        """The note at `path`."""
        text: str | None = None
        for effect in effects(counter):
            if effect.get("path") == path:
                text = effect.get("text") if effect["op"] == "write_note" else None
        if text is None:
            raise ToolError(f"no note at {path}")
        return text

    @app.tool(annotations=DESTRUCTIVE)
    async def delete_note(path: str) -> str:
        """Delete the note at `path` (one effect line)."""
        record(counter, {"op": "delete_note", "path": path})
        return f"deleted {path}"

    @app.tool()
    async def fail(message: str) -> str:
        """Answer with an error whose text is `message`."""
        raise ToolError(message)

    @app.tool()
    async def refuse(code: int, message: str) -> str:
        """Answer with a JSON-RPC error (`code`, `message`) rather than a tool result."""
        raise MCPError(code, message)

    @app.tool()
    async def add_tool(name: str, ctx: Context) -> str:
        """Offer a new tool `name` from now on, and say so to listening clients."""

        async def added() -> str:
            return f"{name} ran"

        app.add_tool(added, name=name, description=f"Added at run time as {name}.")
        await ctx.notify_tools_changed()  # 2026-07-28 clients: their subscriptions/listen stream
        await ctx.session.send_tool_list_changed()  # handshake-era clients: a notification of its own
        return f"added {name}"

    @app.tool()
    async def redefine(
        name: str,
        ctx: Context,
        read_only: bool | None = None,
        description: str | None = None,
        add_argument: str | None = None,
    ) -> str:
        """Re-announce tool `name` with other annotations, description or one more argument."""
        apply_redefinition(app, name, read_only=read_only, description=description, add_argument=add_argument)
        change = {"read_only": read_only, "description": description, "add_argument": add_argument}
        record(counter, {"op": "redefine", "name": name, **change})
        await ctx.notify_tools_changed()
        await ctx.session.send_tool_list_changed()
        return f"redefined {name}"

    @app.tool(annotations=READ_ONLY)
    async def sleep(seconds: float) -> str:
        """Answer after `seconds`."""
        await anyio.sleep(seconds)
        return f"slept {seconds}"

    @app.tool()
    async def crash() -> str:
        """Exit the process at once, without answering."""
        os._exit(CRASH_STATUS)

    if options.request_ids:

        @app.tool(annotations=READ_ONLY)
        async def read_request(ctx: Context) -> str:
            """The JSON-RPC id of this request."""
            return str(ctx.request_id)

    @app.tool(annotations=READ_ONLY)
    async def stats() -> Stats:
        """How many notes were written and deleted, all processes together."""
        ops = [effect["op"] for effect in effects(counter)]
        return Stats(count=ops.count("write_note"), deletes=ops.count("delete_note"))

    for effect in effects(counter):  # a redefinition outlives the process, as a new version would
        if effect["op"] == "redefine":
            apply_redefinition(
                app,
                effect["name"],
                read_only=effect["read_only"],
                description=effect["description"],
                add_argument=effect["add_argument"],
            )
    return app


def apply_redefinition(
    app: MCPServer, name: str, *, read_only: bool | None, description: str | None, add_argument: str | None
) -> None:
    manager = app._tool_manager
    old = manager.get_tool(name)
    if old is None:
        raise ToolError(f"no tool {name}")
    manager.remove_tool(name)
    app.add_tool(
        old.fn,
        name=name,
        description=old.description if description is None else description,
        annotations=old.annotations if read_only is None else ToolAnnotations(read_only_hint=read_only),
    )
    new = manager.get_tool(name)
    assert new is not None
    new.parameters = dict(new.parameters)
    new.parameters["properties"] = {**old.parameters.get("properties", {})}
    if add_argument:
        new.parameters["properties"][add_argument] = {"type": "string"}


async def serve_stdio_legacy(app: MCPServer) -> None:
    """Serve stdio as a server on the older protocol does (the TypeScript SDK's, say): `server/discover` is
    an unknown method, so clients fall back to the initialize handshake."""
    # The SDK decides a connection's era from its first request, so the probe must not reach it at all.
    lowlevel = app._lowlevel_server
    async with stdio_server() as (read_stream, write_stream):
        forward, forwarded = anyio.create_memory_object_stream[SessionMessage | Exception](0)

        async def refuse_discover() -> None:
            async with forward:
                async for item in read_stream:
                    message = item.message if isinstance(item, SessionMessage) else None
                    if isinstance(message, JSONRPCRequest) and message.method == "server/discover":
                        error = ErrorData(code=METHOD_NOT_FOUND, message="Method not found")
                        await write_stream.send(
                            SessionMessage(JSONRPCError(jsonrpc="2.0", id=message.id, error=error))
                        )
                        continue
                    await forward.send(item)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(refuse_discover)
            await lowlevel.run(forwarded, write_stream, lowlevel.create_initialization_options())
            tasks.cancel_scope.cancel()


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--counter", required=True, help="the file every side effect appends a line to")
    parser.add_argument("--name", default="test-upstream", help="the server's name")
    parser.add_argument("--http", action="store_true", help="serve streamable HTTP at http://HOST:PORT/mcp")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument(
        "--slow-start", type=float, default=0.0, metavar="SECONDS", help="wait before serving"
    )
    parser.add_argument(
        "--crash-after", type=int, metavar="N", help="exit right after the Nth write_note's effect"
    )
    parser.add_argument("--exit-at-start", type=int, metavar="STATUS", help="say why on stderr, exit STATUS")
    parser.add_argument("--legacy", action="store_true", help="stdio on the older protocol only (initialize)")
    parser.add_argument("--request-ids", action="store_true", help="also the tool read_request")
    parser.add_argument("--pids", metavar="FILE", help="append this process's pid (and its child's) to FILE")
    parser.add_argument(
        "--child", action="store_true", help="start a child that sleeps, in this process group"
    )
    parser.add_argument(
        "--ignore-stdin-eof", action="store_true", help="keep running after stdin closes (stdio only)"
    )
    parser.add_argument(
        "--ignore-sigterm", action="store_true", help="ignore SIGTERM, so only SIGKILL stops it"
    )
    parser.add_argument("--say", metavar="TEXT", help="write TEXT on stderr before serving")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    options = parse(argv)
    if options.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    pids = [os.getpid()]
    if options.child:
        child = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(3600)"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        pids.append(child.pid)
    if options.pids:
        with open(options.pids, "a", encoding="utf-8") as file:
            file.write("".join(f"{pid}\n" for pid in pids))
    if options.exit_at_start is not None:
        print(
            f"upstream_server: refusing to start (status {options.exit_at_start})",
            file=sys.stderr,
            flush=True,
        )
        sys.exit(options.exit_at_start)
    if options.say is not None:
        print(options.say, file=sys.stderr, flush=True)
    if options.slow_start:
        time.sleep(options.slow_start)
    app = build(options)
    print(f"upstream_server: serving (pid {os.getpid()})", file=sys.stderr, flush=True)
    if options.http:
        app.run(transport="streamable-http", host=options.host, port=options.port)
    elif options.legacy:
        anyio.run(serve_stdio_legacy, app)
    else:
        app.run()
    if options.ignore_stdin_eof:
        while True:
            time.sleep(3600)


if __name__ == "__main__":
    main()
