"""Governance from the terminal: `hitl policy`, `hitl approve --set`, and what `hitl list` shows."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import anyio
import pytest

from hitl_mcp.config import Settings, load_settings
from hitl_mcp.gate import open_gate
from tests.cli_in_process import hitl
from tests.test_cli import HITL, file_request
from tests.test_policy import POLICY


@pytest.fixture
def governed(env: dict[str, str], config_file: Path) -> Settings:
    config_file.write_text(config_file.read_text() + POLICY)
    return load_settings(env)


def test_policy_check_summarises_a_valid_file(env: dict[str, str], governed: Settings) -> None:
    checked = hitl(env, "policy", "check")

    assert checked.returncode == 0, checked.stderr
    assert "rule 3: 1 × trader, then 1 × risk_manager" in checked.stdout
    assert "rule 2 (when to LIKE '%@competitor.com'): denied" in checked.stdout


def test_policy_check_names_the_bad_key(env: dict[str, str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[policy.buy_stock]\nrules = [{ when = "price >", approval = "none" }]\n')

    refused = hitl(env, "policy", "check", str(bad))

    assert refused.returncode == 2
    assert "policy.buy_stock.rules[0].when" in refused.stderr


@pytest.mark.parametrize(
    ("quantity", "expected"),
    [(5, "rule 1 (when quantity * price < 1000): no approval needed"), (100, "rule 3: 1 × trader, then")],
)
def test_policy_explain_names_the_rule_and_the_approvals(
    env: dict[str, str], governed: Settings, quantity: int, expected: str
) -> None:
    args = json.dumps({"symbol": "GOOGL", "quantity": quantity, "price": 150})

    explained = hitl(env, "policy", "explain", "buy_stock", args)

    assert explained.returncode == 0, explained.stderr
    assert expected in explained.stdout


def test_policy_explain_refuses_bad_arguments_naming_the_field(
    env: dict[str, str], governed: Settings
) -> None:
    refused = hitl(env, "policy", "explain", "buy_stock", '{"symbol": "GOOGL", "quantity": 0, "price": 1}')

    assert refused.returncode == 2
    assert "quantity" in refused.stderr


def test_approve_with_set_edits_then_runs_and_show_lists_the_change(
    env: dict[str, str], governed: Settings
) -> None:
    request_id = file_request(governed, "buy_stock", {"symbol": "GOOGL", "quantity": 100, "price": 150.0})
    listed = hitl(env, "list")
    assert "1 × trader" in listed.stdout

    approved = hitl(env, "approve", request_id, "--as", "alice", "--set", "quantity=50", "--yes", "--json")
    shown = hitl(env, "show", request_id)

    assert approved.returncode == 0, approved.stderr
    record = json.loads(approved.stdout)
    assert record["status"] == "executed"
    assert record["arguments"]["quantity"] == 50
    assert record["original_arguments"]["quantity"] == 100
    assert "edited   quantity: 100 → 50" in shown.stdout


def test_approve_by_a_principal_without_the_role_is_refused_naming_the_roles(
    env: dict[str, str], governed: Settings
) -> None:
    request_id = file_request(governed, "buy_stock", {"symbol": "GOOGL", "quantity": 50, "price": 150.0})

    refused = hitl(env, "approve", request_id, "--as", "carol", "--yes")

    assert refused.returncode == 5
    assert "needs trader; carol holds engineer" in refused.stderr


def test_list_shows_an_escalated_request_and_approve_says_who_it_still_waits_on(
    env: dict[str, str], governed: Settings, config_file: Path
) -> None:
    config_file.write_text(
        config_file.read_text().replace("escalate_after_seconds = 600", "escalate_after_seconds = 0.01")
    )
    request_id = file_request(
        load_settings(env), "delete_database_records", {"table": "users", "condition": "age > 40"}
    )

    async def escalate() -> int:
        async with open_gate(load_settings(env)) as gate:
            # The housekeeping of a server whose clock has passed the level's escalation time.
            gate.clock = lambda: time.time() + 1
            return await gate.escalate()

    assert anyio.run(escalate) == 1
    listed = hitl(env, "list")
    approved = hitl(env, "approve", request_id, "--as", "carol", "--yes")

    assert "pending (escalated)" in listed.stdout
    assert approved.returncode == 0, approved.stderr
    assert "waits on: 2 × engineer" in approved.stdout


FAILING_RULE = """
[policy.send_email]
rules = [ { when = "to > 5", approval = "none" }, { levels = [{ count = 1 }] } ]
"""


def test_policy_check_warns_on_a_rule_that_fails_on_every_call_and_strict_fails(
    env: dict[str, str], config_file: Path
) -> None:
    config_file.write_text(config_file.read_text() + FAILING_RULE)

    checked = hitl(env, "policy", "check")
    strict = hitl(env, "policy", "check", "--strict")

    assert checked.returncode == 0, checked.stderr
    assert "valid, with 1 warning" in checked.stdout
    [warning] = checked.stderr.strip().splitlines()
    assert warning.startswith(
        "warning: policy.send_email.rules[0].when: cannot compare to (text) with the number 5"
    )
    assert "every call that reaches this rule would be refused" in warning
    assert strict.returncode == 1
    assert strict.stderr == checked.stderr


def test_policy_check_strict_passes_a_file_without_warnings(env: dict[str, str], governed: Settings) -> None:
    strict = hitl(env, "policy", "check", "--strict")

    assert strict.returncode == 0, strict.stderr
    assert strict.stdout.startswith("OK: ")
    assert strict.stderr == ""


def test_serve_prints_the_warnings_when_it_starts(env: dict[str, str], config_file: Path) -> None:
    config_file.write_text(config_file.read_text() + FAILING_RULE)

    # A stdio server whose client hangs up at once: it starts, says what it found, and ends.
    served = subprocess.run(
        [HITL, "serve"], env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60
    )

    assert served.returncode == 0, served.stderr
    assert "hitl-mcp: warning: policy.send_email.rules[0].when: cannot compare to (text)" in served.stderr
    assert served.stdout == ""
