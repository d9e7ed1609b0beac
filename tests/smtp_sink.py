"""A real SMTP server for tests: aiosmtpd on 127.0.0.1, an ephemeral port, every message kept.

In a test (conftest's `smtp` fixture does this):

    from tests.smtp_sink import SmtpSink

    with SmtpSink() as sink:                     # or `async with`, or sink.start() / sink.stop()
        settings = {"smtp_host": sink.host, "smtp_port": sink.port}
        ...
        [received] = sink.wait_for(1)            # blocks (no sleeping) until one message has arrived
        received.message["Message-ID"]

From another process, so a test can count deliveries made by a server it did not start in-process:

    python tests/smtp_sink.py --record deliveries.jsonl
    # prints "READY 127.0.0.1 <port>" once listening; stops on SIGTERM/SIGINT or when stdin closes

With `record=PATH` each message is also appended to PATH as one JSON line; `read_records(PATH)` reads them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import threading
import time
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from types import TracebackType
from typing import Any, Self, cast

import anyio.to_thread
from aiosmtpd.controller import Controller


@dataclass(frozen=True)
class ReceivedMessage:
    """One delivery: the SMTP envelope and the message as parsed with the modern email policy."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    message: EmailMessage
    raw: bytes

    @property
    def message_id(self) -> str | None:
        value = self.message["Message-ID"]
        return None if value is None else str(value)

    @property
    def body(self) -> str:
        """The text of a single-part plain message, decoded, with the wire's CRLF line ends back to \\n."""
        return cast(str, self.message.get_content()).replace("\r\n", "\n")

    def to_record(self) -> dict[str, Any]:
        return {
            "mail_from": self.mail_from,
            "rcpt_tos": list(self.rcpt_tos),
            "message_id": self.message_id,
            "subject": None if self.message["Subject"] is None else str(self.message["Subject"]),
            "raw": self.raw.decode("utf-8", errors="surrogateescape"),
        }


class _EphemeralPortController(Controller):
    """A Controller that may bind port 0: it learns the real port before its readiness probe connects."""

    def _trigger_server(self) -> None:
        if self.port == 0 and isinstance(self.server, asyncio.Server):
            self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()  # type: ignore[no-untyped-call]


class _Handler:
    def __init__(self, sink: SmtpSink) -> None:
        self._sink = sink

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        # Refusing must happen before recording: a refused message was not delivered.
        refusal = self._sink.refuse_with
        if refusal is not None:
            return refusal
        if not self._sink._released.is_set():
            self._sink._holding.set()
            # Unanswered until the test releases it: the sender is mid-delivery all that time.
            await asyncio.get_running_loop().run_in_executor(None, self._sink._released.wait)
        raw = bytes(envelope.original_content or envelope.content)
        message = BytesParser(policy=policy.default).parsebytes(raw)
        self._sink._record(
            ReceivedMessage(
                mail_from=str(envelope.mail_from),
                rcpt_tos=tuple(str(rcpt) for rcpt in envelope.rcpt_tos),
                message=message,
                raw=raw,
            )
        )
        return "250 Message accepted for delivery"


class SmtpSink:
    """A live SMTP server collecting what it receives. Thread-safe; works from sync and async code.

    `refuse_with`, when set (e.g. "554 5.7.1 Rejected"), makes the server refuse every message's DATA with
    that reply instead of accepting it — for testing how senders handle an SMTP refusal.

    `hold()` makes the server leave every message's DATA unanswered until `release()`: `wait_holding()`
    returns once one is held, so a test can act while a sender waits mid-delivery.
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, record: Path | str | None = None) -> None:
        self.host = host
        self._requested_port = port
        self.record = None if record is None else Path(record)
        self.refuse_with: str | None = None
        self._messages: list[ReceivedMessage] = []
        self._arrived = threading.Condition()
        self._controller: _EphemeralPortController | None = None
        self._released = threading.Event()
        self._released.set()
        self._holding = threading.Event()

    @property
    def port(self) -> int:
        if self._controller is None:
            raise RuntimeError("the SMTP sink is not running")
        return int(self._controller.port)

    @property
    def messages(self) -> list[ReceivedMessage]:
        """A snapshot of every message received so far, oldest first."""
        with self._arrived:
            return list(self._messages)

    def start(self) -> Self:
        if self._controller is not None:
            raise RuntimeError("the SMTP sink is already running")
        controller = _EphemeralPortController(_Handler(self), hostname=self.host, port=self._requested_port)
        controller.start()
        self._controller = controller
        return self

    def stop(self) -> None:
        self._released.set()  # a held message must not keep the server from stopping
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def hold(self) -> None:
        self._holding.clear()
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    def wait_holding(self, timeout: float = 10.0) -> None:
        """Block until a message is being held, or raise TimeoutError."""
        if not self._holding.wait(timeout):
            raise TimeoutError(f"no message arrived to be held within {timeout}s")

    async def wait_holding_async(self, timeout: float = 10.0) -> None:
        await anyio.to_thread.run_sync(self.wait_holding, timeout)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[ReceivedMessage]:
        """Block until at least `count` messages have arrived; return them all, or raise TimeoutError."""
        with self._arrived:
            if not self._arrived.wait_for(lambda: len(self._messages) >= count, timeout):
                raise TimeoutError(
                    f"expected {count} message(s) within {timeout}s, got {len(self._messages)}"
                )
            return list(self._messages)

    async def wait_for_async(self, count: int, timeout: float = 10.0) -> list[ReceivedMessage]:
        return await anyio.to_thread.run_sync(self.wait_for, count, timeout)

    def _record(self, received: ReceivedMessage) -> None:
        with self._arrived:
            if self.record is not None:
                with self.record.open("a", encoding="utf-8") as file:
                    file.write(json.dumps(received.to_record()) + "\n")
            self._messages.append(received)
            self._arrived.notify_all()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def read_records(path: Path | str) -> list[dict[str, Any]]:
    """The messages a sink with `record=path` has written, oldest first ([] if none yet)."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def wait_for_records(path: Path | str, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Poll a record file (from another process) until it holds `count` messages, or TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        records = read_records(path)
        if len(records) >= count:
            return records
        if time.monotonic() >= deadline:
            raise TimeoutError(f"expected {count} message(s) in {path} within {timeout}s, got {len(records)}")
        time.sleep(0.01)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a local SMTP sink until SIGTERM or stdin closes.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--record", type=Path, help="append every message here as one JSON line")
    options = parser.parse_args(argv)

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())

    def watch_stdin() -> None:
        # A parent that dies without signalling still closes our stdin; exit then instead of lingering.
        sys.stdin.read()
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    with SmtpSink(host=options.host, port=options.port, record=options.record) as sink:
        print(f"READY {sink.host} {sink.port}", flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
