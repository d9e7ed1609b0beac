"""A stand-in for Slack's Web API on 127.0.0.1: records every call hitl makes and answers as Slack does,
and signs interaction requests exactly as Slack signs them.

Slack's servers cannot run in tests; what hitl sends them can be checked here, and `fail` makes the next
calls of a method fail with HTTP 500 as Slack's own trouble would.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlencode

SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
BOT_TOKEN = "xoxb-test-token"


@dataclass(frozen=True)
class Call:
    method: str
    body: dict[str, Any]
    authorization: str


class SlackStandIn:
    def __init__(self) -> None:
        self.calls: list[Call] = []
        self._changed = threading.Condition()
        self._failures: dict[str, int] = {}
        self._ts = itertools.count(1)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/api/"

    def fail(self, method: str, times: int) -> None:
        """The next `times` calls of `method` answer HTTP 500."""
        with self._changed:
            self._failures[method] = times

    def of(self, method: str) -> list[Call]:
        with self._changed:
            return [call for call in self.calls if call.method == method]

    def wait_for(self, found: Callable[[list[Call]], bool], timeout: float = 30.0) -> list[Call]:
        """Every call so far, once `found` holds of them (woken by each call; no polling)."""
        with self._changed:
            if not self._changed.wait_for(lambda: found(list(self.calls)), timeout):
                methods = [call.method for call in self.calls]
                raise AssertionError(f"Slack was not called as expected within {timeout}s; calls: {methods}")
            return list(self.calls)

    def _record(self, method: str, body: dict[str, Any], authorization: str) -> tuple[int, dict[str, Any]]:
        with self._changed:
            self.calls.append(Call(method, body, authorization))
            self._changed.notify_all()
            if self._failures.get(method, 0) > 0:
                self._failures[method] -= 1
                return 500, {"ok": False, "error": "internal_error"}
            if method == "chat.postMessage":
                ts = f"{int(time.time())}.{next(self._ts):06d}"
                return 200, {"ok": True, "channel": body.get("channel"), "ts": ts, "message": {}}
            if method == "chat.update":
                return 200, {"ok": True, "channel": body.get("channel"), "ts": body.get("ts")}
            return 200, {"ok": True}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw) if raw else {}
                except ValueError:
                    body = {"raw": raw.decode("utf-8", "replace")}
                method = self.path.rsplit("/", 1)[-1]
                status, answer = standin._record(method, body, self.headers.get("Authorization", ""))
                content = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    @contextmanager
    def running(self) -> Iterator[SlackStandIn]:
        thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()
            thread.join(timeout=10)


def signed(
    payload: dict[str, Any], *, secret: str = SIGNING_SECRET, at: float | None = None
) -> tuple[bytes, dict[str, str]]:
    """An interaction request as Slack sends it: a form with a `payload` JSON field, and its signature."""
    body = urlencode({"payload": json.dumps(payload)}).encode()
    return body, signature_headers(body, secret=secret, at=at)


def signature_headers(
    body: bytes, *, secret: str = SIGNING_SECRET, at: float | None = None
) -> dict[str, str]:
    timestamp = str(int(time.time() if at is None else at))
    digest = hmac.new(secret.encode(), f"v0:{timestamp}:".encode() + body, hashlib.sha256).hexdigest()
    return {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Slack-Request-Timestamp": timestamp,
        "X-Slack-Signature": f"v0={digest}",
    }


def press(action_id: str, request_id: str, user: str, *, channel: str = "C0APPROVALS") -> dict[str, Any]:
    """A block_actions payload: `user` pressed the button `action_id` on a message about `request_id`."""
    return {
        "type": "block_actions",
        "user": {"id": user, "username": user.lower()},
        "channel": {"id": channel},
        "trigger_id": f"trigger-{user}-{request_id[:8]}",
        "response_url": "http://127.0.0.1:9/unused",
        "actions": [{"action_id": action_id, "value": request_id, "type": "button"}],
    }


def submission(view: dict[str, Any], user: str, reason: str) -> dict[str, Any]:
    """A view_submission of the modal `view` (as hitl opened it) with `reason` typed in."""
    return {
        "type": "view_submission",
        "user": {"id": user},
        "view": {
            "callback_id": view["callback_id"],
            "private_metadata": view["private_metadata"],
            "state": {"values": {"reason": {"reason_input": {"type": "plain_text_input", "value": reason}}}},
        },
    }
