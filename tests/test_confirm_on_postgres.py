"""The confirm suite's store-facing tests again, on a PostgreSQL store: a confirmation is audited and never
stored as a decision whatever holds the requests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.environment import process_env, write_config
from tests.smtp_sink import SmtpSink
from tests.test_confirm import (
    POLICY,
    confirm_settings,
    test_no_rejects_it_with_the_reason_and_nothing_runs,
    test_the_gate_lets_only_the_requester_confirm_and_only_under_a_confirm_rule,
    test_yes_runs_it_once_and_the_same_call_returns_the_result,
)

__all__ = [
    "confirm_settings",
    "test_no_rejects_it_with_the_reason_and_nothing_runs",
    "test_the_gate_lets_only_the_requester_confirm_and_only_under_a_confirm_rule",
    "test_yes_runs_it_once_and_the_same_call_returns_the_result",
]


@pytest.fixture
def confirm_env(tmp_path: Path, smtp: SmtpSink, pg_url: str) -> dict[str, str]:
    """What test_confirm's `confirm_env` is, with the store in a fresh PostgreSQL database."""
    config = write_config(tmp_path / "hitl.toml", smtp_port=smtp.port, extra=POLICY)
    return {**process_env(tmp_path, config), "HITL_DB": pg_url}
