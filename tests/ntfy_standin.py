"""A stand-in for an ntfy server (ntfy itself cannot run here): a loopback HTTP server that accepts
ntfy's "publish as JSON" (a POST to the root) and records every publication — its headers and body — for
a test to read, waiting on an event rather than sleeping."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Published:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class NtfyStandIn:
    port: int = 0
    published: list[Published] = field(default_factory=list)
    arrived: threading.Condition = field(default_factory=threading.Condition)

    @property
    def topic_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/approvals"

    def wait_for(self, count: int, timeout: float = 15.0) -> list[Published]:
        with self.arrived:
            if not self.arrived.wait_for(lambda: len(self.published) >= count, timeout):
                raise AssertionError(f"ntfy stand-in: {len(self.published)} of {count} publications arrived")
            return list(self.published)


@contextmanager
def ntfy_standin() -> Iterator[NtfyStandIn]:
    standin = NtfyStandIn()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length))
            with standin.arrived:
                standin.published.append(Published(self.path, dict(self.headers.items()), body))
                standin.arrived.notify_all()
            reply = json.dumps({"id": str(len(standin.published)), "event": "message"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    standin.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield standin
    finally:
        server.shutdown()
        server.server_close()
