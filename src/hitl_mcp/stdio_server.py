"""`hitl serve` over stdio: the process's stdin and stdout as an MCP transport, on the event loop's own pipes.

Ours rather than the SDK's `stdio_server`, which reads each line and writes each answer through a worker
thread (`anyio.wrap_file`): three thread hand-offs a call, most of what a passed gateway call costs beyond
the upstream's own time. And it lets a `Lane` take a line before the SDK parses it — the gateway's passed
calls (`hitl_mcp.gateway.fast_pass`), answered with the upstream's answer as it came.

As the SDK's does, it claims fd 0 and 1 while serving: the wire moves to private duplicates, fd 0 reads the
null device and fd 1 writes to stderr, so a stray print or a child that inherits them never corrupts the
protocol; both are restored on exit. Stdin or stdout that is a regular file (`hitl serve < requests.jsonl`)
or `/dev/null` has no pipe to wait on; `can_serve` says so, and the SDK's transport serves it instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager

import anyio
import anyio.abc
import mcp_types as types
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.shared.message import SessionMessage

from hitl_mcp.sdk_seams import ReadStream, WriteStream

logger = logging.getLogger(__name__)

MAX_LINE_BYTES = 32 * 1024 * 1024
"""A JSON-RPC line longer than this ends the session rather than growing hitl's memory without bound."""

Lane = Callable[[bytes], Awaitable[bytes | None] | None]
"""Offered every line first: None leaves it to the SDK; an awaitable takes it, and what it returns (a whole
JSON-RPC line, or None for no answer) is written back."""


def can_serve() -> bool:
    """Whether stdin and stdout are each a pipe, a socket or a terminal: what the event loop can wait on.
    Not a regular file, nor another device (`/dev/null`, which uvloop's pipes abort on)."""
    if sys.platform == "win32":
        return False  # no pipes on the Windows event loop for a console's handles: the SDK's transport
    try:
        return all(_waitable(fd) for fd in (0, 1))
    except OSError:
        return False


def _waitable(fd: int) -> bool:
    mode = os.fstat(fd).st_mode
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or os.isatty(fd)


@asynccontextmanager
async def stdio_streams(
    lane: Lane | None = None,
) -> AsyncIterator[tuple[ReadStream[SessionMessage | Exception], WriteStream[SessionMessage]]]:
    """The SDK's read and write streams over this process's stdin and stdout, until the block exits."""
    loop = asyncio.get_running_loop()
    with _claimed(0) as stdin_fd, _claimed(1) as stdout_fd:
        reader = asyncio.StreamReader(limit=MAX_LINE_BYTES, loop=loop)
        read_transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader, loop=loop), os.fdopen(stdin_fd, "rb", closefd=False)
        )
        write_transport, protocol = await loop.connect_write_pipe(
            lambda: _Drained(loop), os.fdopen(stdout_fd, "wb", closefd=False)
        )
        to_sdk, from_stdin = anyio.create_memory_object_stream[SessionMessage | Exception](0)
        to_stdout, from_sdk = anyio.create_memory_object_stream[SessionMessage](0)
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(_read, reader, to_sdk, lane, write_transport, tasks)
                tasks.start_soon(_write, from_sdk, write_transport, protocol)
                try:
                    yield from_stdin, to_stdout
                finally:
                    tasks.cancel_scope.cancel()
        finally:
            read_transport.close()
            write_transport.close()


async def _read(
    reader: asyncio.StreamReader,
    to_sdk: MemoryObjectSendStream[SessionMessage | Exception],
    lane: Lane | None,
    out: asyncio.WriteTransport,
    tasks: anyio.abc.TaskGroup,
) -> None:
    async with to_sdk:
        while True:
            try:
                line = await reader.readuntil(b"\n")
            except asyncio.IncompleteReadError as end:
                line = end.partial  # the last line may lack its newline
                if not line.strip():
                    return
            except asyncio.LimitOverrunError:
                logger.error("a line on stdin is longer than %d MiB; the session ends", MAX_LINE_BYTES >> 20)
                return
            taken = lane(line) if lane is not None else None
            if taken is not None:
                tasks.start_soon(_answer, taken, out)
                continue
            # As the SDK's transport reads it: text with bad bytes replaced, one message a line.
            try:
                message = types.jsonrpc_message_adapter.validate_json(
                    line.decode("utf-8", "replace"), by_name=False
                )
            except Exception as error:
                await to_sdk.send(error)
                continue
            await to_sdk.send(SessionMessage(message))


async def _answer(taken: Awaitable[bytes | None], out: asyncio.WriteTransport) -> None:
    line = await taken
    if line is not None and not out.is_closing():
        out.write(line)


async def _write(
    from_sdk: MemoryObjectReceiveStream[SessionMessage], out: asyncio.WriteTransport, protocol: _Drained
) -> None:
    async with from_sdk:
        async for message in from_sdk:
            if out.is_closing():
                continue  # the client is gone; what is left to say is dropped, as the SDK's transport does
            out.write(message.message.model_dump_json(by_alias=True, exclude_unset=True).encode() + b"\n")
            await protocol.drained()


class _Drained(asyncio.Protocol):
    """Lets the writer wait while the pipe is full (a client not reading), rather than buffer without end."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._room: asyncio.Future[None] | None = None

    def pause_writing(self) -> None:
        self._room = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._room is not None and not self._room.done():
            self._room.set_result(None)
        self._room = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.resume_writing()

    async def drained(self) -> None:
        if self._room is not None:
            await self._room


@contextlib.contextmanager
def _claimed(fd: int) -> Iterator[int]:
    """A private duplicate of `fd` that carries the wire, while `fd` itself reads the null device (stdin) or
    writes to stderr (stdout)."""
    import fcntl  # POSIX only, as `can_serve` is

    private = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    elsewhere = os.open(os.devnull, os.O_RDONLY) if fd == 0 else os.dup(2)
    try:
        os.dup2(elsewhere, fd)
    finally:
        os.close(elsewhere)
    blocking = os.get_blocking(private)
    try:
        yield private
    finally:
        # The event loop made it non-blocking; a terminal shared with the shell must not stay so.
        with contextlib.suppress(OSError):
            os.set_blocking(private, blocking)
        os.dup2(private, fd)
        os.close(private)
