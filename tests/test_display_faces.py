"""Every face a person reads shows what the agent sent, escaped, and never lets it reorder the rest.

Requests are filed through the real gate with text built to mislead a reader: a right-to-left override
(U+202E) that would reverse the rest of a row, a line separator (U+2028), zero-width characters, NUL and
ESC sequences, and wide characters that a count of characters would misalign. `hitl` runs as a
subprocess (or on a pseudo-terminal where it asks), notifications go to a real SMTP server and a real HTTP
receiver, and each test checks that the raw character never reaches the reader while its escape does.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import pytest

from hitl_mcp.config import Settings, load_settings
from hitl_mcp.gate import open_gate
from tests.cli_in_process import hitl
from tests.smtp_sink import SmtpSink
from tests.terminal import Terminal
from tests.test_cli import HITL, file_request
from tests.test_notify import Receiver, delivering

RLO = "\u202e"
EMAIL = {
    "to": "gail@example.org",
    "subject": f"Minutes 会議の議事録 {RLO}fdp.exe",
    "body": f"Hello{RLO} there\u2028second line\u200b\r\nthird\tline",
}
DELETE = {"table": "users", "condition": f"email = 'x{RLO}\x00\x1b[31m'"}
BUY = {"symbol": "GOOGL", "quantity": 10, "price": 150.0}
RAW = (RLO, "\u2028", "\u200b", "\x00", "\x1b[31m")


def assert_nothing_raw(text: str) -> None:
    found = [char for char in RAW if char in text]
    assert not found, f"raw {found!r} in:\n{text}"


def display_cells(line: str) -> list[str]:
    """One entry per display column: a wide character fills its own column and an empty one after it."""
    cells: list[str] = []
    for char in line:
        if unicodedata.combining(char):
            continue
        cells.append(char)
        if unicodedata.east_asian_width(char) in "WF":
            cells.append("")
    return cells


def column_starts(header: str) -> list[int]:
    # Columns are two spaces apart; a header such as "WAITS ON" has one inside.
    cells = display_cells(header)
    return [i for i, cell in enumerate(cells) if cell != " " and (i == 0 or cells[i - 2 : i] == [" ", " "])]


@pytest.fixture
def notifying(config_file: Path, env: dict[str, str]) -> Iterator[tuple[Settings, Receiver]]:
    """Settings whose [[notify]] sends every filed request by email, to Slack and to a webhook."""
    receiver = Receiver()
    receiver.start()
    path = config_file.with_name("notify.toml")
    path.write_text(
        config_file.read_text(encoding="utf-8")
        + '\n[[notify]]\non = ["filed"]\nemail = "oncall@example.com"\n'
        + f'\n[[notify]]\non = ["filed"]\nslack_webhook = "{receiver.url("/slack")}"\n'
        + f'\n[[notify]]\non = ["filed"]\nwebhook = "{receiver.url("/hook")}"\n',
        encoding="utf-8",
    )
    env["HITL_CONFIG"] = str(path)
    try:
        yield load_settings(env), receiver
    finally:
        receiver.stop()


def test_list_escapes_agent_text_and_every_cell_starts_under_its_header(
    env: dict[str, str], settings: Settings
) -> None:
    file_request(settings, "send_email", EMAIL)
    file_request(settings, "delete_database_records", DELETE)
    file_request(settings, "buy_stock", BUY)

    listed = hitl(env, "list")

    assert listed.returncode == 0, listed.stderr
    assert_nothing_raw(listed.stdout)
    assert "\\u202efdp.exe" in listed.stdout and "\\u202e\\x00\\x1b[31m" in listed.stdout
    header, *rows = listed.stdout.splitlines()
    starts = column_starts(header)
    assert len(starts) == 8 and len(rows) == 3
    for row in rows:
        cells = display_cells(row)
        for start in starts[1:]:
            # Two spaces of gap, then the cell's first character, in the header's display column.
            assert cells[start - 2 : start] == [" ", " "] and cells[start] not in (" ", ""), (row, start)


def test_a_long_summary_is_cut_whole_escape_or_nothing(env: dict[str, str], settings: Settings) -> None:
    # `Email gail@example.org: "` is 25 columns and `hitl list` gives a summary 60: the escape would
    # straddle the cut, so it goes whole.
    subject = "x" * 31 + RLO + "y" * 20
    request_id = file_request(settings, "send_email", {**EMAIL, "subject": subject})

    listed = hitl(env, "list")

    [row] = [line for line in listed.stdout.splitlines() if line.startswith(request_id[:10])]
    assert 'Email gail@example.org: "' + "x" * 31 + "…  " in row
    assert "\\u20" not in row and RLO not in row


def test_show_prints_readable_json_with_every_hidden_character_escaped(
    env: dict[str, str], settings: Settings
) -> None:
    request_id = file_request(settings, "send_email", EMAIL)

    shown = hitl(env, "show", request_id)
    as_json = hitl(env, "show", request_id, "--json")

    assert shown.returncode == 0, shown.stderr
    assert_nothing_raw(shown.stdout)
    assert 'Summary    Email gail@example.org: "Minutes 会議の議事録 \\u202efdp.exe"' in shown.stdout
    # Inside the arguments and the preview: JSON that reads as text, with the escapes JSON would use.
    assert '"subject": "Minutes 会議の議事録 \\u202efdp.exe"' in shown.stdout
    assert '"body": "Hello\\u202e there\\u2028second line\\u200b\\r\\nthird\\tline"' in shown.stdout
    # --json is data: exactly what the agent sent.
    assert json.loads(as_json.stdout)["arguments"] == EMAIL


def test_the_approve_question_shows_agent_text_escaped(env: dict[str, str], settings: Settings) -> None:
    request_id = file_request(settings, "delete_database_records", DELETE)
    with Terminal([HITL, "approve", request_id, "--as", "alice"], env) as terminal:
        asked = terminal.expect("[y/N]")
        terminal.send("n")
        terminal.wait()

    assert_nothing_raw(terminal.screen)
    assert "Summary    Delete rows from users where email = 'x\\u202e\\x00\\x1b[31m'" in asked


def test_a_decision_reports_the_summary_escaped(env: dict[str, str], settings: Settings) -> None:
    request_id = file_request(settings, "send_email", EMAIL)

    rejected = hitl(env, "reject", request_id, "--as", "alice", "--reason", "not like this")

    assert rejected.returncode == 0, rejected.stderr
    assert_nothing_raw(rejected.stdout)
    assert rejected.stdout.startswith(f'{request_id} rejected: Email gail@example.org: "Minutes')
    assert "\\u202efdp.exe" in rejected.stdout


async def test_notifications_show_agent_text_escaped_and_the_webhook_keeps_the_data(
    notifying: tuple[Settings, Receiver], smtp: SmtpSink
) -> None:
    settings, receiver = notifying
    async with open_gate(settings) as gate, delivering(gate):
        request = await gate.file("send_email", EMAIL, "agent")
        [mail] = await smtp.wait_for_async(1)
        [slack] = await receiver.wait_ok("/slack", 1)
        [hook] = await receiver.wait_ok("/hook", 1)

    subject = str(mail.message["Subject"])
    assert_nothing_raw(subject)
    assert subject.endswith('"Minutes 会議の議事録 \\u202efdp.exe"')
    assert_nothing_raw(mail.body)
    assert 'Summary    Email gail@example.org: "Minutes 会議の議事録 \\u202efdp.exe"' in mail.body
    assert '"body": "Hello\\u202e there\\u2028second line\\u200b\\r\\nthird\\tline"' in mail.body

    message = slack.json
    texts = [message["text"], *(block["text"]["text"] for block in message["blocks"])]
    for text in texts:
        assert_nothing_raw(text)
    assert "\\u202efdp.exe" in message["text"]
    assert '*Summary:* Email gail@example.org: "Minutes 会議の議事録 \\u202efdp.exe"' in texts[2]

    # The webhook's JSON fields are data, exactly as filed; only its human-readable `text` is escaped.
    body = hook.json
    assert body["request"]["summary"] == request.summary and RLO in request.summary
    assert body["request"]["arguments"] == EMAIL
    assert_nothing_raw(body["text"])
    assert "\\u202efdp.exe" in body["text"]
