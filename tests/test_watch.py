"""`hitl watch` on a real terminal: the queue updates live, and decisions are made from its prompt."""

from __future__ import annotations

import sqlite3

from hitl_mcp.config import Settings
from tests.terminal import Terminal
from tests.test_cli import HITL, file_request

BUY = {"symbol": "GOOGL", "quantity": 10, "price": 150.0}
EMAIL = {"to": "gail@example.org", "subject": "Minutes", "body": "Attached."}


def status(settings: Settings, request_id: str) -> str:
    with sqlite3.connect(settings.db_path) as conn:
        found: str = conn.execute("SELECT status FROM requests WHERE id = ?", (request_id,)).fetchone()[0]
        return found


def test_watch_shows_new_requests_as_they_arrive_and_decides_from_the_prompt(
    env: dict[str, str], settings: Settings
) -> None:
    first = file_request(settings, "buy_stock", BUY)
    with Terminal([HITL, "watch", "--as", "alice"], env) as terminal:
        terminal.expect("Buy 10 GOOGL")
        terminal.expect("> ")

        second = file_request(settings, "send_email", EMAIL)
        arrived = terminal.expect("Email gail@example.org")
        assert "2 waiting" in arrived

        terminal.send(f"a {first[:8]} fine by me")
        decided = terminal.expect("1 waiting")
        assert "executed" in decided

        terminal.send(f"r {second[:8]} not today")
        terminal.expect("Nothing is waiting for a decision.")

        terminal.send(f"a {first[:8]}")
        assert "not pending" in terminal.expect("refused:")

        terminal.send("q")
        assert terminal.wait() == 0

    assert status(settings, first) == "executed"
    assert status(settings, second) == "rejected"


def test_watch_refuses_a_principal_deciding_its_own_request(env: dict[str, str], settings: Settings) -> None:
    request_id = file_request(settings, "buy_stock", BUY)
    with Terminal([HITL, "watch", "--as", "agent"], env) as terminal:
        terminal.expect("> ")
        terminal.send(f"a {request_id[:8]}")
        assert "may not decide its own request" in terminal.expect("refused:") + terminal.expect("> ")
        terminal.send("q")
        terminal.wait()

    assert status(settings, request_id) == "pending"
