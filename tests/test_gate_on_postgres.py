"""The gate-level suites again, on a PostgreSQL store: the same behaviour whatever holds the requests.

The tests are the SQLite suites' own, collected here a second time; this module's `env` points their
settings (and every `hitl` process they start) at a fresh database of the session's cluster. Left out are
the tests that check their outcome by reading the SQLite file itself.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.environment import process_env
from tests.test_dedup import (
    test_a_call_repeated_after_a_decision_or_by_someone_else_files_anew,
    test_a_window_of_zero_turns_deduplication_off,
    test_the_gate_reports_a_repeat_to_any_face,
)
from tests.test_gate import (
    test_a_filed_request_survives_reopening_the_store,
    test_a_second_approval_is_refused_and_runs_nothing,
    test_cancelled_request_never_runs,
    test_email_is_sent_once_with_a_message_id_from_the_request,
    test_expiry_is_enforced_when_deciding,
    test_expiry_is_enforced_when_executing,
    test_failed_action_is_recorded_not_retried,
    test_ids_resolve_from_any_unique_prefix,
    test_list_pages_oldest_first_with_a_cursor,
    test_nobody_decides_their_own_request,
    test_orphaned_approval_is_released_by_housekeeping,
    test_rejected_request_never_runs,
    test_wait_gives_up_at_the_timeout_with_the_record_as_it_stands,
    test_wait_returns_as_soon_as_another_gate_decides,
)
from tests.test_live import (
    test_a_subscriber_hears_of_a_decision_made_by_another_process,
    test_resources_read_the_pending_queue_and_one_request,
)
from tests.test_retry import (
    test_a_retry_is_refused_to_the_requester_and_for_what_did_not_fail_cleanly,
)
from tests.test_server import (
    test_approver_agent_releases_the_action_and_the_agent_sees_the_outcome,
    test_cancel_request_withdraws_only_your_own,
    test_gated_call_returns_a_pending_id_at_once_and_runs_nothing,
    test_list_pending_pages_with_a_cursor_and_filters_by_tool,
    test_running_server_releases_an_approval_whose_approver_died,
    test_wait_for_decision_wakes_on_the_decision_with_progress,
)
from tests.test_targets import (
    test_a_running_server_runs_at_once_what_a_terminal_without_its_configuration_approved,
)

__all__ = [
    "test_a_call_repeated_after_a_decision_or_by_someone_else_files_anew",
    "test_a_filed_request_survives_reopening_the_store",
    "test_a_retry_is_refused_to_the_requester_and_for_what_did_not_fail_cleanly",
    "test_a_running_server_runs_at_once_what_a_terminal_without_its_configuration_approved",
    "test_a_second_approval_is_refused_and_runs_nothing",
    "test_a_subscriber_hears_of_a_decision_made_by_another_process",
    "test_a_window_of_zero_turns_deduplication_off",
    "test_approver_agent_releases_the_action_and_the_agent_sees_the_outcome",
    "test_cancel_request_withdraws_only_your_own",
    "test_cancelled_request_never_runs",
    "test_email_is_sent_once_with_a_message_id_from_the_request",
    "test_expiry_is_enforced_when_deciding",
    "test_expiry_is_enforced_when_executing",
    "test_failed_action_is_recorded_not_retried",
    "test_gated_call_returns_a_pending_id_at_once_and_runs_nothing",
    "test_ids_resolve_from_any_unique_prefix",
    "test_list_pages_oldest_first_with_a_cursor",
    "test_list_pending_pages_with_a_cursor_and_filters_by_tool",
    "test_nobody_decides_their_own_request",
    "test_orphaned_approval_is_released_by_housekeeping",
    "test_rejected_request_never_runs",
    "test_resources_read_the_pending_queue_and_one_request",
    "test_running_server_releases_an_approval_whose_approver_died",
    "test_the_gate_reports_a_repeat_to_any_face",
    "test_wait_for_decision_wakes_on_the_decision_with_progress",
    "test_wait_gives_up_at_the_timeout_with_the_record_as_it_stands",
    "test_wait_returns_as_soon_as_another_gate_decides",
]


@pytest.fixture
def env(tmp_path: Path, config_file: Path, pg_url: str) -> dict[str, str]:
    """What the conftest's `env` is, with the store in a fresh PostgreSQL database."""
    return {**process_env(tmp_path, config_file), "HITL_DB": pg_url}
