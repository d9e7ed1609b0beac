"""Standing approvals through the gate: scope, cap, who may make them, levels, deny, uses, revocation."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from hitl_mcp.config import Settings, load_settings
from hitl_mcp.errors import InvalidArguments, NotAllowed, NotPending
from hitl_mcp.gate import Gate, open_gate
from hitl_mcp.models import Status
from tests.clock import Clock

POLICY = """
[principals.alice]
roles = ["trader"]
[principals.bob]
roles = ["risk_manager"]
[principals.carol]
roles = ["engineer"]
[principals.dave]
roles = ["engineer"]

[policy.buy_stock]
rules = [
  { when = "quantity * price < 1000", approval = "none" },
  { when = "quantity * price <= 10000", levels = [{ roles = ["trader"], count = 1 }] },
  { levels = [{ roles = ["trader"], count = 1 }, { roles = ["risk_manager"], count = 1 }] },
]

[policy.send_email]
rules = [
  { when = "to LIKE '%@competitor.com'", approval = "deny" },
  { levels = [{ roles = ["trader", "engineer"], count = 1 }] },
]

[grants]
max_seconds = 86400
"""

HOUR = timedelta(hours=1)


@pytest.fixture(params=["sqlite", "postgres"])
def governed(request: pytest.FixtureRequest, env: dict[str, str], config_file: Path) -> Settings:
    """The same rules on both stores: each test runs on an SQLite file and on a PostgreSQL database."""
    config_file.write_text(config_file.read_text() + POLICY)
    if request.param == "postgres":
        env = env | {"HITL_DB": request.getfixturevalue("pg_url")}
    return load_settings(env)


@pytest.fixture
async def gate(governed: Settings) -> AsyncIterator[Gate]:
    async with open_gate(governed) as opened:
        yield opened


def buy(quantity: int, symbol: str = "GOOGL", price: float = 150.0) -> dict[str, object]:
    return {"symbol": symbol, "quantity": quantity, "price": price}


def email(to: str = "pat@partner.org") -> dict[str, object]:
    return {"to": to, "subject": "Quarterly numbers", "body": "Attached."}


def orders(settings: Settings) -> int:
    assert settings.config_path is not None
    path = settings.config_path.parent / "ledger.db"
    if not path.exists():
        return 0
    with sqlite3.connect(path) as conn:
        count: int = conn.execute("SELECT count(*) FROM orders").fetchone()[0]
    return count


async def test_covered_call_runs_at_once_audited_granted_naming_the_grant(
    gate: Gate, governed: Settings
) -> None:
    grant = await gate.add_grant("send_email", "agent", None, True, HOUR, None, "newsletter week", by="alice")
    assert grant.status == "active"

    request = await gate.file("send_email", email(), "agent")

    assert request.status is Status.EXECUTED
    assert request.approval.policy.grant == grant.id
    assert f"covered by grant {grant.id}" in request.approval.description
    events = {event.event: event for event in await gate.store.audit_trail(request.request_id)}
    assert events["granted"].details["grant"] == grant.id
    assert "policy-auto-approved" not in events
    assert (await gate.grant(grant.id)).uses_made == 1


async def test_scope_is_one_tool_one_requester_and_its_when_over_arguments_and_preview(
    gate: Gate, governed: Settings
) -> None:
    # `total` is a preview value (quantity × price), as a policy rule may use it.
    await gate.add_grant(
        "buy_stock", "agent", "symbol = 'GOOGL' AND total <= 3000", False, HOUR, None, None, by="alice"
    )
    await gate.approve_grant((await gate.grants())[0].id, "bob")

    assert (await gate.file("buy_stock", buy(10), "agent")).status is Status.EXECUTED
    # Another symbol, a total above the grant's, another requester, another tool: all wait as before.
    assert (await gate.file("buy_stock", buy(10, "MSFT"), "agent")).status is Status.PENDING
    assert (await gate.file("buy_stock", buy(30), "agent")).status is Status.PENDING
    assert (await gate.file("buy_stock", buy(10), "agent-two")).status is Status.PENDING
    assert (await gate.file("send_email", email(), "agent")).status is Status.PENDING
    assert orders(governed) == 1


async def test_a_grant_without_when_must_say_any_arguments(gate: Gate) -> None:
    with pytest.raises(InvalidArguments, match="--any-arguments"):
        await gate.add_grant("send_email", "agent", None, False, HOUR, None, None, by="alice")
    with pytest.raises(InvalidArguments, match="not both"):
        await gate.add_grant("send_email", "agent", "to = 'x@y.org'", True, HOUR, None, None, by="alice")
    with pytest.raises(InvalidArguments, match="unknown name 'colour'"):
        await gate.add_grant("send_email", "agent", "colour = 'red'", False, HOUR, None, None, by="alice")
    assert await gate.grants(include_finished=True) == []


async def test_expiry_above_the_cap_is_refused_saying_the_cap(gate: Gate) -> None:
    with pytest.raises(
        InvalidArguments, match=r"2d is above the cap of 1d \(\[grants\] max_seconds = 86400\)"
    ):
        await gate.add_grant("send_email", "agent", None, True, timedelta(days=2), None, None, by="alice")
    with pytest.raises(InvalidArguments, match="must expire"):
        await gate.add_grant("send_email", "agent", None, True, timedelta(0), None, None, by="alice")
    assert await gate.grants(include_finished=True) == []


async def test_the_requester_can_never_grant_itself(gate: Gate, governed: Settings) -> None:
    with pytest.raises(NotAllowed, match="requester can never grant"):
        await gate.add_grant("send_email", "alice", None, True, HOUR, None, None, by="Alice")
    grant = await gate.add_grant(
        "delete_database_records", "carol", "matching_rows <= 5", False, HOUR, None, None, by="dave"
    )
    with pytest.raises(NotAllowed, match="requester can never grant"):
        await gate.approve_grant(grant.id, "carol")


async def test_the_creator_must_be_eligible_for_the_first_level_of_every_reachable_rule(gate: Gate) -> None:
    # bob (risk_manager) could approve level 2 of buy_stock's last rule, never its first level.
    with pytest.raises(
        NotAllowed, match=r"rule 2 .* needs 1 × trader at its first level; bob holds risk_manager"
    ):
        await gate.add_grant("buy_stock", "agent", "symbol = 'GOOGL'", False, HOUR, None, None, by="bob")
    with pytest.raises(NotAllowed, match="holds no roles"):
        await gate.add_grant("send_email", "agent", None, True, HOUR, None, None, by="mallory")


async def test_a_multi_level_grant_waits_and_covers_nothing_until_complete(
    gate: Gate, governed: Settings
) -> None:
    grant = await gate.add_grant(
        "buy_stock", "agent", "symbol = 'GOOGL'", False, HOUR, None, None, by="alice"
    )
    assert grant.status == "waiting"
    assert grant.levels_needed == ("rule 3: level 2 of 2, 1 × risk_manager",)

    waiting = await gate.file("buy_stock", buy(10), "agent")
    assert waiting.status is Status.PENDING

    with pytest.raises(NotAllowed, match="waits on rule 3: level 2 of 2"):
        await gate.approve_grant(grant.id, "carol")
    approved = await gate.approve_grant(grant.id, "bob")
    assert approved.status == "active"
    assert approved.levels_needed == ()
    with pytest.raises(NotPending, match="active, not waiting"):
        await gate.approve_grant(grant.id, "bob")

    assert (await gate.file("buy_stock", buy(11), "agent")).status is Status.EXECUTED
    assert (await gate.get(waiting.request_id)).status is Status.PENDING  # filed before: still waits
    assert orders(governed) == 1


async def test_deny_beats_every_grant(gate: Gate) -> None:
    await gate.add_grant("send_email", "agent", None, True, HOUR, None, None, by="alice")
    with pytest.raises(NotAllowed, match="refuses this request"):
        await gate.file("send_email", email("spy@competitor.com"), "agent")
    assert (await gate.grants())[0].uses_made == 0


async def test_uses_are_counted_then_calls_wait_again(gate: Gate) -> None:
    grant = await gate.add_grant("send_email", "agent", None, True, HOUR, 2, None, by="carol")
    statuses = [(await gate.file("send_email", email(), "agent")).status for _ in range(3)]
    assert statuses == [Status.EXECUTED, Status.EXECUTED, Status.PENDING]
    spent = await gate.grant(grant.id)
    assert (spent.status, spent.uses_left, spent.uses_made) == ("used-up", 0, 2)
    assert await gate.grants() == []
    assert [g.id for g in await gate.grants(include_finished=True)] == [grant.id]


async def test_revoked_grant_covers_nothing_from_the_next_call(gate: Gate) -> None:
    grant = await gate.add_grant("send_email", "agent", None, True, HOUR, None, None, by="alice")
    assert (await gate.file("send_email", email(), "agent")).status is Status.EXECUTED
    with pytest.raises(NotAllowed, match="only the grant's approvers"):
        await gate.revoke_grant(grant.id, "bob")
    revoked = await gate.revoke_grant(grant.id, "carol")
    assert (revoked.status, revoked.revoked_by) == ("revoked", "carol")
    assert (await gate.file("send_email", email(), "agent")).status is Status.PENDING
    trail = [event.event for event in await gate.store.audit_trail(grant.id)]
    assert trail == ["grant-created", "grant-revoked"]


async def test_expired_grant_covers_nothing(governed: Settings) -> None:
    clock = Clock(time.time())
    async with open_gate(governed) as opened:
        gate = Gate(opened.store, opened.actions, governed, clock=clock)
        grant = await gate.add_grant("send_email", "agent", None, True, HOUR, None, None, by="alice")
        clock.now += HOUR.total_seconds() + 1
        assert (await gate.file("send_email", email(), "agent")).status is Status.PENDING
        assert (await gate.grant(grant.id)).status == "expired"


def test_the_example_config_shows_the_grants_cap() -> None:
    import tomllib

    from hitl_mcp.config import GrantsSettings

    example = Path(__file__).parent.parent / "examples" / "hitl.toml"
    shown = tomllib.loads(example.read_text(encoding="utf-8")).get("grants", {})
    assert sorted(shown) == sorted(GrantsSettings.model_fields)


@pytest.fixture
def on_sqlite(env: dict[str, str], config_file: Path) -> Settings:
    config_file.write_text(config_file.read_text() + POLICY)
    return load_settings(env)


async def test_hitl_db_migrate_carries_grants_with_their_uses_left(
    env: dict[str, str], on_sqlite: Settings, pg_empty_url: str
) -> None:
    from hitl_mcp.store.transfer import copy_to_postgres

    async with open_gate(on_sqlite) as gate:
        kept = await gate.add_grant("send_email", "agent", None, True, HOUR, 2, None, by="alice")
        ended = await gate.add_grant(
            "send_email", "agent", "size_bytes < 10", False, HOUR, None, None, by="alice"
        )
        await gate.revoke_grant(ended.id, "alice")
        assert (await gate.file("send_email", email(), "agent")).status is Status.EXECUTED

    copied = await copy_to_postgres(on_sqlite.db_path, pg_empty_url)

    assert copied.counts["grants"] == 2 and copied.source_head == copied.target_head
    async with open_gate(load_settings(env | {"HITL_DB": pg_empty_url})) as gate:
        assert [(g.id, g.status, g.uses_left) for g in await gate.grants(include_finished=True)] == [
            (kept.id, "active", 1),
            (ended.id, "revoked", None),
        ]
        statuses = [(await gate.file("send_email", email(), "agent")).status for _ in range(2)]
        assert statuses == [Status.EXECUTED, Status.PENDING]


async def test_the_report_counts_grants_made_used_and_revoked_and_no_grant_as_a_request(gate: Gate) -> None:
    from hitl_mcp import report as reports

    grant = await gate.add_grant("send_email", "agent", None, True, HOUR, None, None, by="alice")
    covered = await gate.file("send_email", email(), "agent")
    await gate.revoke_grant(grant.id, "alice")
    waiting = await gate.file("send_email", email(), "agent")

    by_sql = await reports.from_store(gate.store)
    by_pass = await reports.build_stream(gate.store.audit_records())

    for figures in (by_sql, by_pass):
        assert figures.grants == {"made": 1, "used": 1, "revoked": 1}
        assert figures.requests == 2  # the two calls; the grant's own records are no request
        assert figures.outcomes == {"pending": 1, "executed": 1}
        assert figures.to_json()["grants"] == {"made": 1, "used": 1, "revoked": 1}
    assert {covered.status, waiting.status} == {Status.EXECUTED, Status.PENDING}


NOTIFY = """
[[notify]]
on = ["grant-created", "grant-revoked", "granted"]
webhook = "http://127.0.0.1:9/grants"
"""


@pytest.fixture
def notified(governed: Settings) -> Settings:
    assert governed.config_path is not None
    governed.config_path.write_text(governed.config_path.read_text() + NOTIFY)
    env = {"HITL_CONFIG": str(governed.config_path), "HITL_DB": governed.store_url or str(governed.db_path)}
    return load_settings(env)


async def test_notifiers_hear_of_grants_made_used_and_revoked(notified: Settings) -> None:
    from hitl_mcp.notify import render

    async with open_gate(notified) as gate:
        grant = await gate.add_grant("send_email", "agent", None, True, HOUR, 3, "digest week", by="alice")
        covered = await gate.file("send_email", email(), "agent")
        await gate.revoke_grant(grant.id, "carol")
        queued = await gate.store.outbox_claim("test", time.time() + 1, 10, 30)

    assert [(row.request_id, row.event) for row in queued] == [
        (grant.id, "grant-created"),
        (covered.request_id, "granted"),
        (grant.id, "grant-revoked"),
    ]
    made, used, revoked = (row.payload for row in queued)
    assert made["notice"]["scope"] == "any arguments" and made["notice"]["uses"] == "3"
    assert render.text(made).startswith(f"Grant made: send_email from agent ({grant.id})\n")
    assert "Reason     digest week" in render.text(made)
    assert render.headline(used).startswith(f"Ran under grant {grant.id}: send_email request")
    assert render.subject(revoked).startswith(f"[hitl] Grant revoked: send_email from agent ({grant.id})")


async def test_a_policy_made_stricter_after_the_grant_is_not_bypassed_by_it(governed: Settings) -> None:
    from dataclasses import replace

    from hitl_mcp.policy import ActionPolicy, Level, Rule

    stricter = ActionPolicy(
        rules=(Rule(levels=(Level(roles=("trader", "engineer")), Level(roles=("risk_manager",)))),)
    )
    async with open_gate(governed) as gate:
        await gate.add_grant("send_email", "agent", None, True, HOUR, None, None, by="alice")
        assert (await gate.file("send_email", email(), "agent")).status is Status.EXECUTED
        # The same store after a restart with a policy that also wants a risk manager for every email.
        later = Gate(gate.store, gate.actions, replace(governed, policies={"send_email": stricter}))
        assert (await later.file("send_email", email(), "agent")).status is Status.PENDING


async def test_a_retried_call_spends_no_second_use(gate: Gate) -> None:
    grant = await gate.add_grant("send_email", "agent", None, True, HOUR, 2, None, by="alice")
    first = await gate.file_call("send_email", email(), "agent", idempotency_key="digest-1")
    again = await gate.file_call("send_email", email(), "agent", idempotency_key="digest-1")

    assert (first.request.status, again.repeated) == (Status.EXECUTED, True)
    assert again.request.request_id == first.request.request_id
    assert (await gate.grant(grant.id)).uses_left == 1
