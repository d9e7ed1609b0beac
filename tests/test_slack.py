"""Approving from Slack: a real `hitl serve --http` posts to a stand-in for Slack's Web API, and presses
reach `/slack/interactions` signed exactly as Slack signs them. Every face's rules hold: who may decide,
the requester never, expiry, exactly once, and a request decided elsewhere is never decided again."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import httpx2
import pytest

from tests.cli_in_process import hitl
from tests.environment import process_env, write_config
from tests.slack_standin import BOT_TOKEN, SIGNING_SECRET, Call, SlackStandIn, press, signed, submission
from tests.test_auth import connect, serving
from tests.test_cli import BUY, free_port, statuses
from tests.test_server import ok

CHANNEL = "C0APPROVALS"
HOSTILE_SUBJECT = "<!channel> wire it now & <https://evil.example|your bank> \u202etxt.exe"


@dataclass
class Slack:
    standin: SlackStandIn
    url: str
    """The server's MCP URL; its interactions are beside it."""
    env: dict[str, str]
    db: Path
    ledger: Path

    @property
    def interactions(self) -> str:
        return self.url.removesuffix("/mcp") + "/slack/interactions"

    async def file(self, tool: str = "buy_stock", arguments: dict[str, Any] | None = None) -> str:
        async with connect(self.url, None) as agent:
            filed = ok(await agent.call_tool(tool, arguments or BUY))
        request_id: str = filed["request_id"]
        return request_id

    async def send(self, payload: dict[str, Any]) -> httpx2.Response:
        body, headers = signed(payload)
        async with httpx2.AsyncClient(timeout=30) as http:
            return await http.post(self.interactions, content=body, headers=headers)

    def posted(self, request_id: str) -> Call:
        """The message posted about `request_id`, once it is."""
        return _posts_about(
            self.standin.wait_for(lambda calls: bool(_posts_about(calls, request_id))), request_id
        )[0]

    def message_ts(self, request_id: str) -> str:
        """The `ts` hitl recorded for the message it posted about `request_id` (what it updates)."""
        self.posted(request_id)
        deadline = time.monotonic() + 30
        while True:
            with sqlite3.connect(self.db) as conn:
                rows = conn.execute(
                    "SELECT ts FROM slack_messages WHERE request_id = ?", (request_id,)
                ).fetchall()
            if rows:
                return str(rows[0][0])
            assert time.monotonic() < deadline, "the posted message was never recorded"
            time.sleep(0.05)

    def heard(self, user: str) -> int:
        """How many ephemeral messages `user` has had so far (for `told`)."""
        return len(_ephemerals(self.standin.calls, user))

    def told(self, user: str, after: int, count: int = 1) -> list[str]:
        """The ephemeral messages `user` got after the first `after`, once there are `count` of them."""
        calls = self.standin.wait_for(lambda calls: len(_ephemerals(calls, user)) >= after + count)
        return _ephemerals(calls, user)[after:]

    def status(self, request_id: str) -> str:
        return statuses(self.db)[request_id]

    def wait_status(self, request_id: str, wanted: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.status(request_id) != wanted:
            assert time.monotonic() < deadline, f"{request_id} is {self.status(request_id)}, not {wanted}"
            time.sleep(0.05)

    def wait_delivered(self, request_id: str, timeout: float = 30.0) -> None:
        """Until every notification row of `request_id` is delivered (none pending, none dead)."""
        deadline = time.monotonic() + timeout
        while True:
            with sqlite3.connect(self.db) as conn:
                states = [
                    row[0]
                    for row in conn.execute("SELECT state FROM outbox WHERE request_id = ?", (request_id,))
                ]
            if states and all(state == "delivered" for state in states):
                return
            assert time.monotonic() < deadline, f"notifications of {request_id}: {states}"
            time.sleep(0.05)

    def orders(self) -> int:
        if not self.ledger.exists():
            return 0
        with sqlite3.connect(self.ledger) as conn:
            count: int = conn.execute("SELECT count(*) FROM orders").fetchone()[0]
            return count


def _posts_about(calls: list[Call], request_id: str) -> list[Call]:
    return [c for c in calls if c.method == "chat.postMessage" and request_id in json.dumps(c.body)]


def _ephemerals(calls: list[Call], user: str) -> list[str]:
    return [str(c.body["text"]) for c in calls if c.method == "chat.postEphemeral" and c.body["user"] == user]


def _buttons(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        element for block in body["blocks"] if block["type"] == "actions" for element in block["elements"]
    ]


def _updates(calls: list[Call], ts: str) -> list[Call]:
    return [c for c in calls if c.method == "chat.update" and c.body["ts"] == ts]


@pytest.fixture(scope="module")
def slack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slack]:
    folder = tmp_path_factory.mktemp("slack")
    port = free_port()
    with SlackStandIn().running() as standin:
        config = write_config(
            folder / "hitl.toml",
            smtp_port=free_port(),
            extra=f"""
[web]
public_url = "http://127.0.0.1:{port}"

[slack]
bot_token = "${{SLACK_BOT_TOKEN}}"
signing_secret = "${{SLACK_SIGNING_SECRET}}"
api_url = "{standin.url}"

[[notify]]
on = ["filed"]
slack_channel = "{CHANNEL}"

[principals.alice]
roles = ["trader"]
slack_user = "U0ALICE"
[principals.bob]
roles = ["trader"]
slack_user = "U0BOB"
[principals.carol]
slack_user = "U0CAROL"
[principals.agent]
slack_user = "U0AGENT"

[policy.buy_stock]
rules = [{{ levels = [{{ roles = ["trader"], count = 1 }}] }}]

[policy.send_email]
rules = [{{ levels = [{{ roles = ["trader"], count = 1 }}] }}]
ttl_seconds = 2
""",
        )
        env = process_env(folder, config) | {
            "SLACK_BOT_TOKEN": BOT_TOKEN,
            "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        }
        with serving(env, folder / "server.log", port=port) as url:
            yield Slack(standin, url, env, folder / "hitl.db", folder / "ledger.db")


async def test_a_filed_request_is_posted_with_buttons_naming_only_the_request(slack: Slack) -> None:
    request_id = await slack.file()
    post = slack.posted(request_id)

    assert post.body["channel"] == CHANNEL
    assert post.authorization == f"Bearer {BOT_TOKEN}"
    text = json.dumps(post.body["blocks"])
    assert "GOOGL" in text and "trader" in text and "Time left" in text
    buttons = {button["text"]["text"]: button for button in _buttons(post.body)}
    assert set(buttons) == {"Approve", "Reject", "Open in inbox"}
    assert buttons["Approve"]["value"] == buttons["Reject"]["value"] == request_id
    assert buttons["Open in inbox"]["url"].endswith(f"/requests/{request_id}")


async def test_agent_text_is_shown_as_text_in_slack_never_as_a_mention_link_or_hidden_character(
    slack: Slack,
) -> None:
    request_id = await slack.file(
        "send_email", {"to": "bob@example.com", "subject": HOSTILE_SUBJECT, "body": "hello"}
    )
    sent = json.dumps(slack.posted(request_id).body, ensure_ascii=False)

    assert "&lt;!channel&gt;" in sent and "&lt;https://evil.example|your bank&gt;" in sent
    assert "<!channel>" not in sent and "<https://evil" not in sent and "\u202e" not in sent
    assert "\\\\u202e" in sent  # the override shown as an escape (JSON doubles the backslash)


async def test_approving_by_a_press_runs_the_action_once_and_updates_the_message_for_everyone(
    slack: Slack,
) -> None:
    request_id = await slack.file()
    ts = slack.message_ts(request_id)
    before, heard = slack.orders(), slack.heard("U0ALICE")

    started = time.monotonic()
    answer = await slack.send(press("hitl_approve", request_id, "U0ALICE"))
    assert answer.status_code == 200 and time.monotonic() - started < 3

    slack.wait_status(request_id, "executed")
    assert slack.orders() == before + 1
    calls = slack.standin.wait_for(
        lambda calls: any("Executed" in json.dumps(c.body) for c in _updates(calls, ts))
    )
    updates = _updates(calls, ts)
    assert all(c.body["channel"] == CHANNEL and not _buttons(c.body) for c in updates)
    assert any("alice" in json.dumps(c.body) for c in updates)
    assert "You approved" in slack.told("U0ALICE", heard)[0]


async def test_reject_asks_for_a_reason_in_a_modal_and_its_submission_rejects_with_that_reason(
    slack: Slack,
) -> None:
    request_id = await slack.file()
    ts = slack.message_ts(request_id)

    assert (await slack.send(press("hitl_reject", request_id, "U0BOB"))).status_code == 200
    [opened] = [
        c
        for c in slack.standin.wait_for(lambda calls: bool(_modals(calls, request_id)))
        if c in _modals(slack.standin.calls, request_id)
    ]
    assert opened.body["trigger_id"] == f"trigger-U0BOB-{request_id[:8]}"
    view = opened.body["view"]

    empty = await slack.send(submission(view, "U0BOB", "   "))
    assert empty.json() == {"response_action": "errors", "errors": {"reason": "A rejection needs a reason."}}
    assert slack.status(request_id) == "pending"

    assert (await slack.send(submission(view, "U0BOB", "too risky <today>"))).status_code == 200
    slack.wait_status(request_id, "rejected")
    shown = hitl(slack.env, "show", request_id, "--json")
    assert "too risky <today>" in shown.stdout and "bob" in shown.stdout
    calls = slack.standin.wait_for(lambda calls: bool(_updates(calls, ts)))
    [update] = _updates(calls, ts)
    assert "Rejected by bob" in json.dumps(update.body) and not _buttons(update.body)


def _modals(calls: list[Call], request_id: str) -> list[Call]:
    return [c for c in calls if c.method == "views.open" and request_id in c.body["view"]["private_metadata"]]


@pytest.mark.parametrize(
    "forge",
    ["another secret", "ten minutes old", "no signature", "a timestamp that is no number", "body changed"],
)
async def test_a_forged_stale_or_malformed_request_is_refused_401_and_decides_nothing(
    slack: Slack, forge: str
) -> None:
    request_id = await slack.file()
    slack.posted(request_id)
    body, headers = signed(press("hitl_approve", request_id, "U0ALICE"))
    if forge == "another secret":
        body, headers = signed(press("hitl_approve", request_id, "U0ALICE"), secret="not the app's")
    elif forge == "ten minutes old":
        body, headers = signed(press("hitl_approve", request_id, "U0ALICE"), at=time.time() - 600)
    elif forge == "no signature":
        del headers["X-Slack-Signature"]
    elif forge == "a timestamp that is no number":
        headers["X-Slack-Request-Timestamp"] = "soon"
    else:
        body = body.replace(b"U0ALICE", b"U0BOB00")
    before = len(slack.standin.calls)

    async with httpx2.AsyncClient(timeout=30) as http:
        answer = await http.post(slack.interactions, content=body, headers=headers)

    # A 401 carries no background work: the press is refused before anything is scheduled.
    assert answer.status_code == 401
    assert slack.status(request_id) == "pending"
    assert [c.method for c in slack.standin.calls[before:] if c.method == "chat.postEphemeral"] == []


@pytest.mark.parametrize(
    ("user", "words"),
    [
        ("U0NOBODY", "is not a hitl principal"),
        ("U0AGENT", "own request"),
        ("U0CAROL", "trader"),
    ],
    ids=["unmapped user", "the requester", "without the level's role"],
)
async def test_a_press_the_gate_refuses_is_told_to_the_presser_alone_and_decides_nothing(
    slack: Slack, user: str, words: str
) -> None:
    request_id = await slack.file()
    slack.posted(request_id)
    heard = slack.heard(user)

    assert (await slack.send(press("hitl_approve", request_id, user))).status_code == 200

    [said] = slack.told(user, heard)
    assert said.startswith("Nothing was decided") and words in said, said
    assert slack.status(request_id) == "pending"
    ephemeral = [c for c in slack.standin.calls if c.method == "chat.postEphemeral"][-1]
    assert ephemeral.body["channel"] == CHANNEL and ephemeral.body["user"] == user


async def test_a_press_on_the_message_of_a_request_decided_elsewhere_changes_nothing_and_says_so(
    slack: Slack,
) -> None:
    request_id = await slack.file()
    slack.posted(request_id)
    decided = hitl(slack.env, "reject", request_id, "--reason", "not today", "--as", "alice")
    assert decided.returncode == 0, decided.stderr
    heard = slack.heard("U0BOB")

    await slack.send(press("hitl_approve", request_id, "U0BOB"))
    await slack.send(press("hitl_reject", request_id, "U0BOB"))

    approve_said, reject_said = slack.told("U0BOB", heard, 2)
    assert "rejected" in approve_said and approve_said.startswith("Nothing was decided"), approve_said
    assert "already rejected" in reject_said, reject_said
    assert slack.status(request_id) == "rejected"
    assert not _modals(slack.standin.calls, request_id)


async def test_a_press_after_the_request_expired_is_refused_and_the_message_says_it_expired(
    slack: Slack,
) -> None:
    request_id = await slack.file("send_email", {"to": "bob@example.com", "subject": "hi", "body": "hello"})
    ts = slack.message_ts(request_id)
    slack.wait_status(request_id, "expired")
    heard = slack.heard("U0ALICE")

    await slack.send(press("hitl_approve", request_id, "U0ALICE"))

    [said] = slack.told("U0ALICE", heard)
    assert "expired" in said and said.startswith("Nothing was decided"), said
    calls = slack.standin.wait_for(lambda calls: bool(_updates(calls, ts)))
    assert "Expired" in json.dumps(_updates(calls, ts)[-1].body)
    assert slack.status(request_id) == "expired"


async def test_two_presses_racing_decide_once_and_run_the_action_once(slack: Slack) -> None:
    request_id = await slack.file()
    slack.posted(request_id)
    before = slack.orders()
    heard = {user: slack.heard(user) for user in ("U0ALICE", "U0BOB")}

    async with anyio.create_task_group() as tasks:
        for user in ("U0ALICE", "U0BOB"):
            tasks.start_soon(slack.send, press("hitl_approve", request_id, user))

    slack.wait_status(request_id, "executed")
    answers = [slack.told(user, heard[user])[0] for user in ("U0ALICE", "U0BOB")]
    assert sorted(a.startswith("You approved") for a in answers) == [False, True], answers
    assert slack.orders() == before + 1


async def test_a_post_slack_fails_is_retried_by_the_outbox(slack: Slack) -> None:
    slack.standin.fail("chat.postMessage", 1)
    request_id = await slack.file()

    calls = slack.standin.wait_for(lambda calls: len(_posts_about(calls, request_id)) == 2)
    assert len(_posts_about(calls, request_id)) == 2
    slack.message_ts(request_id)  # the second attempt's message is the one recorded


async def test_a_request_decided_while_slack_was_failing_is_not_posted_with_buttons_afterwards(
    slack: Slack,
) -> None:
    # Slack fails until the decision is in, however long `hitl reject` takes on a busy machine (a single
    # failure let a retry two seconds later win the race): the attempt after it must find it decided.
    slack.standin.fail("chat.postMessage", 1000)
    request_id = await slack.file()
    slack.posted(request_id)  # a failed attempt; the outbox retries with backoff
    decided = hitl(slack.env, "reject", request_id, "--reason", "handled on the phone", "--as", "alice")
    assert decided.returncode == 0, decided.stderr
    failed = len(_posts_about(slack.standin.calls, request_id))
    slack.standin.fail("chat.postMessage", 0)

    slack.wait_delivered(request_id)

    assert len(_posts_about(slack.standin.calls, request_id)) == failed
    with sqlite3.connect(slack.db) as conn:
        assert (
            conn.execute("SELECT * FROM slack_messages WHERE request_id = ?", (request_id,)).fetchall() == []
        )
