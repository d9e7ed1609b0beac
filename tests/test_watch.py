"""`hitl watch` on a real terminal: the queue updates live, and decisions are made from its prompt.

The terminal is a pseudo-terminal that `hitl watch` has as its controlling terminal, with a window size,
so Ctrl-C, the width and the typed keys reach it exactly as from a person's shell.
"""

from __future__ import annotations

import sqlite3
import subprocess
import termios
import unicodedata

from hitl_mcp.config import Settings
from tests.terminal import Terminal
from tests.test_cli import HITL, file_request, hitl

BUY = {"symbol": "GOOGL", "quantity": 10, "price": 150.0}
EMAIL = {"to": "gail@example.org", "subject": "Minutes", "body": "Attached."}
# Text an agent controls, built to disturb a terminal: a right-to-left override, a NUL, an ESC sequence,
# wide characters, and lengths no row or line could hold.
LONG_EMAIL = {
    "to": "gail@example.org",
    "subject": "Q3 figures \u202e" + "ever longer subject " * 8,
    "body": "Dear Gail,\u202e\u2028" + "the numbers are attached " * 20 + "\n" + "会議の議事録" * 20,
}
LONG_DELETE = {"table": "users", "condition": "email = '\u202e" + "a" * 150 + "\x00\x1b[31m'"}


def status(settings: Settings, request_id: str) -> str:
    with sqlite3.connect(settings.db_path) as conn:
        found: str = conn.execute("SELECT status FROM requests WHERE id = ?", (request_id,)).fetchone()[0]
        return found


def columns_of(line: str) -> int:
    """Display columns as a terminal counts them, measured here rather than by the code under test."""
    return sum(
        0 if unicodedata.combining(char) else 2 if unicodedata.east_asian_width(char) in "WF" else 1
        for char in line
    )


def screen_lines(screen: str) -> list[str]:
    # The terminal turns \n into \r\n; a keystroke rewrites the prompt line with \r and erase-to-end, so
    # a line shows what follows its last carriage return.
    lines = screen.replace("\x1b[K", "").split("\n")
    return [line.rstrip("\r").rpartition("\r")[2] for line in lines]


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
        decided = terminal.expect_on_screen(f"{first[:10]} executed")
        assert "1 waiting" in decided

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
        terminal.expect("refused:")
        # The message is folded at spaces to fit the screen; read it with the folds undone.
        assert "may not decide its own request" in " ".join(terminal.expect_on_screen("> ").split())
        terminal.send("q")
        terminal.wait()

    assert status(settings, request_id) == "pending"


def test_ctrl_c_ends_watch_at_once_cleanly_and_gives_the_terminal_back(
    env: dict[str, str], settings: Settings
) -> None:
    file_request(settings, "buy_stock", BUY)
    with Terminal([HITL, "watch", "--as", "alice"], env) as terminal:
        before = terminal.mode()
        terminal.expect("Buy 10 GOOGL")
        terminal.press("a half-typed comm")
        terminal.expect("half-typed comm")
        watching = terminal.mode()

        terminal.press(b"\x03")
        assert terminal.wait(timeout=5) == 0
        output = terminal.drain()
        after = terminal.mode()

    assert "Traceback" not in output and "KeyboardInterrupt" not in output
    # While watching, keys come one at a time and unechoed; afterwards the terminal is as it was.
    assert watching[3] & (termios.ICANON | termios.ECHO) == 0
    assert before[3] & (termios.ICANON | termios.ECHO) == termios.ICANON | termios.ECHO
    assert after == before


def test_a_half_typed_line_survives_a_redraw_and_enter_then_runs_it(
    env: dict[str, str], settings: Settings
) -> None:
    first = file_request(settings, "buy_stock", BUY)
    with Terminal([HITL, "watch", "--as", "alice"], env) as terminal:
        terminal.expect("Buy 10 GOOGL")
        # Edited the way people do: a line thrown away with Ctrl-U, a typo taken back with Backspace.
        terminal.press("r nonsense")
        terminal.press(b"\x15")
        terminal.press(f"s {first[:8]}x")
        terminal.press(b"\x7f")
        typed = f"> s {first[:8]}"
        terminal.expect(typed)

        file_request(settings, "send_email", EMAIL)  # the screen is redrawn for it
        terminal.expect_on_screen("Email gail@example.org")
        redrawn = terminal.expect_on_screen(typed)
        assert "Email gail@example.org" in redrawn and "2 waiting" in redrawn
        assert screen_lines(redrawn)[-1] == typed  # the prompt, with the line as it was left
        assert "nonsense" not in redrawn

        terminal.press(b"\r")
        shown = terminal.expect_on_screen(f"Request    {first}")
        assert "Status     pending" in shown
        terminal.send("q")
        assert terminal.wait() == 0


def test_a_shown_request_is_redrawn_when_it_is_decided_elsewhere(
    env: dict[str, str], settings: Settings
) -> None:
    request_id = file_request(settings, "send_email", EMAIL)
    with Terminal([HITL, "watch", "--as", "alice"], env) as terminal:
        terminal.expect("> ")
        terminal.send(f"s {request_id[:8]}")
        assert "Status     pending" in terminal.expect_on_screen(f"Request    {request_id}")

        rejected = hitl(env, "reject", request_id, "--as", "bob", "--reason", "not this week")
        assert rejected.returncode == 0, rejected.stderr

        shown = terminal.expect_on_screen("Status     rejected")
        assert "Decision   reject by bob" in shown and "'not this week'" in shown
        assert "Nothing is waiting for a decision." in shown
        terminal.send("q")
        assert terminal.wait() == 0


def test_every_line_fits_an_80_column_terminal_and_agent_text_shows_escaped(
    env: dict[str, str], settings: Settings
) -> None:
    email = file_request(settings, "send_email", LONG_EMAIL)
    delete = file_request(settings, "delete_database_records", LONG_DELETE)
    with Terminal([HITL, "watch", "--as", "alice"], env, columns=80) as terminal:
        terminal.expect("> ")
        terminal.send(f"s {email[:8]}")
        screen = terminal.expect_on_screen("会議")  # the body, at the end of the detail
        screen = terminal.expect_on_screen("> ")
        # A line typed longer than the screen shows its end, where the cursor is.
        terminal.press("r " + "y" * 100)
        terminal.expect("y" * 70)
        prompt = screen_lines(terminal.current())[-1]
        assert prompt.startswith("> …") and prompt.endswith("y" * 70) and columns_of(prompt) < 80
        terminal.press(b"\x15")
        terminal.send("q")
        assert terminal.wait() == 0
        output = terminal.screen

    lines = screen_lines(screen)
    too_wide = [line for line in lines if columns_of(line) > 80]
    assert not too_wide, too_wide
    rows = [line for line in lines if line.startswith((email[:10], delete[:10]))]
    assert len(rows) == 2 and all("…" in row for row in rows)  # the summaries, cut to fit
    assert "Q3 figures" in screen and "\\u202e" in screen and "\\u2028" in screen
    # Nothing the agent wrote reaches the terminal raw, in any redraw.
    assert "\u202e" not in output and "\u2028" not in output and "\x00" not in output
    assert "\x1b[31m" not in output


def test_a_wider_terminal_gets_wider_rows_but_never_wider_than_itself(
    env: dict[str, str], settings: Settings
) -> None:
    request_id = file_request(settings, "delete_database_records", LONG_DELETE)
    with Terminal([HITL, "watch", "--as", "alice"], env, columns=120) as terminal:
        screen = terminal.expect_on_screen("> ")
        terminal.send("q")
        assert terminal.wait() == 0

    [row] = [line for line in screen_lines(screen) if line.startswith(request_id[:10])]
    assert 80 < columns_of(row) <= 120
    assert all(columns_of(line) <= 120 for line in screen_lines(screen))


def test_commands_from_a_pipe_run_line_by_line_and_the_end_of_input_quits(
    env: dict[str, str], settings: Settings
) -> None:
    buy = file_request(settings, "buy_stock", BUY)
    email = file_request(settings, "send_email", EMAIL)

    # The last command has no newline: the end of input still completes it.
    script = f"r {email[:8]} not from a script\na {buy[:8]} scripted"
    piped = subprocess.run(
        [HITL, "watch", "--as", "alice"], env=env, input=script, capture_output=True, text=True, timeout=60
    )
    assert piped.returncode == 0, piped.stderr
    assert status(settings, email) == "rejected" and status(settings, buy) == "executed"

    empty = subprocess.run(
        [HITL, "watch", "--as", "alice"], env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=60
    )
    assert empty.returncode == 0, empty.stderr
    assert b"Traceback" not in empty.stderr


def test_a_resized_terminal_is_redrawn_to_its_new_width(env: dict[str, str], settings: Settings) -> None:
    request_id = file_request(settings, "delete_database_records", LONG_DELETE)

    def row_width(screen: str) -> int:
        rows = [line for line in screen_lines(screen) if line.startswith(request_id[:10])]
        return columns_of(rows[0]) if rows and screen.endswith("> ") else 0

    with Terminal([HITL, "watch", "--as", "alice"], env, columns=120) as terminal:
        terminal.until(lambda screen: row_width(screen) > 80)
        terminal.resize(60)
        narrowed = terminal.until(lambda screen: 0 < row_width(screen) <= 60)
        assert all(columns_of(line) <= 60 for line in screen_lines(narrowed))
        terminal.send("q")
        assert terminal.wait() == 0
