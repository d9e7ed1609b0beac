"""`hitl report`: the figures a person asks of the audit trail, on histories whose answers are known."""

from __future__ import annotations

import json
from typing import Any

import pytest

from hitl_mcp.audit import AuditRecord
from hitl_mcp.config import Settings
from hitl_mcp.report import build, percentile
from tests.test_cli import BUY, file_request, hitl


class Trail:
    """Audit records written by hand, in seq order; the report never looks at their hashes."""

    def __init__(self) -> None:
        self.records: list[AuditRecord] = []

    def add(self, request_id: str, event: str, actor: str, at: float, **details: Any) -> Trail:
        seq = len(self.records) + 1
        self.records.append(AuditRecord(seq, request_id, event, actor, at, json.dumps(details), "", ""))
        return self

    def filed(self, request_id: str, tool: str, at: float = 0.0) -> Trail:
        return self.add(request_id, "filed", "agent", at, tool=tool, arguments_digest="d")

    def ran(self, request_id: str, at: float, outcome: str = "executed") -> Trail:
        return self.add(request_id, "claimed", "worker", at).add(request_id, outcome, "worker", at)


def governed_history() -> Trail:
    trail = Trail()
    trail.filed("r1", "buy_stock").add("r1", "approved", "alice", 10, level=0, status="approved").ran(
        "r1", 11
    )
    trail.filed("r2", "buy_stock").add("r2", "approved", "bob", 20, level=0, status="approved")
    trail.ran("r2", 21, "failed")
    trail.filed("r3", "send_email").add(
        "r3", "rejected", "alice", 30, level=0, status="rejected", reason="no"
    )
    trail.filed("r4", "send_email")
    # A quorum of two: the first vote leaves the request pending, the second approves it.
    trail.filed("r5", "delete_database_records")
    trail.add("r5", "edited", "alice", 40, changes={"condition": {"before": "1=1", "after": "id=1"}})
    trail.add("r5", "approved", "alice", 40, level=0, status="pending")
    trail.add("r5", "approved", "bob", 50, level=1, status="approved").ran("r5", 51)
    trail.filed("r6", "buy_stock").add("r6", "policy-auto-approved", "policy", 0, policy="never").ran("r6", 1)
    trail.add("r7", "denied", "agent", 5, tool="send_email", rule="too many recipients")
    trail.filed("r8", "send_email").add("r8", "escalated", "gate", 60, level=0)
    trail.add("r8", "escalated", "gate", 70, level=1).add("r8", "expired", "gate", 80)
    trail.filed("r9", "buy_stock").add("r9", "cancelled", "agent", 90)
    return trail


def test_a_governed_history_gives_known_figures() -> None:
    report = build(governed_history().records)

    assert report.requests == 9
    assert report.tools == {
        "buy_stock": {"executed": 2, "failed": 1, "cancelled": 1},
        "delete_database_records": {"executed": 1},
        "send_email": {"pending": 1, "rejected": 1, "denied": 1, "expired": 1},
    }
    assert report.outcomes == {
        "pending": 1,
        "executed": 3,
        "failed": 1,
        "rejected": 1,
        "denied": 1,
        "expired": 1,
        "cancelled": 1,
    }
    # r1, r2 and r5 (once its quorum completed) approved, r3 rejected; r6 was the policy's, not a person's.
    assert (report.approved, report.rejected, report.approval_rate) == (3, 1, 0.75)
    assert report.auto_approved == 1
    # Filed at 0; first decisions at 10, 20, 30 and 40 (r5's first vote, not its last).
    assert (report.decisions_timed, report.decision_seconds_p50, report.decision_seconds_p95) == (4, 20, 40)
    assert report.approvers == {
        "alice": {"approved": 2, "rejected": 1},
        "bob": {"approved": 2, "rejected": 0},
    }
    assert (report.expired, report.escalated) == (1, 1)
    assert report.events["escalated"] == 2 and report.events["edited"] == 1 and report.events["denied"] == 1


def test_a_window_counts_requests_filed_in_it_with_all_their_records() -> None:
    trail = Trail()
    trail.filed("old", "buy_stock", at=100).add("old", "approved", "alice", 300, status="approved")
    trail.filed("new", "buy_stock", at=200).add("new", "rejected", "bob", 260, status="rejected")
    trail.filed("newer", "send_email", at=400)

    report = build(trail.records, since=200)

    assert report.tools == {"buy_stock": {"rejected": 1}, "send_email": {"pending": 1}}
    assert report.approvers == {"bob": {"approved": 0, "rejected": 1}}
    assert (report.decisions_timed, report.decision_seconds_p50) == (1, 60)
    assert report.to_json()["since"] == "1970-01-01T00:03:20Z"


def test_an_empty_trail_reports_nothing_rather_than_dividing_by_zero() -> None:
    report = build([])

    assert report.requests == 0 and report.approval_rate is None
    assert report.decision_seconds_p50 is None and report.decision_seconds_p95 is None
    assert report.to_json()["approval"] == {"approved": 0, "rejected": 0, "decided": 0, "rate": None}


def test_mangled_details_are_counted_without_them() -> None:
    records = [AuditRecord(1, "r1", "filed", "agent", 0.0, "not json", "", "")]

    assert build(records).tools == {"(unknown)": {"pending": 1}}


@pytest.mark.parametrize(
    ("values", "p", "expected"),
    [
        ([1.0], 50, 1.0),
        ([1.0], 95, 1.0),
        ([1.0, 2.0, 3.0], 50, 2.0),
        ([1.0, 2.0, 3.0], 95, 3.0),
        ([float(v) for v in range(1, 101)], 95, 95.0),
        ([], 50, None),
    ],
)
def test_percentiles_are_nearest_rank(values: list[float], p: float, expected: float | None) -> None:
    assert percentile(values, p) == expected


def test_report_on_a_real_store(env: dict[str, str], settings: Settings) -> None:
    """File 4, approve 2, reject 1, leave 1 pending: the people approved 2 of the 3 they decided."""
    ids = [file_request(settings, "buy_stock", BUY) for _ in range(4)]
    assert hitl(env, "approve", ids[0], "--as", "alice", "--yes").returncode == 0
    assert hitl(env, "approve", ids[1], "--as", "bob", "--yes").returncode == 0
    assert hitl(env, "reject", ids[2], "--as", "alice", "--reason", "enough").returncode == 0

    as_json = hitl(env, "report", "--json")
    as_text = hitl(env, "report")

    assert as_json.returncode == 0, as_json.stderr
    figures = json.loads(as_json.stdout)
    assert figures["requests"] == 4
    assert figures["tools"] == {
        "buy_stock": {"requests": 4, "outcomes": {"pending": 1, "executed": 2, "rejected": 1}}
    }
    assert figures["approval"] == {"approved": 2, "rejected": 1, "decided": 3, "rate": 2 / 3}
    assert figures["approvers"] == {
        "alice": {"approved": 1, "rejected": 1},
        "bob": {"approved": 1, "rejected": 0},
    }
    timing = figures["time_to_decision"]
    assert timing["requests"] == 3 and 0 < timing["p50_seconds"] <= timing["p95_seconds"]
    assert (figures["expired"], figures["escalated"], figures["auto_approved"]) == (0, 0, 0)
    assert figures["events"] == {"approved": 2, "claimed": 2, "executed": 2, "filed": 4, "rejected": 1}

    assert as_text.returncode == 0, as_text.stderr
    lines = as_text.stdout.splitlines()
    assert lines[0] == "4 requests in the audit trail"
    assert lines[2].split() == ["TOOL", "REQUESTS", "PENDING", "EXECUTED", "REJECTED"]
    assert lines[3].split() == ["buy_stock", "4", "1", "2", "1"]
    assert "Approval rate     67% (2 approved of 3 decided by people)" in lines
    assert any(line.startswith("Time to decision  p50 ") and "over 3 requests" in line for line in lines)
    assert ["alice", "1", "1"] in [line.split() for line in lines]


def test_report_since_a_later_time_finds_nothing(env: dict[str, str], settings: Settings) -> None:
    file_request(settings, "buy_stock", BUY)

    later = hitl(env, "report", "--since", "2999-01-01")
    recent = hitl(env, "report", "--since", "1h", "--json")

    assert later.stdout == "No requests filed since 2999-01-01T00:00:00+00:00.\n"
    assert json.loads(recent.stdout)["requests"] == 1


def test_report_refuses_a_bad_since(env: dict[str, str], settings: Settings) -> None:
    file_request(settings, "buy_stock", BUY)

    refused = hitl(env, "report", "--since", "soon")

    assert refused.returncode == 2
    assert "Invalid value for '--since': 'soon' is not a time" in refused.stderr
