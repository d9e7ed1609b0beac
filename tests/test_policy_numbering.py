"""Rules and levels are numbered from 1 wherever people or JSON consumers read them; the 0-based indices
sit beside them under names that say so (`rule_index`, `level_index`, `waiting_on`)."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from hitl_mcp.config import Settings, load_settings
from hitl_mcp.policy import Snapshot
from tests.cli_in_process import hitl
from tests.test_cli import BUY, file_request

POLICY = """
[principals.alice]
roles = ["trader"]
[principals.bob]
roles = ["risk_manager"]

[policy.buy_stock]
rules = [
  { when = "quantity * price < 1000", approval = "none" },
  { when = "quantity * price <= 10000", levels = [{ roles = ["trader"] }] },
  { levels = [{ roles = ["trader"] }, { roles = ["risk_manager"] }] },
]
"""


@pytest.fixture
def governed(env: dict[str, str], config_file: Path) -> Settings:
    config_file.write_text(config_file.read_text() + POLICY)
    return load_settings(env)


def record(env: dict[str, str], request_id: str) -> dict[str, Any]:
    shown = hitl(env, "show", request_id, "--json")
    assert shown.returncode == 0, shown.stderr
    found: dict[str, Any] = json.loads(shown.stdout)
    return found


def audit_details(settings: Settings, request_id: str, event: str) -> dict[str, Any]:
    with closing(sqlite3.connect(settings.db_path)) as conn:
        [(details,)] = conn.execute(
            "SELECT details FROM audit WHERE request_id = ? AND event = ?", (request_id, event)
        ).fetchall()
    found: dict[str, Any] = json.loads(details)
    return found


def test_record_audit_and_description_agree_on_rule_and_level_numbers(
    env: dict[str, str], governed: Settings
) -> None:
    request_id = file_request(governed, "buy_stock", BUY)  # $15,000: the third rule, two levels

    filed = record(env, request_id)
    approved = hitl(env, "approve", request_id, "--yes", "--as", "alice")
    after = record(env, request_id)
    shown = hitl(env, "show", request_id).stdout

    policy = filed["approval"]["policy"]
    assert policy["rule"] == 3 and policy["rule_index"] == 2
    assert filed["approval"]["description"].startswith("rule 3: ")
    assert filed["approval"]["waiting_on_level"] == 1
    assert approved.returncode == 0, approved.stderr
    [decision] = after["decisions"]
    assert decision["level"] == 1 and decision["level_index"] == 0
    assert after["approval"]["waiting_on_level"] == 2 and after["approval"]["waiting_on"] == 1
    assert "Waits on   level 2 of 2: 1 × risk_manager" in shown
    assert audit_details(governed, request_id, "approved") == {
        "level": 1,
        "level_index": 0,
        "status": "pending",
    }


def test_a_snapshot_stored_before_rule_index_still_reads_as_the_rule_it_was(
    env: dict[str, str], governed: Settings
) -> None:
    request_id = file_request(governed, "buy_stock", BUY)
    # What an older version stored: the rule's 0-based index as `rule`, and no `rule_index`.
    levels = [{"roles": ["trader"]}, {"roles": ["risk_manager"]}]
    legacy = json.dumps({"rule": 2, "when": None, "approval": "required", "levels": levels})
    with closing(sqlite3.connect(governed.db_path)) as conn, conn:
        conn.execute("UPDATE requests SET policy = ? WHERE id = ?", (legacy, request_id))

    policy = record(env, request_id)["approval"]

    assert policy["policy"]["rule"] == 3 and policy["policy"]["rule_index"] == 2
    assert policy["description"].startswith("rule 3: ")
    assert hitl(env, "audit", "verify").returncode == 0


def test_a_snapshot_read_back_from_its_json_keeps_its_rule() -> None:
    snapshot = Snapshot(rule_index=0, approval="none")

    again = Snapshot.model_validate_json(snapshot.model_dump_json())

    assert again == snapshot and again.rule == 1 and again.describe() == "rule 1: no approval needed"
