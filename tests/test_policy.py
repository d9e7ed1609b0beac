"""Governance through the gate: the issue's own policy example, roles, quorum, edits and escalation."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import hypothesis
import pytest
from hypothesis import strategies as st
from mcp import Client

from hitl_mcp import expr
from hitl_mcp.config import Settings, load_settings
from hitl_mcp.errors import ConfigError, InvalidArguments, NotAllowed, NotPending
from hitl_mcp.gate import Gate, open_gate
from hitl_mcp.models import Status
from hitl_mcp.server import build_server
from tests.clock import Clock
from tests.smtp_sink import SmtpSink

POLICY = """
[principals.alice]
roles = ["trader"]
[principals.bob]
roles = ["risk_manager"]
[principals.carol]
roles = ["engineer"]
[principals.dave]
roles = ["engineer"]
[principals.reviewer-bot]
roles = ["trader"]

[policy.buy_stock]
rules = [
  { when = "quantity * price < 1000", approval = "none" },
  { when = "quantity * price <= 10000", levels = [{ roles = ["trader"], count = 1 }] },
  { levels = [{ roles = ["trader"], count = 1 }, { roles = ["risk_manager"], count = 1 }] },
]
ttl_seconds = 3600

[policy.delete_database_records]
rules = [ { levels = [{ roles = ["engineer"], count = 2, escalate_after_seconds = 600 }] } ]

[policy.send_email]
rules = [
  { when = "to LIKE '%@example.com'", approval = "none" },
  { when = "to LIKE '%@competitor.com'", approval = "deny" },
  { levels = [{ roles = ["trader", "engineer"], count = 1 }] },
]
"""


@pytest.fixture
def governed(env: dict[str, str], config_file: Path) -> Settings:
    config_file.write_text(config_file.read_text() + POLICY)
    return load_settings(env)


@pytest.fixture
async def gate(governed: Settings) -> AsyncIterator[Gate]:
    async with open_gate(governed) as opened:
        yield opened


def buy(quantity: int, price: float = 150.0) -> dict[str, object]:
    return {"symbol": "GOOGL", "quantity": quantity, "price": price}


def orders(settings: Settings) -> int:
    assert settings.config_path is not None
    path = settings.config_path.parent / "ledger.db"
    if not path.exists():
        return 0
    with sqlite3.connect(path) as conn:
        count: int = conn.execute("SELECT count(*) FROM orders").fetchone()[0]
        return count


def events(settings: Settings, request_id: str) -> list[str]:
    with sqlite3.connect(settings.db_path) as conn:
        rows = conn.execute("SELECT event FROM audit WHERE request_id = ? ORDER BY seq", (request_id,))
        return [row[0] for row in rows]


async def test_below_the_threshold_nothing_waits_and_the_record_says_why(
    gate: Gate, governed: Settings
) -> None:
    request = await gate.file("buy_stock", buy(5), "agent")

    assert request.status is Status.EXECUTED
    assert "rule 1" in request.approval.description and "no approval" in request.approval.description
    assert events(governed, request.request_id) == [
        "filed", "policy-auto-approved", "claimed", "executed",
    ]  # fmt: skip
    assert orders(governed) == 1


async def test_one_trader_releases_a_medium_order_and_others_are_told_who_may(
    gate: Gate, governed: Settings
) -> None:
    request = await gate.file("buy_stock", buy(50), "agent")
    assert request.approval.may_decide == "1 × trader"

    with pytest.raises(NotAllowed, match="needs trader; bob holds risk_manager"):
        await gate.approve(request.request_id, "bob")
    done = await gate.approve(request.request_id, "alice")

    assert done.status is Status.EXECUTED
    assert orders(governed) == 1


async def test_a_large_order_needs_a_trader_and_then_a_risk_manager(gate: Gate, governed: Settings) -> None:
    request = await gate.file("buy_stock", buy(100), "agent")

    after_trader = await gate.approve(request.request_id, "alice")
    assert after_trader.status is Status.PENDING
    assert after_trader.approval.waiting_on == 1
    assert after_trader.approval.approved_by == [["alice"], []]
    with pytest.raises(NotAllowed, match="needs risk_manager"):
        await gate.approve(request.request_id, "reviewer-bot")
    with pytest.raises(NotAllowed, match="counts once"):
        await gate.approve(request.request_id, "alice")
    assert orders(governed) == 0

    done = await gate.approve(request.request_id, "bob")

    assert done.status is Status.EXECUTED
    assert done.approval.approved_by == [["alice"], ["bob"]]
    assert orders(governed) == 1


async def test_two_distinct_engineers_are_needed_to_delete(gate: Gate, target_db: Path) -> None:
    request = await gate.file("delete_database_records", {"table": "users", "condition": "age > 40"}, "agent")

    first = await gate.approve(request.request_id, "carol")
    assert first.status is Status.PENDING
    with pytest.raises(NotAllowed, match="counts once"):
        await gate.approve(request.request_id, "carol")
    done = await gate.approve(request.request_id, "dave")

    assert done.status is Status.EXECUTED
    with sqlite3.connect(target_db) as conn:
        assert conn.execute("SELECT count(*) FROM users WHERE age > 40").fetchone()[0] == 0


async def test_one_reject_by_an_eligible_principal_rejects_and_an_ineligible_one_is_refused(
    gate: Gate, governed: Settings
) -> None:
    request = await gate.file("buy_stock", buy(100), "agent")
    await gate.approve(request.request_id, "alice")

    with pytest.raises(NotAllowed):
        await gate.reject(request.request_id, "carol", "not my call")
    rejected = await gate.reject(request.request_id, "bob", "too concentrated")

    assert rejected.status is Status.REJECTED
    assert orders(governed) == 0


async def test_email_policy_sends_internal_mail_at_once_and_refuses_competitors(
    gate: Gate, governed: Settings, smtp: SmtpSink
) -> None:
    internal = await gate.file("send_email", {"to": "team@example.com", "subject": "s", "body": "b"}, "agent")
    assert internal.status is Status.EXECUTED
    assert len(await smtp.wait_for_async(1)) == 1

    with pytest.raises(NotAllowed, match="refuses"):
        await gate.file("send_email", {"to": "ceo@competitor.com", "subject": "s", "body": "b"}, "agent")
    with sqlite3.connect(governed.db_path) as conn:
        denied = conn.execute("SELECT count(*) FROM audit WHERE event = 'denied'").fetchone()[0]
        filed = conn.execute("SELECT count(*) FROM requests").fetchone()[0]
    assert (denied, filed) == (1, 1)

    other = await gate.file("send_email", {"to": "x@partner.org", "subject": "s", "body": "b"}, "agent")
    assert other.status is Status.PENDING
    assert other.approval.may_decide == "1 × trader or engineer"


def relax(config_file: Path) -> None:
    """Large orders need only a trader from now on."""
    config_file.write_text(
        config_file.read_text().replace(
            '{ levels = [{ roles = ["trader"], count = 1 }, { roles = ["risk_manager"], count = 1 }] },',
            '{ levels = [{ roles = ["trader"], count = 1 }] },',
        )
    )


async def test_editing_the_config_never_changes_what_an_open_request_needs(
    governed: Settings, env: dict[str, str], config_file: Path
) -> None:
    async with open_gate(governed) as gate:
        request = await gate.file("buy_stock", buy(100), "agent")
    relax(config_file)

    async with open_gate(load_settings(env)) as gate:
        after = await gate.approve(request.request_id, "alice")

    assert after.status is Status.PENDING
    assert after.approval.waiting_on == 1


async def test_an_approver_edit_that_lowers_the_stakes_completes_with_fewer_approvals(
    gate: Gate, governed: Settings
) -> None:
    request = await gate.file("buy_stock", buy(100), "agent")

    done = await gate.approve(request.request_id, "alice", "halve it", {"quantity": 50})

    assert done.status is Status.EXECUTED
    assert done.arguments["quantity"] == 50
    assert done.original_arguments is not None and done.original_arguments["quantity"] == 100
    assert done.summary == "Buy 50 GOOGL at $150.00 — total $7,500.00"
    assert done.preview["total"] == 7500.0
    [decision] = done.decisions
    assert decision.principal == "alice"
    assert decision.changes is not None and decision.changes["quantity"].model_dump() == {
        "before": 100,
        "after": 50,
    }
    assert done.result is not None and done.result["quantity"] == 50
    assert "edited" in events(governed, request.request_id)
    assert orders(governed) == 1


async def test_an_edit_that_raises_the_stakes_waits_on_the_missing_level(
    gate: Gate, governed: Settings
) -> None:
    request = await gate.file("buy_stock", buy(30), "agent")

    raised = await gate.approve(request.request_id, "alice", None, {"quantity": 100})

    assert raised.status is Status.PENDING
    assert raised.approval.waiting_on == 1
    assert raised.approval.may_decide == "1 × risk_manager"
    assert orders(governed) == 0
    done = await gate.approve(request.request_id, "bob")
    assert done.status is Status.EXECUTED
    assert done.result is not None and done.result["quantity"] == 100


async def test_a_decision_on_arguments_the_decider_was_not_shown_is_refused(
    gate: Gate, governed: Settings
) -> None:
    """A decision link shows one set of arguments: an edit landing before its press must not be approved by
    it (the check is in the decision's own transaction, so no moment is left between looking and deciding)."""
    request = await gate.file("buy_stock", buy(30), "agent")
    raised = await gate.approve(request.request_id, "alice", None, {"quantity": 100})

    with pytest.raises(NotPending, match="edited since you were shown it"):
        await gate.approve(request.request_id, "bob", shown=request.arguments_digest)
    with pytest.raises(NotPending, match="edited since you were shown it"):
        await gate.reject(request.request_id, "bob", "too much", shown=request.arguments_digest)

    assert (await gate.get(request.request_id)).status is Status.PENDING
    assert orders(governed) == 0
    done = await gate.approve(request.request_id, "bob", shown=raised.arguments_digest)
    assert done.status is Status.EXECUTED


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"quantity": -1}, "quantity"),
        ({"venue": "dark pool"}, "venue"),
        ({"quantity": 100}, "changes nothing"),
    ],
)
async def test_a_bad_edit_is_refused_and_changes_nothing(
    gate: Gate, changes: dict[str, object], message: str
) -> None:
    request = await gate.file("buy_stock", buy(100), "agent")

    with pytest.raises(InvalidArguments, match=message):
        await gate.approve(request.request_id, "alice", None, changes)

    after = await gate.get(request.request_id)
    assert after.decisions == []
    assert after.arguments == request.arguments


async def test_an_edit_into_a_denied_request_is_refused(gate: Gate) -> None:
    request = await gate.file("send_email", {"to": "x@partner.org", "subject": "s", "body": "b"}, "agent")

    with pytest.raises(NotAllowed, match="refuses the edited arguments"):
        await gate.approve(request.request_id, "alice", None, {"to": "spy@competitor.com"})
    assert (await gate.get(request.request_id)).status is Status.PENDING


async def test_a_level_left_undecided_escalates_once_and_still_expires(
    gate: Gate, governed: Settings
) -> None:
    clock = Clock(1_000_000.0)
    gate.clock = clock
    request = await gate.file("delete_database_records", {"table": "users", "condition": "age > 40"}, "agent")
    clock.now += 599
    assert await gate.escalate() == 0

    clock.now += 2
    assert await gate.escalate() == 1
    assert await gate.escalate() == 0

    escalated = await gate.get(request.request_id)
    assert escalated.approval.escalated
    assert events(governed, request.request_id) == ["filed", "escalated"]
    clock.now += governed.ttl_for("delete_database_records")
    await gate.sweep()
    assert (await gate.get(request.request_id)).status is Status.EXPIRED


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        (
            '[{ when = "quantity * > 3", approval = "none" }]',
            r"policy\.buy_stock\.rules\[0\]\.when: .*position 11",
        ),
        ('[{ when = "colour = 1", approval = "none" }]', "unknown name 'colour'"),
        ('[{ levels = [{ roles = ["astronaut"] }] }]', r"rules\[0\]\.levels\[0\]\.roles: no principal holds"),
        ('[{ approval = "maybe" }]', r"policy\.buy_stock\.rules\.0\.approval"),
        ("[{ }]", "must name its levels"),
    ],
)
def test_a_bad_policy_is_refused_at_load_naming_the_rule(
    env: dict[str, str], config_file: Path, rules: str, message: str
) -> None:
    config_file.write_text(
        config_file.read_text()
        + f"\n[principals.alice]\nroles = ['trader']\n[policy.buy_stock]\nrules = {rules}\n"
    )

    with pytest.raises(ConfigError, match=message):
        load_settings(env)


async def test_over_mcp_an_approver_edits_and_the_agent_reads_what_ran_and_what_was_filed(
    governed: Settings,
) -> None:
    async with Client(build_server(governed, principal="agent")) as agent:
        filed = await agent.call_tool("buy_stock", buy(100))
        assert filed.structured_content is not None
        request_id = filed.structured_content["request_id"]
        async with Client(build_server(governed, principal="carol")) as carol:
            refused = await carol.call_tool("approve", {"request_id": request_id})
        async with Client(build_server(governed, principal="alice")) as alice:
            edited = await alice.call_tool(
                "approve", {"request_id": request_id, "reason": "smaller", "arguments": {"quantity": 50}}
            )
        record = await agent.call_tool("get_request", {"request_id": request_id})

    assert refused.is_error
    assert "needs trader" in str(refused.content)
    assert not edited.is_error
    assert record.structured_content is not None
    assert record.structured_content["status"] == "executed"
    assert record.structured_content["arguments"]["quantity"] == 50
    assert record.structured_content["original_arguments"]["quantity"] == 100
    assert record.structured_content["decisions"][0]["changes"] == {"quantity": {"before": 100, "after": 50}}
    assert record.structured_content["result"]["quantity"] == 50


async def test_over_mcp_an_auto_approved_call_says_it_ran_and_shows_the_result(
    governed: Settings,
) -> None:
    async with Client(build_server(governed, principal="agent")) as agent:
        small = await agent.call_tool("buy_stock", buy(2))
        large = await agent.call_tool("buy_stock", buy(100))

    assert small.structured_content is not None
    assert small.structured_content["status"] == "executed"
    assert small.structured_content["result"]["quantity"] == 2
    assert "ran once" in str(small.content) and "Nothing has run" not in str(small.content)
    assert large.structured_content is not None
    assert large.structured_content["status"] == "pending"
    assert "Nothing has run yet" in str(large.content) and "1 × trader" in str(large.content)


def warnings_for(env: dict[str, str], config_file: Path, tool: str, rules: str) -> tuple[str, ...]:
    config_file.write_text(
        config_file.read_text()
        + "\n[principals.alice]\nroles = ['trader']\n[principals.reviewer-bot]\nroles = ['trader']\n"
        + f"[principals.bob]\nroles = ['risk_manager']\n[policy.{tool}]\nrules = {rules}\n"
    )
    return load_settings(env).warnings


def test_the_worked_example_loads_without_warnings(governed: Settings) -> None:
    assert governed.warnings == ()


@pytest.mark.parametrize(
    ("tool", "when", "message"),
    [
        ("buy_stock", "symbol > 5", "cannot compare symbol (text) with the number 5 using '>' at position 7"),
        ("buy_stock", "quantity / 0 > 1", "division by zero at position 9"),
        ("buy_stock", "quantity % (price - price) > 1", ""),  # not constant: no warning
        ("buy_stock", "quantity * price / (2 - 2) > 1", "division by zero at position 17"),
        ("buy_stock", "symbol + 1 > 2", "'+' at position 7 needs numbers, got symbol (text)"),
        (
            "buy_stock",
            "quantity LIKE 'x%'",
            "LIKE at position 9 needs text on both sides, got quantity (a number)",
        ),
        ("buy_stock", "quantity * price", "the expression gives a number, not true or false"),
        ("buy_stock", "NOT symbol", "NOT at position 0 needs conditions (true or false), got symbol (text)"),
        # Preview values have types too: sufficient_cash is a boolean, total a number.
        (
            "buy_stock",
            "sufficient_cash = 'yes'",
            "cannot compare sufficient_cash (a boolean) with text 'yes'",
        ),
        ("buy_stock", "total LIKE '1%'", "got total (a number)"),
        ("buy_stock", "sufficient_cash = FALSE AND total > 100", ""),
        (
            "send_email",
            "to IN (1, 2)",
            "cannot compare to (text) with the number 1 using '=' at position 3 (IN)",
        ),
        ("send_email", "size_bytes > '1000'", "cannot compare size_bytes (a number) with text '1000'"),
        ("send_email", "to IN ('a@example.com', NULL)", ""),
        ("delete_database_records", "matching_rows > 100 OR condition", "OR at position 20 needs conditions"),
        ("delete_database_records", "matching_rows > 100 AND condition LIKE '%age%'", ""),
    ],
)
def test_a_when_that_fails_on_every_call_is_a_warning_naming_the_rule(
    env: dict[str, str], config_file: Path, tool: str, when: str, message: str
) -> None:
    warnings = warnings_for(env, config_file, tool, f'[{{ when = "{when}", approval = "none" }}]')

    if not message:
        assert warnings == ()
        return
    [warning] = warnings
    assert warning.startswith(f"policy.{tool}.rules[0].when: ")
    assert message in warning
    assert "every call that reaches this rule would be refused" in warning


def test_an_in_list_whose_later_value_cannot_compare_warns_when_it_fails(
    env: dict[str, str], config_file: Path
) -> None:
    [warning] = warnings_for(
        env, config_file, "send_email", '[{ when = "to IN (\'a@x.org\', 1)", approval = "none" }]'
    )

    assert warning.startswith("policy.send_email.rules[0].when: cannot compare to (text) with the number 1")
    assert "refused unless it matches an earlier value of the IN list" in warning


@pytest.mark.parametrize(
    ("levels", "message"),
    [
        (
            '[{ roles = ["trader"], count = 3 }]',
            "rules[0].levels[0].count: needs 3 distinct principals holding trader but only 2 do "
            "(alice, reviewer-bot)",
        ),
        (
            '[{ roles = ["trader"], count = 2 }, { roles = ["trader", "risk_manager"], count = 2 }]',
            "rules[0].levels: levels[0] and levels[1] together need 4 distinct principals but only 3",
        ),
        ('[{ roles = ["trader"], count = 2 }, { roles = ["risk_manager"], count = 1 }]', ""),
        ("[{ count = 50 }]", ""),  # no roles: anyone, configured or not
    ],
)
def test_a_level_too_few_principals_can_fill_is_a_warning(
    env: dict[str, str], config_file: Path, levels: str, message: str
) -> None:
    warnings = warnings_for(env, config_file, "buy_stock", f"[{{ levels = {levels} }}]")

    if not message:
        assert warnings == ()
        return
    [warning] = warnings
    assert warning.startswith("policy.buy_stock.")
    assert message in warning


def test_a_rule_after_one_that_always_applies_is_a_warning(env: dict[str, str], config_file: Path) -> None:
    warnings = warnings_for(
        env,
        config_file,
        "buy_stock",
        '[{ approval = "deny" }, { when = "quantity > 1", approval = "none" }, { approval = "none" }]',
    )

    assert [warning.split(":")[0] for warning in warnings] == [
        "policy.buy_stock.rules[1]",
        "policy.buy_stock.rules[2]",
    ]
    assert "rules[0] has no `when`" in warnings[0]


def test_a_when_that_names_nothing_and_is_false_is_a_warning(env: dict[str, str], config_file: Path) -> None:
    rules = '[{ when = "1 > 2", approval = "none" }, { when = "2 > 1", approval = "deny" }]'

    [warning] = warnings_for(env, config_file, "buy_stock", rules)

    assert warning.startswith("policy.buy_stock.rules[0].when: '1 > 2' names no argument and is never true")


# --- a warning is never a guess -----------------------------------------------------------------------------
# For expressions built at random over typed names, whenever the static check says a `when` fails on every
# call, the evaluator refuses it for every well-typed value tried.

TYPED_NAMES = {"n": expr.NUMBER, "t": expr.TEXT, "b": expr.BOOLEAN}
VALUES = {
    "n": st.one_of(st.integers(-5, 5), st.floats(-5, 5, allow_nan=False)),
    "t": st.text(alphabet="ab%_", max_size=3),
    "b": st.booleans(),
}
LEAVES = st.sampled_from(["n", "t", "b", "0", "1", "2.5", "'a'", "'%'", "TRUE", "FALSE", "NULL"])


def _expressions() -> st.SearchStrategy[str]:
    def extend(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        binary = st.sampled_from(
            ["+", "-", "*", "/", "%", "=", "<", ">=", "!=", "AND", "OR", "LIKE", "NOT LIKE"]
        )
        return st.one_of(
            st.tuples(inner, binary, inner).map(lambda parts: f"({parts[0]} {parts[1]} {parts[2]})"),
            inner.map(lambda operand: f"(NOT {operand})"),
            inner.map(lambda operand: f"(-{operand})"),
            inner.map(lambda operand: f"({operand} IS NULL)"),
            st.tuples(
                inner, st.lists(st.sampled_from(["1", "'a'", "NULL", "TRUE"]), min_size=1, max_size=3)
            ).map(lambda parts: f"({parts[0]} IN ({', '.join(parts[1])}))"),
        )

    return st.recursive(LEAVES, extend, max_leaves=6)


@hypothesis.settings(max_examples=400, deadline=None, suppress_health_check=[hypothesis.HealthCheck.too_slow])
@hypothesis.given(text=_expressions(), data=st.data())
def test_an_every_call_warning_always_fails_at_run_time(text: str, data: st.DataObject) -> None:
    node = expr.parse(text)
    if not any(problem.when is None for problem in expr.type_problems(node, TYPED_NAMES)):
        return
    values = {name: data.draw(strategy, label=name) for name, strategy in VALUES.items()}

    with pytest.raises(expr.ExpressionError):
        expr.holds(node, values)
