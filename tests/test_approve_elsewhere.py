"""`hitl approve` from a terminal that does not have the request's target: it says who runs the action and
prints the outcome, and says "not run here" only when no process configured for the target took it."""

from __future__ import annotations

from pathlib import Path

from hitl_mcp.config import load_settings
from tests.cli_in_process import hitl
from tests.environment import process_env
from tests.smtp_sink import SmtpSink
from tests.test_auth import serving
from tests.test_targets import BUY, file_as_agent, orders, site

EMAIL = {"to": "erin@example.org", "subject": "Hi", "body": "Hello"}


def served_and_bare(tmp_path: Path, smtp: SmtpSink) -> tuple[dict[str, str], dict[str, str]]:
    """A server's environment (its own ledger, the test's SMTP sink) and a terminal's with none of it."""
    served = process_env(tmp_path, site(tmp_path / "served", smtp.port))
    # A long orphan grace: only the server's runner, woken by the change, can explain a prompt run.
    config = Path(served["HITL_CONFIG"])
    config.write_text(config.read_text().replace("orphan_grace_seconds = 0.5", "orphan_grace_seconds = 600"))
    return served, {key: value for key, value in served.items() if key != "HITL_CONFIG"}


def test_approve_says_which_process_ran_it_and_prints_the_outcome(tmp_path: Path, smtp: SmtpSink) -> None:
    served, bare = served_and_bare(tmp_path, smtp)
    request_id = file_as_agent(load_settings(served), "buy_stock", BUY)

    with serving(served, tmp_path / "server.log"):
        approved = hitl(bare, "approve", request_id, "--as", "alice", "--yes", "--wait", "30")

    assert approved.returncode == 0, approved.stderr
    ledger = tmp_path / "served" / "ledger.db"
    assert approved.stderr.startswith("approved; ")
    assert f"a process configured for ledger {ledger}" in approved.stderr
    assert "not run here" not in approved.stderr
    assert f"{request_id} executed" in approved.stdout and '"total": 1500.0' in approved.stdout
    assert orders(ledger) == 1


def test_a_run_that_failed_elsewhere_prints_its_failure_and_no_waiting_line(
    tmp_path: Path, smtp: SmtpSink
) -> None:
    served, bare = served_and_bare(tmp_path, smtp)
    request_id = file_as_agent(load_settings(served), "send_email", EMAIL)
    smtp.refuse_with = "554 5.7.1 Not today"

    with serving(served, tmp_path / "server.log"):
        approved = hitl(bare, "approve", request_id, "--as", "alice", "--yes", "--wait", "30")

    assert approved.returncode == 6, approved.stderr
    assert f"{request_id} failed" in approved.stdout and "Not today" in approved.stdout
    assert "effect: none" in approved.stdout
    assert "waiting" not in approved.stderr and "not run here" not in approved.stderr
    assert smtp.messages == []


def test_not_run_here_when_no_process_configured_for_the_target_takes_it(
    tmp_path: Path, smtp: SmtpSink
) -> None:
    served, bare = served_and_bare(tmp_path, smtp)
    request_id = file_as_agent(load_settings(served), "buy_stock", BUY)

    approved = hitl(bare, "approve", request_id, "--as", "alice", "--yes", "--wait", "0.5")

    assert approved.returncode == 0, approved.stderr
    ledger = tmp_path / "served" / "ledger.db"
    assert f"not run here: request {request_id} was filed against ledger {ledger}" in approved.stderr
    assert "still approved after" in approved.stdout
    assert orders(ledger) == 0


def test_while_the_server_runs_it_a_waiting_line_names_it_and_then_where_it_stands(
    tmp_path: Path, smtp: SmtpSink
) -> None:
    served, bare = served_and_bare(tmp_path, smtp)
    request_id = file_as_agent(load_settings(served), "buy_stock", BUY)
    # The server claims the request and then stops short of running it, as a slow action would.
    stalled = {**served, "HITL_TEST_PAUSE_AT": "after-claim"}

    with serving(stalled, tmp_path / "server.log"):
        approved = hitl(bare, "approve", request_id, "--as", "alice", "--yes", "--wait", "4")

    assert approved.returncode == 0, approved.stderr
    [waiting] = approved.stderr.splitlines()
    assert waiting.startswith("approved; running in ") and waiting.endswith("for the outcome …")
    assert f"a process configured for ledger {tmp_path / 'served' / 'ledger.db'}" in waiting
    assert f"{request_id} executing" in approved.stdout and "still running in " in approved.stdout
