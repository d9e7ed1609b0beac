"""Notifications for humans, against real receivers: a local HTTP server (webhook and Slack) and a local
SMTP server. Filing only writes the outbox; the worker delivers, retries, gives up, survives restarts."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
from mcp import Client

from hitl_mcp.config import Settings, load_settings
from hitl_mcp.errors import ConfigError, NotAllowed
from hitl_mcp.gate import Gate, open_gate
from hitl_mcp.models import Status
from hitl_mcp.notify import render
from hitl_mcp.notify.worker import DeliveryPolicy, deliver_due, deliver_forever
from hitl_mcp.server import build_server
from hitl_mcp.store.sqlite import SQLiteStore
from tests.smtp_sink import SmtpSink
from tests.test_cli import HITL

SECRET = "s3cret-for-tests"
BIG_BUY = {"symbol": "GOOGL", "quantity": 100, "price": 150.0}  # $15,000: a trader, then a risk manager
SMALL_BUY = {"symbol": "GOOGL", "quantity": 1, "price": 10.0}  # $10: no approval needed
FAST = DeliveryPolicy(
    max_attempts=3,
    backoff_base_seconds=0.01,
    backoff_max_seconds=0.05,
    timeout_seconds=5.0,
    lease_seconds=10.0,
    poll_seconds=0.01,
    idle_seconds=0.2,
)
GOVERNANCE = """
[principals.alice]
roles = ["trader"]
[principals.bob]
roles = ["risk_manager"]

[policy.buy_stock]
rules = [
  { when = "quantity * price < 1000", approval = "none" },
  { levels = [
    { roles = ["trader"], count = 1, escalate_after_seconds = 600 },
    { roles = ["risk_manager"], count = 1 },
  ] },
]
"""


# -- a real HTTP receiver -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Hit:
    """One POST the receiver answered, with the status it answered."""

    path: str
    headers: dict[str, str]
    body: bytes
    status: int

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def delivery(self) -> str:
        return self.headers["x-hitl-delivery"]


class Receiver:
    """An HTTP server on 127.0.0.1 that records every POST. Per path it can fail the first N attempts,
    always answer a given status, check an HMAC signature (401 when wrong), or hold its answer until
    released."""

    def __init__(self) -> None:
        self.hits: list[Hit] = []
        self.arrivals: list[str] = []
        self.fail_first: dict[str, int] = {}
        self.always: dict[str, int] = {}
        self.secrets: dict[str, str] = {}
        self.held: dict[str, threading.Event] = {}
        self._changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                status = receiver._answer(self.path, dict(self.headers.items()), body)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "text/plain")
                    self.end_headers()
                    self.wfile.write(b"ok" if status == 200 else b"receiver says no")
                except OSError:  # the sender gave up on a held answer
                    pass

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05})

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}{path}"

    def _answer(self, path: str, headers: dict[str, str], body: bytes) -> int:
        with self._changed:
            self.arrivals.append(path)
            self._changed.notify_all()
        hold = self.held.get(path)
        if hold is not None:
            hold.wait(30)
        headers = {name.lower(): value for name, value in headers.items()}
        with self._changed:
            secret = self.secrets.get(path)
            expected = None if secret is None else "sha256=" + _hmac(secret, body)
            if expected is not None and not hmac.compare_digest(
                expected, headers.get("x-hitl-signature", "")
            ):
                status = 401
            elif self.fail_first.get(path, 0) > 0:
                self.fail_first[path] -= 1
                status = 503
            else:
                status = self.always.get(path, 200)
            self.hits.append(Hit(path, headers, body, status))
            self._changed.notify_all()
        return status

    def ok(self, path: str) -> list[Hit]:
        with self._changed:
            return [hit for hit in self.hits if hit.path == path and hit.status == 200]

    def attempts(self, path: str) -> list[Hit]:
        with self._changed:
            return [hit for hit in self.hits if hit.path == path]

    def wait(self, condition: Callable[[], bool], timeout: float = 10.0) -> None:
        with self._changed:
            if not self._changed.wait_for(condition, timeout):
                raise TimeoutError(
                    f"the receiver did not see what was expected within {timeout}s: {self.hits}"
                )

    async def wait_ok(self, path: str, count: int, timeout: float = 10.0) -> list[Hit]:
        await anyio.to_thread.run_sync(
            self.wait, lambda: sum(h.path == path and h.status == 200 for h in self.hits) >= count, timeout
        )
        return self.ok(path)

    async def wait_arrivals(self, path: str, count: int, timeout: float = 10.0) -> None:
        await anyio.to_thread.run_sync(self.wait, lambda: self.arrivals.count(path) >= count, timeout)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        for event in self.held.values():
            event.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


def _hmac(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    server.start()
    try:
        yield server
    finally:
        server.stop()


# -- helpers --------------------------------------------------------------------------------------------


Configure = Callable[[str], Settings]


@pytest.fixture
def configure(config_file: Path, env: dict[str, str]) -> Configure:
    """Settings from the suite's config plus governance plus `notify` (TOML); `env` then names that file."""

    def write(notify: str) -> Settings:
        path = config_file.with_name("notify.toml")
        path.write_text(config_file.read_text(encoding="utf-8") + GOVERNANCE + notify, encoding="utf-8")
        env["HITL_CONFIG"] = str(path)
        return load_settings(env)

    return write


@asynccontextmanager
async def delivering(gate: Gate, policy: DeliveryPolicy = FAST) -> AsyncIterator[None]:
    """The worker as the server runs it, stopped (cancelled) on exit."""
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(partial(deliver_forever, gate, policy=policy))
        yield
        tasks.cancel_scope.cancel()


def entry(on: list[str], **keys: object) -> str:
    """One [[notify]] table; JSON strings and arrays are TOML too."""
    lines = ["", "[[notify]]", f"on = {json.dumps(on)}", *(f"{k} = {json.dumps(v)}" for k, v in keys.items())]
    return "\n".join(lines) + "\n"


def outbox(db: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute("SELECT * FROM outbox ORDER BY id").fetchall()
    return [dict(row) for row in rows]


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await anyio.sleep(0.01)


async def hitl(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    done = await anyio.run_process([HITL, *args], env=env, check=False)
    return done.returncode, done.stdout.decode(), done.stderr.decode()


# -- configuration ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            'on = ["filed"]\nwebhook = "ftp://example.com/x"',
            r"notify\[0\]\.webhook: must be an http:// or https://",
        ),
        (
            'on = ["filed"]\nslack_webhook = "hooks.slack.com/x"',
            r"notify\[0\]\.slack_webhook: must be an http",
        ),
        ('on = ["filed"]\nemail = "not an address"', r"notify\[0\]\.email: not a valid email address"),
        ('on = ["filed"]', r"notify\[0\]: give exactly one target"),
        (
            'on = ["filed"]\nwebhook = "http://a.test/"\nemail = "a@example.com"',
            r"notify\[0\]: give exactly one target.*webhook and email",
        ),
        ('on = ["filed"]\nemail = "a@example.com"\nsecret = "x"', r"notify\[0\]\.secret: only a webhook"),
        ('on = ["filed"]\nemail = "a@example.com"\nsender = "x"', r"notify\[0\]\.sender: not a valid email"),
        (
            'on = ["filed"]\nwebhook = "http://a.test/"\nsender = "a@b.com"',
            r"notify\[0\]\.sender: only an email",
        ),
        ('on = ["approve"]\nwebhook = "http://a.test/"', r"notify\[0\]\.on\.0: Input should be 'filed'"),
        ("on = []\nwebhook = 'http://a.test/'", r"notify\[0\]\.on: "),
        (
            'on = ["filed"]\nwebhook = "http://a.test/"\ntools = ["sell"]',
            r"notify\[0\]\.tools: no such action",
        ),
        (
            'on = ["filed"]\nwebhook = "http://a.test/"\nroles = ["cfo"]',
            r"notify\[0\]\.roles\[0\]: no principal",
        ),
        ('on = ["filed"]\nwebhook = "http://a.test/"\nlevels = [0]', r"notify\[0\]\.levels\.0: "),
        ('on = ["filed"]\nwebhook = "http://a.test/"\ncolour = "red"', r"notify\[0\]\.colour: Extra inputs"),
    ],
)
def test_a_bad_notify_entry_stops_the_start_naming_its_key(
    configure: Configure, entry: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        configure(f"\n[[notify]]\n{entry}\n")


def test_two_entries_for_one_webhook_must_share_its_secret(configure: Configure) -> None:
    with pytest.raises(ConfigError, match=r"notify\[1\]\.secret: notify\[0\] sends to the same webhook"):
        configure(
            '\n[[notify]]\non = ["filed"]\nwebhook = "http://a.test/"\nsecret = "one"\n'
            '\n[[notify]]\non = ["failed"]\nwebhook = "http://a.test/"\nsecret = "two"\n'
        )


def test_notify_must_be_an_array_of_tables(configure: Configure) -> None:
    with pytest.raises(ConfigError, match=r"notify: must be an array of tables"):
        configure('\n[notify]\non = ["filed"]\n')


def test_backoff_grows_exponentially_with_bounded_jitter() -> None:
    policy = DeliveryPolicy(backoff_base_seconds=1.0, backoff_max_seconds=60.0, jitter=0.5)

    assert [policy.backoff(n, draw=lambda: 0.0) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert [policy.backoff(n, draw=lambda: 1.0) for n in (1, 3, 1000)] == [0.5, 2.0, 30.0]
    with pytest.raises(ValueError, match="lease_seconds"):
        DeliveryPolicy(timeout_seconds=10, lease_seconds=15)


# -- the outbox is written with the transition, nothing is sent on the filing path ----------------------


async def test_filing_writes_the_outbox_in_its_transaction_and_sends_nothing(
    configure: Configure, receiver: Receiver
) -> None:
    settings = configure(
        entry(["filed", "approved", "rejected"], webhook=receiver.url("/hook/t0k3n?key=k3y"))
    )
    async with open_gate(settings) as gate:
        pending = await gate.file("buy_stock", BIG_BUY, "agent")
        auto = await gate.file("buy_stock", SMALL_BUY, "agent")
        with pytest.raises(NotAllowed):
            await gate.approve(pending.request_id, "agent")  # a refused decision writes nothing

    assert auto.status is Status.EXECUTED
    [row] = outbox(settings.db_path)
    assert (row["request_id"], row["event"], row["state"], row["attempts"]) == (
        pending.request_id,
        "filed",
        "pending",
        0,
    )
    with sqlite3.connect(settings.db_path) as conn:
        [(audit_seq,)] = conn.execute(
            "SELECT seq FROM audit WHERE request_id = ? AND event = 'filed'", (pending.request_id,)
        ).fetchall()
    assert row["audit_seq"] == audit_seq
    assert receiver.hits == []  # no worker ran: filing itself sent nothing
    # The store never holds the target: a Slack or webhook URL may be a credential.
    assert row["label"] == f"webhook {receiver.url('/hook')}/…"
    assert "t0k3n" not in json.dumps(row) and "k3y" not in json.dumps(row)


async def test_filing_is_not_held_up_by_a_receiver_that_does_not_answer(
    configure: Configure, receiver: Receiver
) -> None:
    receiver.held["/slow"] = threading.Event()
    settings = configure(f'\n[[notify]]\non = ["filed"]\nwebhook = "{receiver.url("/slow")}"\n')
    async with open_gate(settings) as gate, delivering(gate):
        first = await gate.file("buy_stock", BIG_BUY, "agent")
        await receiver.wait_arrivals("/slow", 1)  # the worker is now stuck on the first delivery

        with anyio.fail_after(5):
            second = await gate.file("buy_stock", BIG_BUY, "agent")
            third = await gate.file("buy_stock", BIG_BUY, "agent")

        assert [r["request_id"] for r in outbox(settings.db_path)] == [
            first.request_id,
            second.request_id,
            third.request_id,
        ]
        assert receiver.hits == []
        receiver.held["/slow"].set()
        hits = await receiver.wait_ok("/slow", 3)
        await until(lambda: {row["state"] for row in outbox(settings.db_path)} == {"delivered"})

    assert sorted(hit.json["request"]["request_id"] for hit in hits) == sorted(
        r.request_id for r in (first, second, third)
    )
    assert {row["state"] for row in outbox(settings.db_path)} == {"delivered"}


# -- what the messages say ----------------------------------------------------------------------------


async def test_a_signed_webhook_carries_the_snapshot_and_the_commands(
    configure: Configure, receiver: Receiver
) -> None:
    receiver.secrets["/hook"] = SECRET
    settings = configure(
        f'\n[[notify]]\non = ["filed", "approved", "executed"]\nwebhook = "{receiver.url("/hook")}"\n'
        f'secret = "{SECRET}"\n'
    )
    async with open_gate(settings) as gate:
        request = await gate.file("buy_stock", BIG_BUY, "agent")
        await gate.approve(request.request_id, "alice")
        done = await gate.approve(request.request_id, "bob")
        assert done.status is Status.EXECUTED
        async with delivering(gate):
            hits = await receiver.wait_ok("/hook", 4)

    assert receiver.attempts("/hook") == hits  # every signature held: nothing was refused
    by_event = {(hit.json["event"], hit.json["request"]["status"]): hit for hit in hits}
    filed = by_event["filed", "pending"].json
    rid = request.request_id
    # Delivered after the request ran, the filed message still shows it as it stood when it was filed.
    assert filed["request"]["summary"] == request.summary
    assert filed["request"]["preview"]["total"] == 15000.0
    assert filed["request"]["approval"]["may_decide"] == "1 × trader"
    assert filed["request"]["approval"]["waiting_on"] == 0
    assert filed["request"]["expires_at"] == request.expires_at.isoformat()
    assert filed["commands"] == {
        "approve": f"hitl approve {rid}",
        "reject": f'hitl reject {rid} --reason "…"',
        "show": f"hitl show {rid}",
    }
    assert f"hitl approve {rid}" in filed["text"] and "Waits on   level 1 of 2: 1 × trader" in filed["text"]
    halfway = by_event["approved", "pending"].json
    assert halfway["actor"] == "alice" and halfway["request"]["approval"]["may_decide"] == "1 × risk_manager"
    assert "now waits on level 2 of 2" in halfway["text"]
    executed = by_event["executed", "executed"]
    assert executed.headers["x-hitl-event"] == "executed"
    assert (
        "approve" not in executed.json["commands"] and executed.json["request"]["result"]["total"] == 15000.0
    )
    assert by_event["approved", "approved"].json["actor"] == "bob"
    assert len({hit.delivery for hit in hits}) == 4


async def test_a_wrong_secret_is_refused_by_the_receiver_and_never_retried(
    configure: Configure, receiver: Receiver
) -> None:
    receiver.secrets["/hook"] = "what the receiver expects"
    settings = configure(
        f'\n[[notify]]\non = ["filed"]\nwebhook = "{receiver.url("/hook")}"\nsecret = "something else"\n'
    )
    async with open_gate(settings) as gate:
        await gate.file("buy_stock", BIG_BUY, "agent")
        assert await deliver_due(gate, policy=FAST) == 1

    [row] = outbox(settings.db_path)
    assert row["state"] == "dead" and row["attempts"] == 1
    assert row["last_error"].startswith("attempt 1: HTTP 401 from webhook http://127.0.0.1:")


async def test_a_slack_message_has_text_and_blocks_with_agent_text_escaped(
    configure: Configure, receiver: Receiver
) -> None:
    settings = configure(
        f'\n[[notify]]\non = ["filed"]\nslack_webhook = "{receiver.url("/services/T0/B0/XYZ")}"\n'
    )
    email = {"to": "bob@corp.com", "subject": "Hi <!channel> & <http://evil.test|click>", "body": "hello"}
    async with open_gate(settings) as gate, delivering(gate):
        request = await gate.file("send_email", email, "agent")
        [hit] = await receiver.wait_ok("/services/T0/B0/XYZ", 1)

    message = hit.json
    assert set(message) == {"text", "blocks"}
    assert (
        "<!channel>" not in json.dumps(message)
        and "&lt;!channel&gt; &amp; &lt;http://evil.test|click&gt;" in message["text"]
    )
    header, facts, preview, how = message["blocks"]
    assert header == {
        "type": "header",
        "text": {
            "type": "plain_text",
            "text": f"Approval needed: send_email request {request.request_id[:10]} from agent",
        },
    }
    assert facts["type"] == "section" and facts["text"]["type"] == "mrkdwn"
    assert "*Waits on:* level 1 of 1: 1 × anyone but the requester" in facts["text"]["text"]
    assert f"*Expires:* {request.expires_at.isoformat()}" in facts["text"]["text"]
    assert (
        preview["text"]["text"].startswith("*Preview*\n```")
        and '"to": "bob@corp.com"' in preview["text"]["text"]
    )
    rid = request.request_id
    assert how["text"]["text"] == f'Approve: `hitl approve {rid}`\nReject: `hitl reject {rid} --reason "…"`'
    # The status view names the Slack target without its secret path.
    [row] = outbox(settings.db_path)
    assert row["label"] == f"slack {receiver.url('')}/…" and "XYZ" not in row["label"]


async def test_email_notifications_go_through_the_smtp_settings(configure: Configure, smtp: SmtpSink) -> None:
    settings = configure('\n[[notify]]\non = ["filed", "failed"]\nemail = "oncall@example.com"\n')
    email = {"to": "bob@corp.com", "subject": "Quarterly numbers", "body": "attached"}
    async with open_gate(settings) as gate:
        request = await gate.file("send_email", email, "agent")
        smtp.refuse_with = "554 5.7.1 Not today"
        failed = await gate.approve(request.request_id, "alice")
        smtp.refuse_with = None
        assert failed.status is Status.FAILED and smtp.messages == []
        async with delivering(gate):
            messages = await smtp.wait_for_async(2)

    # From hitl's own default sender, not the agent's `send_email` sender (agent@example.com).
    assert all(m.rcpt_tos == ("oncall@example.com",) and m.mail_from == "hitl@localhost" for m in messages)
    assert all(str(m.message["From"]) == "hitl@localhost" for m in messages)
    by_subject = {str(m.message["Subject"]): m for m in messages}
    filed = by_subject[
        f"[hitl] Approval needed: send_email request {request.request_id[:10]} from agent: {request.summary}"
    ]
    rid = request.request_id
    assert f"Summary    {request.summary}" in filed.body
    assert "Waits on   level 1 of 1: 1 × anyone but the requester" in filed.body
    assert f"Expires    {request.expires_at.isoformat()}" in filed.body
    assert '"subject": "Quarterly numbers"' in filed.body  # the preview
    assert f"Approve:  hitl approve {rid}\n" in filed.body
    assert f'Reject:   hitl reject {rid} --reason "…"\n' in filed.body
    assert filed.message_id is not None and filed.message_id.endswith(f".{rid}@hitl-mcp>")
    failure = by_subject[f"[hitl] Failed: send_email request {rid[:10]}: {request.summary}"]
    assert "Error      SMTP delivery failed" in failure.body and "Not today" in failure.body
    assert "hitl approve" not in failure.body and f"Details:  hitl show {rid}" in failure.body


async def test_notifications_come_from_their_own_sender_and_the_agents_mail_from_its_own(
    configure: Configure, smtp: SmtpSink
) -> None:
    settings = configure(entry(["filed", "executed"], email="oncall@example.com", sender="hitl@corp.example"))
    email = {"to": "bob@corp.com", "subject": "Quarterly numbers", "body": "attached"}
    async with open_gate(settings) as gate:
        request = await gate.file("send_email", email, "agent")
        executed = await gate.approve(request.request_id, "alice")
        assert executed.status is Status.EXECUTED
        async with delivering(gate):
            messages = await smtp.wait_for_async(3)

    by_recipient = {m.rcpt_tos: m for m in messages if m.rcpt_tos != ("oncall@example.com",)}
    [agents_mail] = by_recipient.values()
    assert agents_mail.rcpt_tos == ("bob@corp.com",) and agents_mail.mail_from == "agent@example.com"
    notifications = [m for m in messages if m.rcpt_tos == ("oncall@example.com",)]
    assert len(notifications) == 2
    assert all(m.mail_from == "hitl@corp.example" for m in notifications)
    assert all(str(m.message["From"]) == "hitl@corp.example" for m in notifications)


def test_two_entries_for_one_address_must_share_its_sender(configure: Configure) -> None:
    with pytest.raises(ConfigError, match=r"notify\[1\]\.sender: notify\[0\] sends to the same address"):
        configure(
            entry(["filed"], email="a@example.com", sender="x@example.com")
            + entry(["failed"], email="a@example.com")
        )


async def test_tools_levels_and_roles_choose_who_hears_of_what(
    configure: Configure, receiver: Receiver
) -> None:
    settings = configure(
        entry(["filed", "approved"], webhook=receiver.url("/risk"), roles=["risk_manager"])
        + entry(["filed", "approved"], webhook=receiver.url("/second"), levels=[2])
        + entry(["filed", "expired"], webhook=receiver.url("/email"), tools=["send_email"])
        + entry(["rejected"], webhook=receiver.url("/risk"), roles=["risk_manager"])
    )
    async with open_gate(settings) as gate:
        big = await gate.file("buy_stock", BIG_BUY, "agent")
        await gate.approve(big.request_id, "alice")  # now waits on level 2, the risk manager's
        other = await gate.file("buy_stock", BIG_BUY, "agent")
        await gate.reject(other.request_id, "alice", "no")
        mail = await gate.file("send_email", {"to": "bob@corp.com", "subject": "s", "body": "b"}, "agent")

    routed = {
        (row["request_id"], row["event"], row["label"].rsplit("/", 1)[-1]) for row in outbox(settings.db_path)
    }
    assert routed == {
        (big.request_id, "approved", "risk"),  # the level it now waits on admits risk managers
        (big.request_id, "approved", "second"),  # ... and is its second
        (other.request_id, "rejected", "risk"),  # decided: every level of its policy is in question
        (mail.request_id, "filed", "risk"),  # the default level admits anyone, risk managers too
        (mail.request_id, "filed", "email"),
    }


async def test_escalation_and_expiry_are_announced(configure: Configure) -> None:
    settings = configure(entry(["escalated", "expired"], email="desk@example.com", roles=["trader"]))
    async with open_gate(settings) as gate:
        request = await gate.file("buy_stock", BIG_BUY, "agent")
        assert await gate.store.escalate_due(time.time() + 601) == [request.request_id]
        assert await gate.store.expire_overdue(time.time() + 7200) == [request.request_id]

    escalated, expired = [json.loads(row["payload"]) for row in outbox(settings.db_path)]
    rid = request.request_id
    assert (
        render.headline(escalated) == f"Escalated: buy_stock request {rid[:10]} still waits at level 1 of 2"
    )
    assert "Status     pending (escalated)" in render.text(escalated)
    assert f"Approve:  hitl approve {rid}" in render.text(escalated)
    assert render.headline(expired) == f"Expired without a decision: buy_stock request {rid[:10]}"
    assert "hitl approve" not in render.text(expired) and "Waits on" not in render.text(expired)


# -- retries, dead deliveries, `hitl notify` -----------------------------------------------------------


async def test_a_receiver_that_fails_at_first_gets_the_message_once(
    configure: Configure, receiver: Receiver
) -> None:
    receiver.fail_first["/flaky"] = 2
    settings = configure(f'\n[[notify]]\non = ["filed"]\nwebhook = "{receiver.url("/flaky")}"\n')
    async with open_gate(settings) as gate, delivering(gate):
        await gate.file("buy_stock", BIG_BUY, "agent")
        [hit] = await receiver.wait_ok("/flaky", 1)
        await until(lambda: outbox(settings.db_path)[0]["state"] == "delivered")

    assert [h.status for h in receiver.attempts("/flaky")] == [503, 503, 200]
    assert {h.delivery for h in receiver.attempts("/flaky")} == {hit.delivery}
    [row] = outbox(settings.db_path)
    assert row["attempts"] == 3 and row["claim"] is None and row["delivered_at"] is not None


async def test_a_receiver_that_always_fails_makes_a_dead_delivery_that_can_be_retried(
    configure: Configure, receiver: Receiver, env: dict[str, str]
) -> None:
    receiver.always["/down"] = 500
    settings = configure(f'\n[[notify]]\non = ["filed"]\nwebhook = "{receiver.url("/down")}"\n')
    async with open_gate(settings) as gate:
        request = await gate.file("buy_stock", BIG_BUY, "agent")
        async with delivering(gate):
            await until(lambda: outbox(settings.db_path)[0]["state"] == "dead")
        assert len(receiver.attempts("/down")) == FAST.max_attempts

        code, text, _ = await hitl(env, "notify", "status")
        assert code == 0
        lines = text.splitlines()
        assert lines[0] == "pending 0  delivered 0  dead 1"
        [dead] = [line for line in lines if line.startswith("1 ")]
        assert (
            "filed" in dead and request.request_id[:10] in dead and "attempt 3: HTTP 500 from webhook" in dead
        )
        code, as_json, _ = await hitl(env, "notify", "status", "--json")
        report = json.loads(as_json)
        assert report["counts"] == {"pending": 0, "delivered": 0, "dead": 1}
        assert report["dead"][0]["last_error"] == (
            f"attempt 3: HTTP 500 from webhook {receiver.url('/down')}: receiver says no"
        )

        assert (await hitl(env, "notify", "retry", "2"))[0] == 4  # no such dead delivery
        receiver.always.pop("/down")
        code, text, _ = await hitl(env, "notify", "retry", "1")
        assert (code, text) == (0, "requeued 1 delivery: 1\n")
        async with delivering(gate):
            await receiver.wait_ok("/down", 1)
            await until(lambda: outbox(settings.db_path)[0]["state"] == "delivered")

    code, text, _ = await hitl(env, "notify", "status")
    assert text.splitlines() == ["pending 0  delivered 1  dead 0"]


# -- restarts and several workers ---------------------------------------------------------------------


async def test_a_restart_loses_nothing_and_sends_nothing_twice(
    configure: Configure, receiver: Receiver
) -> None:
    settings = configure(f'\n[[notify]]\non = ["filed"]\nwebhook = "{receiver.url("/hook")}"\n')
    async with open_gate(settings) as gate:
        async with delivering(gate):
            for _ in range(3):
                await gate.file("buy_stock", BIG_BUY, "agent")
            await receiver.wait_ok("/hook", 3)
            await until(lambda: [row["state"] for row in outbox(settings.db_path)] == ["delivered"] * 3)
        for _ in range(2):  # filed while no worker runs: the server is down
            await gate.file("buy_stock", BIG_BUY, "agent")
        assert [row["state"] for row in outbox(settings.db_path)] == ["delivered"] * 3 + ["pending"] * 2

    async with open_gate(settings) as restarted:
        async with delivering(restarted):
            await receiver.wait_ok("/hook", 5)
            await until(lambda: all(row["state"] == "delivered" for row in outbox(settings.db_path)))
        assert await deliver_due(restarted, policy=FAST) == 0

    assert Counter(hit.delivery for hit in receiver.attempts("/hook")) == {str(n): 1 for n in range(1, 6)}


async def test_a_worker_that_died_holding_a_row_delays_it_by_its_lease_only(
    configure: Configure, receiver: Receiver
) -> None:
    settings = configure(f'\n[[notify]]\non = ["filed"]\nwebhook = "{receiver.url("/hook")}"\n')
    async with open_gate(settings) as gate:
        await gate.file("buy_stock", BIG_BUY, "agent")
        store = gate.store
        assert isinstance(store, SQLiteStore)
        [claimed] = await store.outbox_claim("crashed:1", time.time(), 10, lease_seconds=0.5)
        assert await store.outbox_claim("other:2", time.time(), 10, lease_seconds=0.5) == []

        async with delivering(gate):
            [hit] = await receiver.wait_ok("/hook", 1)
            await until(lambda: outbox(settings.db_path)[0]["state"] == "delivered")
        # The dead worker's late mark changes nothing: its claim is gone.
        assert not await store.outbox_delivered(claimed.row_id, claimed.claim, time.time())

    assert hit.delivery == str(claimed.row_id) and len(receiver.attempts("/hook")) == 1
    assert outbox(settings.db_path)[0]["attempts"] == 2


async def test_a_worker_stopped_mid_send_hands_the_row_back(configure: Configure, receiver: Receiver) -> None:
    receiver.held["/slow"] = threading.Event()
    settings = configure(f'\n[[notify]]\non = ["filed"]\nwebhook = "{receiver.url("/slow")}"\n')
    async with open_gate(settings) as gate:
        async with delivering(gate):
            await gate.file("buy_stock", BIG_BUY, "agent")
            await receiver.wait_arrivals("/slow", 1)
        [row] = outbox(settings.db_path)
        assert (row["state"], row["claim"], row["lease_until"], row["attempts"]) == ("pending", None, None, 1)

        receiver.held.pop("/slow").set()
        async with delivering(gate):
            await until(lambda: outbox(settings.db_path)[0]["state"] == "delivered")

    # Whether the first, interrupted send arrived was unknown: at least once, never lost.
    assert receiver.arrivals.count("/slow") == 2


async def test_two_workers_on_one_store_never_send_the_same_row(
    configure: Configure, receiver: Receiver
) -> None:
    settings = configure(f'\n[[notify]]\non = ["filed"]\nwebhook = "{receiver.url("/hook")}"\n')
    policy = DeliveryPolicy(
        batch=2, poll_seconds=0.005, idle_seconds=0.1, timeout_seconds=5, lease_seconds=10
    )
    async with (
        open_gate(settings) as one,
        open_gate(settings) as two,
        delivering(one, policy),
        delivering(two, policy),
    ):
        for index in range(20):
            await (one if index % 2 else two).file("buy_stock", BIG_BUY, "agent")
        await receiver.wait_ok("/hook", 20)
        await until(lambda: all(row["state"] == "delivered" for row in outbox(settings.db_path)))

    assert Counter(hit.delivery for hit in receiver.attempts("/hook")) == {str(n): 1 for n in range(1, 21)}
    assert {row["attempts"] for row in outbox(settings.db_path)} == {1}


async def test_without_notifiers_the_worker_returns_at_once_and_the_outbox_stays_empty(
    settings: Settings, gate: Gate
) -> None:
    with anyio.fail_after(1):
        await deliver_forever(gate)
    await gate.file("buy_stock", BIG_BUY, "agent")
    assert outbox(settings.db_path) == []


# -- keep the helpers honest ----------------------------------------------------------------------------


def test_the_receiver_checks_signatures(receiver: Receiver) -> None:
    import httpx2

    receiver.secrets["/x"] = SECRET
    body = b'{"a": 1}'
    good = {"X-Hitl-Signature": "sha256=" + _hmac(SECRET, body)}
    with httpx2.Client() as http:
        assert http.post(receiver.url("/x"), content=body, headers=good).status_code == 200
        assert (
            http.post(receiver.url("/x"), content=body, headers={"X-Hitl-Signature": "sha256=00"}).status_code
            == 401
        )


async def test_a_running_server_delivers_what_its_agents_file(
    configure: Configure, receiver: Receiver
) -> None:
    settings = configure(entry(["filed"], webhook=receiver.url("/server")))

    async with Client(build_server(settings, principal="agent")) as client:
        filed = await client.call_tool("buy_stock", {"symbol": "GOOGL", "quantity": 100, "price": 150.0})
        [hit] = await receiver.wait_ok("/server", 1)

    assert filed.structured_content is not None
    assert filed.structured_content["request_id"] in hit.body.decode()


async def test_delivered_rows_are_forgotten_after_the_retention_and_dead_ones_kept(
    configure: Configure, receiver: Receiver
) -> None:
    receiver.always["/gone"] = 410
    settings = configure(
        entry(["filed"], webhook=receiver.url("/ok")) + entry(["filed"], webhook=receiver.url("/gone"))
    )
    forgetful = dataclasses.replace(FAST, retention_seconds=0.0, prune_every_seconds=0.0)
    async with open_gate(settings) as gate, delivering(gate, forgetful):
        await gate.file("buy_stock", BIG_BUY, "agent")
        await receiver.wait_ok("/ok", 1)
        # The next pass of the worker forgets the delivered row; the dead one stays for a person to see.
        await until(lambda: [row["state"] for row in outbox(settings.db_path)] == ["dead"])

    with sqlite3.connect(settings.db_path) as conn:
        assert conn.execute("SELECT count(*) FROM audit WHERE event = 'filed'").fetchone()[0] == 1


async def test_messages_link_to_the_request_page_when_the_inbox_has_a_public_url(
    configure: Configure, receiver: Receiver
) -> None:
    settings = configure(
        f'\n[[notify]]\non = ["filed"]\nwebhook = "{receiver.url("/hook")}"\n'
        '\n[web]\npublic_url = "https://approvals.example.com/hitl"\n'
    )
    async with open_gate(settings) as gate:
        request = await gate.file("buy_stock", BIG_BUY, "agent")
        async with delivering(gate):
            [hit] = await receiver.wait_ok("/hook", 1)

    page = f"https://approvals.example.com/hitl/requests/{request.request_id}"
    assert page in hit.json["text"]
    assert hit.json["url"] == page
