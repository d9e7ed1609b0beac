"""The stdio transport to an upstream: hitl starts the server as its child and speaks newline-delimited
JSON-RPC on the child's stdin and stdout.

Ours rather than the SDK's `stdio_client`, which hides three things hitl needs: the moment a request is
written to the pipe (see `delivery.py`), the child's stderr line by line for hitl's log, and how the child
ended (status, signal, last words on stderr), which is what a person reads when it keeps failing. Its
stderr is never passed through raw: over stdio hitl's own stdout is its client's transport, and an
upstream's control characters would reach a person's terminal.

It stops the way the MCP specification (and the SDK) say: close stdin, wait, SIGTERM, wait, SIGKILL —
to the child's whole process group, which it leads, and even when the child itself exits promptly, so
nothing it started outlives the session.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import subprocess
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

import anyio
import anyio.abc
import mcp_types as types
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.client.stdio import get_default_environment
from mcp.shared.message import SessionMessage
from pydantic import ValidationError

from hitl_mcp import display
from hitl_mcp.json_input import protocol_line
from hitl_mcp.sdk_seams import TransportStreams
from hitl_mcp.upstream.delivery import Delivery, Stage, TrackedWriteStream, current_delivery, delivery_of
from hitl_mcp.upstream.processes import (
    EXIT_POLL_SECONDS,
    TERM_GRACE_SECONDS,
    close_quietly,
    signal_group,
    signal_name,
    stop_group,
)
from hitl_mcp.upstream.settings import UpstreamSettings

STDIN_GRACE_SECONDS = 2.0
"""How long a child has to exit by itself once its stdin is closed (the SDK's figure)."""
REAP_SECONDS = 2.0
FLUSH_SECONDS = 0.5
MAX_LINE_BYTES = 32 * 1024 * 1024
"""A JSON-RPC line longer than this ends the session rather than growing hitl's memory without bound."""
LOGGED_LINE_CHARS = 2000
LAST_WORDS_SECONDS = 10.0
"""A line on stderr this recent when the child ends is likely why, and is shown with the reason."""

Log = Callable[[str], None]
Outgoing = tuple[SessionMessage | bytes, Delivery | None]
EXCHANGE_ID = "hitl-pass-"
ENVELOPE_KEYS = (
    types.PROTOCOL_VERSION_META_KEY,
    types.CLIENT_INFO_META_KEY,
    types.CLIENT_CAPABILITIES_META_KEY,
)


class StartFailed(Exception):
    """The upstream's process could not be started; the message says why in a person's words."""


class StdioTransport:
    """An SDK `Transport` (an async context manager of a read and a write stream) over a child process."""

    def __init__(self, upstream: UpstreamSettings, log: Log) -> None:
        self.upstream = upstream
        self._log = log
        self.process: anyio.abc.Process | None = None
        self.ended = anyio.Event()
        """Set once the session over this process cannot go on: it closed its stdout or its stdin."""
        self.problem: str | None = None
        """Why it ended, when something other than the child's exit says it better."""
        self.stopped_running = False
        """It was still running when the session was closed: how it ended then is hitl's doing."""
        self.last_stderr: str | None = None
        self._last_stderr_at = -math.inf
        self.ready_at: float | None = None
        """When the session over it became ready: what it wrote on stderr before says nothing of its end."""
        self.open_calls: weakref.WeakSet[Delivery] = weakref.WeakSet()
        self._awaiting: weakref.WeakValueDictionary[types.RequestId, Delivery] = weakref.WeakValueDictionary()
        self._tasks: anyio.abc.TaskGroup | None = None
        self._writer_done = anyio.Event()
        self._exchanges: dict[str, _Answer] = {}
        self._exchanged = 0
        self.envelope: dict[str, Any] = {}
        """The `_meta` envelope of the SDK's latest request (2026-07-28: its protocol version, client info
        and capabilities; empty on the older protocol), which `exchange` writes on its requests too."""

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    async def __aenter__(self) -> TransportStreams:
        self.process = await self._spawn()
        self._incoming, incoming = anyio.create_memory_object_stream[SessionMessage | Exception](0)
        self._outgoing, outgoing = anyio.create_memory_object_stream[Outgoing](0)
        self._tasks = anyio.create_task_group()
        await self._tasks.__aenter__()
        self._tasks.start_soon(self._read_stdout)
        self._tasks.start_soon(self._write_stdin, outgoing)
        self._tasks.start_soon(self._read_stderr)
        stdin = _Stdin(self._outgoing, self._awaiting)
        return incoming, TrackedWriteStream(stdin, guarded=True, open_calls=self.open_calls)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        assert self._tasks is not None
        # Even when the caller is being cancelled: a child left running would outlive hitl.
        with anyio.CancelScope(shield=True):
            await self._stop()
        self._tasks.cancel_scope.cancel()
        await self._tasks.__aexit__(None, None, None)
        return None

    def exit_reason(self) -> str:
        """How the session over this process ended, in words."""
        code = self.process.returncode if self.process else None
        if self.problem is not None:
            reason = self.problem
        elif code is None:
            reason = "closed its stdout"
        elif code < 0:
            reason = f"killed by {signal_name(-code)}"
        else:
            reason = f"exited with status {code}"
        return reason + self.last_words()

    def last_words(self) -> str:
        """`; its last line on stderr: …` when it wrote one lately, else nothing."""
        recent = anyio.current_time() - self._last_stderr_at <= LAST_WORDS_SECONDS
        if self.last_stderr and recent and (self.ready_at is None or self._last_stderr_at > self.ready_at):
            return f"; its last line on stderr: {display.cut(self.last_stderr.strip(), 300)}"
        return ""

    async def wait_exited(self, timeout: float) -> bool:
        # Not process.wait(): on asyncio it also waits for the pipes to close, which a grandchild holding
        # them would delay.
        with anyio.move_on_after(timeout):
            while self.process is not None and self.process.returncode is None:  # noqa: ASYNC110 - no event says so
                await anyio.sleep(EXIT_POLL_SECONDS)
        return self.process is None or self.process.returncode is not None

    async def exchange(self, request: dict[str, Any], delivery: Delivery) -> dict[str, Any] | None:
        """Write `request` to the child past the SDK's session, under an id of its own (`hitl-pass-N`, a
        string the SDK's integer ids never are; on `delivery.request_id`) and with the SDK's envelope in
        its `_meta`, and return the child's answer as it came: the gateway's passed calls
        (`hitl_mcp.gateway.fast_pass`). None when the child ended first.

        `delivery` is kept as for the SDK's calls: the writer asks it before writing, so a call that gives
        up on an unwritten request withdraws it."""
        self._exchanged += 1
        request_id = request["id"] = f"{EXCHANGE_ID}{self._exchanged}"
        if self.envelope:
            params = request.setdefault("params", {})
            params["_meta"] = {**params.get("_meta", {}), **self.envelope}
        answer = self._exchanges[request_id] = _Answer()
        delivery.request_id = request_id
        delivery.stage = Stage.GUARDED
        try:
            line = json.dumps(request, separators=(",", ":")).encode() + b"\n"
            try:
                await self._outgoing.send((line, delivery))
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                delivery.stage = Stage.KEPT  # no writer took it
                raise
            if self.ended.is_set():
                return None
            await answer.arrived.wait()
            return answer.message
        finally:
            self._exchanges.pop(request_id, None)

    async def notify(self, notification: dict[str, Any]) -> None:
        """Write a notification past the SDK's session (a passed call's courtesy cancel), enveloped."""
        if self.envelope:
            params = notification.setdefault("params", {})
            params["_meta"] = {**params.get("_meta", {}), **self.envelope}
        line = json.dumps(notification, separators=(",", ":")).encode() + b"\n"
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            await self._outgoing.send((line, None))

    def _end_exchanges(self) -> None:
        for answer in self._exchanges.values():
            answer.arrived.set()

    async def _spawn(self) -> anyio.abc.Process:
        upstream = self.upstream
        assert upstream.command is not None
        try:
            return await anyio.open_process(
                [upstream.command, *upstream.args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                # The SDK's: a few variables a program needs (PATH, HOME…), never hitl's secrets.
                env=get_default_environment() | dict(upstream.env),
                cwd=upstream.cwd,
                # Its own process group, so stopping it reaches whatever it starts.
                start_new_session=True,
            )
        except FileNotFoundError:
            if upstream.cwd is not None and not upstream.cwd.is_dir():
                raise StartFailed(f"its folder does not exist: {upstream.cwd}") from None
            raise StartFailed(f"command not found: {upstream.command}") from None
        except NotADirectoryError:
            raise StartFailed(f"its cwd is not a folder: {upstream.cwd}") from None
        except PermissionError:
            raise StartFailed(f"permission denied running {upstream.command}") from None
        except OSError as error:
            raise StartFailed(f"cannot start {upstream.command}: {error.strerror or error}") from None

    async def _read_stdout(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        pending = bytearray()
        try:
            async for chunk in self.process.stdout:
                pending += chunk
                while (end := pending.find(b"\n")) >= 0:
                    line = bytes(pending[:end])
                    del pending[: end + 1]
                    await self._deliver(line)
                if len(pending) > MAX_LINE_BYTES:
                    self.problem = f"sent a line longer than {MAX_LINE_BYTES // (1024 * 1024)} MiB"
                    break
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            pass  # our own stop closed the pipe, or the child is gone
        except anyio.get_cancelled_exc_class():
            self._incoming.close()  # cancelled with the session (a start that took too long): not its end
            raise
        self.ended.set()
        self._end_exchanges()
        # The dispatcher sees the end, and answers whoever still waits with CONNECTION_CLOSED.
        self._incoming.close()

    async def _deliver(self, line: bytes) -> None:
        if not line.strip():
            return
        if self._exchanges and self._answers_exchange(line):
            return
        try:
            message = types.jsonrpc_message_adapter.validate_json(line, by_name=False)
        except (ValidationError, ValueError):
            # A server that logs to stdout: its lines are read as logs, not as protocol.
            self._log_line("stdout (not JSON-RPC): " + line.decode("utf-8", "replace"))
            return
        if isinstance(message, types.JSONRPCResponse | types.JSONRPCError) and message.id is not None:
            delivery = self._awaiting.pop(message.id, None)
            if delivery is not None and isinstance(message, types.JSONRPCError):
                delivery.answer = (message.error.code, message.error.message)
        # The session may be closing; what it no longer reads is dropped.
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            await self._incoming.send(SessionMessage(message))

    def _answers_exchange(self, line: bytes) -> bool:
        """Whether `line` answers one of `exchange`'s requests (handed over if so), before the SDK parses."""
        if EXCHANGE_ID.encode() not in line:
            return False  # the SDK's alone: not parsed twice
        try:
            message = protocol_line(line)
        except ValueError:
            return False  # the SDK's parser reads it, and refuses it as it always did
        request_id = message.get("id") if isinstance(message, dict) else None
        answer = self._exchanges.get(request_id) if isinstance(request_id, str) else None
        if answer is None or "method" in message:
            return False
        answer.message = message
        answer.arrived.set()
        return True

    async def _write_stdin(self, outgoing: MemoryObjectReceiveStream[Outgoing]) -> None:
        assert self.process is not None and self.process.stdin is not None
        try:
            async with outgoing:
                async for message, delivery in outgoing:
                    if delivery is not None and not delivery.start_sending():
                        continue  # its call gave up on it before it could leave
                    if isinstance(message, bytes):
                        data = message
                    else:
                        self._note_envelope(message)
                        data = (
                            message.message.model_dump_json(by_alias=True, exclude_unset=True) + "\n"
                        ).encode()
                    try:
                        await self.process.stdin.send(data)
                    except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
                        # The write failed before the line's last byte, its newline, was in the pipe
                        # (asyncio reports a lost pipe only while bytes of it are still unwritten), and
                        # nobody can read the pipe any more: no complete request ever reached the upstream.
                        if delivery is not None:
                            delivery.unsent()
                        self.problem = self.problem or "closed its stdin"
                        self.ended.set()
                        self._end_exchanges()
                        self._incoming.close()
                        return
        finally:
            self._writer_done.set()

    def _note_envelope(self, message: SessionMessage) -> None:
        request = message.message
        if isinstance(request, types.JSONRPCRequest):
            # The latest request says it: a session that fell back to the handshake after a 2026-07-28
            # probe carries no envelope any more.
            meta = (request.params or {}).get("_meta")
            meta = meta if isinstance(meta, dict) else {}
            self.envelope = {key: meta[key] for key in ENVELOPE_KEYS if key in meta}

    async def _read_stderr(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        pending = bytearray()
        try:
            async for chunk in self.process.stderr:
                pending += chunk
                while (end := pending.find(b"\n")) >= 0:
                    self._stderr_line(bytes(pending[:end]))
                    del pending[: end + 1]
                if len(pending) > LOGGED_LINE_CHARS * 4:
                    self._stderr_line(bytes(pending))
                    pending.clear()
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            pass
        if pending:
            self._stderr_line(bytes(pending))

    def _stderr_line(self, raw: bytes) -> None:
        line = raw.decode("utf-8", "replace").rstrip("\r")
        if line.strip():
            self.last_stderr = line
            self._last_stderr_at = anyio.current_time()
            self._log_line(line)

    def _log_line(self, line: str) -> None:
        self._log(f"{self.upstream.name}: {display.cut(line, LOGGED_LINE_CHARS)}")

    async def _stop(self) -> None:
        process = self.process
        assert process is not None and process.stdin is not None
        self.stopped_running = process.returncode is None and not self.ended.is_set()
        # Let a line already begun finish, so the child never reads half a message.
        self._outgoing.close()
        with anyio.move_on_after(FLUSH_SECONDS):
            await self._writer_done.wait()
        await close_quietly(process.stdin)
        if not await self.wait_exited(STDIN_GRACE_SECONDS):
            signal_group(process, signal.SIGTERM)
            if not await self.wait_exited(TERM_GRACE_SECONDS):
                signal_group(process, signal.SIGKILL)
                await self.wait_exited(REAP_SECONDS)
        await stop_group(process)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                await close_quietly(stream)


class _Answer:
    def __init__(self) -> None:
        self.arrived = anyio.Event()
        self.message: dict[str, Any] | None = None


class _Stdin:
    """The write stream under `TrackedWriteStream`: each message goes to the writer task with its call's
    delivery, which the writer asks before writing, and which the reader marks when answered."""

    def __init__(
        self,
        outgoing: MemoryObjectSendStream[Outgoing],
        awaiting: weakref.WeakValueDictionary[types.RequestId, Delivery],
    ) -> None:
        self._outgoing = outgoing
        self._awaiting = awaiting

    async def send(self, item: SessionMessage, /) -> None:
        if _cancels_unwritten(item):
            return  # nothing to cancel: the upstream never saw the request, and now never will
        delivery = delivery_of(item)
        if delivery is not None and delivery.request_id is not None:
            self._awaiting[delivery.request_id] = delivery
        await self._outgoing.send((item, delivery))

    async def aclose(self) -> None:
        await self._outgoing.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        await self.aclose()
        return None


def _cancels_unwritten(item: SessionMessage) -> bool:
    """Whether `item` is the SDK's courtesy cancel of a call that gives up on a request not written yet;
    the request is then withdrawn. Without this the cancel would queue behind the very write that holds
    the request up (an upstream not reading its stdin), and hold the giving-up call for seconds more."""
    message = item.message
    delivery = current_delivery.get()
    if not isinstance(message, types.JSONRPCNotification) or message.method != "notifications/cancelled":
        return False
    if delivery is None or (message.params or {}).get("requestId") != delivery.request_id:
        return False
    return delivery.stage is Stage.GUARDED and delivery.withdraw()
