"""An action runs against what the approver was shown: the request records the target it was previewed
against, and only a process configured for that target runs it."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import pytest

from hitl_mcp.config import Settings, load_settings
from hitl_mcp.gate import open_gate
from hitl_mcp.models import Status
from tests.cli_in_process import hitl
from tests.conftest import USERS
from tests.environment import process_env, write_config
from tests.smtp_sink import SmtpSink
from tests.test_auth import serving
from tests.test_cli import statuses

DELETE = {"table": "users", "condition": "age < 30"}
BUY = {"symbol": "GOOGL", "quantity": 10, "price": 150.0}


def site(folder: Path, smtp_port: int, extra: str = "") -> Path:
    """A config in its own folder, with its own ledger and its own app.db (same rows everywhere)."""
    folder.mkdir()
    with sqlite3.connect(folder / "app.db") as conn:
        conn.execute(
            "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT, age INTEGER, status TEXT, "
            "last_login TEXT, deleted_at TEXT)"
        )
        conn.executemany("INSERT INTO users VALUES (?, ?, ?, ?, ?, ?)", USERS)
    conn.close()
    tables = '\n[actions.delete_database_records]\ndatabase = "app.db"\nallowed_tables = ["users"]\n'
    return write_config(folder / "hitl.toml", smtp_port=smtp_port, extra=tables + extra)


def user_count(database: Path) -> int:
    with sqlite3.connect(database) as conn:
        count: int = conn.execute("SELECT count(*) FROM users").fetchone()[0]
    conn.close()
    return count


def orders(ledger: Path) -> int:
    if not ledger.exists():
        return 0
    with sqlite3.connect(ledger) as conn:
        count: int = conn.execute("SELECT count(*) FROM orders").fetchone()[0]
    conn.close()
    return count


def file_as_agent(settings: Settings, tool: str, arguments: Mapping[str, Any]) -> str:
    async def run() -> str:
        async with open_gate(settings) as gate:
            request = await gate.file(tool, arguments, "agent")
            return request.request_id

    return anyio.run(run)


@pytest.fixture
def two_sites(tmp_path: Path, smtp: SmtpSink) -> tuple[dict[str, str], dict[str, str]]:
    """Two configurations over one store, each with its own app.db and ledger."""
    here = process_env(tmp_path, site(tmp_path / "here", smtp.port))
    there = process_env(tmp_path, site(tmp_path / "there", smtp.port))
    return here, there


def test_approving_from_another_configuration_never_deletes_from_its_database(
    tmp_path: Path, two_sites: tuple[dict[str, str], dict[str, str]]
) -> None:
    here, there = two_sites
    request_id = file_as_agent(load_settings(here), "delete_database_records", DELETE)

    approved = hitl(there, "approve", request_id, "--as", "alice", "--yes", "--wait", "0.2")

    assert approved.returncode == 0, approved.stderr
    filed_db, other_db = tmp_path / "here" / "app.db", tmp_path / "there" / "app.db"
    assert f"filed against database {filed_db}" in approved.stderr
    assert f"this process is configured for database {other_db}" in approved.stderr
    assert "still approved" in approved.stdout
    # The decision stands; neither database lost a row.
    assert statuses(tmp_path / "hitl.db")[request_id] == "approved"
    assert user_count(other_db) == len(USERS)
    assert user_count(filed_db) == len(USERS)

    async def run_where_filed() -> Status:
        async with open_gate(load_settings(here)) as gate:
            return (await gate.execute(request_id)).status

    assert anyio.run(run_where_filed) is Status.EXECUTED
    assert user_count(filed_db) == len(USERS) - 2
    assert user_count(other_db) == len(USERS)


def test_a_running_server_runs_at_once_what_a_terminal_without_its_configuration_approved(
    tmp_path: Path, smtp: SmtpSink
) -> None:
    # A long orphan grace: only the server's runner, woken by the change, can explain a prompt run.
    served = process_env(tmp_path, site(tmp_path / "served", smtp.port))
    config = Path(served["HITL_CONFIG"])
    config.write_text(config.read_text().replace("orphan_grace_seconds = 0.5", "orphan_grace_seconds = 600"))
    bare = {key: value for key, value in served.items() if key != "HITL_CONFIG"}
    request_id = file_as_agent(load_settings(served), "buy_stock", BUY)

    with serving(served, tmp_path / "server.log"):
        approved = hitl(bare, "approve", request_id, "--as", "alice", "--yes", "--wait", "30")

    assert approved.returncode == 0, approved.stderr
    assert "approved; run by " in approved.stderr and "not run here" not in approved.stderr
    assert f"{request_id} executed" in approved.stdout
    assert '"total": 1500.0' in approved.stdout
    assert orders(tmp_path / "served" / "ledger.db") == 1
    assert not list(tmp_path.glob("**/hitl-mcp/ledger.db"))  # the terminal's default ledger: untouched


def test_an_edit_is_refused_where_the_request_would_be_previewed_against_another_target(
    tmp_path: Path, two_sites: tuple[dict[str, str], dict[str, str]]
) -> None:
    here, there = two_sites
    request_id = file_as_agent(load_settings(here), "buy_stock", BUY)

    edited = hitl(there, "approve", request_id, "--as", "alice", "--yes", "--set", "quantity=5")

    assert edited.returncode == 5
    assert "filed against ledger" in edited.stderr and "nothing was changed" in edited.stderr
    assert statuses(tmp_path / "hitl.db")[request_id] == "pending"


def test_an_smtp_server_other_than_the_one_previewed_never_gets_the_message(
    tmp_path: Path, smtp: SmtpSink
) -> None:
    with SmtpSink() as elsewhere:
        here = process_env(tmp_path, site(tmp_path / "here", smtp.port))
        there = process_env(tmp_path, site(tmp_path / "there", elsewhere.port))
        email = {"to": "erin@example.org", "subject": "Hi", "body": "Hello"}
        request_id = file_as_agent(load_settings(here), "send_email", email)

        approved = hitl(there, "approve", request_id, "--as", "alice", "--yes", "--wait", "0")

        assert approved.returncode == 0, approved.stderr
        assert f"smtp server 127.0.0.1:{smtp.port}" in approved.stderr
        assert elsewhere.messages == [] and smtp.messages == []


def test_the_record_shows_its_target_to_the_agent(settings: Settings, env: dict[str, str]) -> None:
    request_id = file_as_agent(settings, "buy_stock", BUY)

    shown = hitl(env, "show", request_id, "--json")

    assert shown.returncode == 0, shown.stderr
    ledger = Path(env["HITL_CONFIG"]).parent / "ledger.db"
    assert f'"ledger": "{ledger}"' in shown.stdout
