"""The expression language: parsing, refusals, SQL compilation and evaluation."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hitl_mcp.errors import HitlError
from hitl_mcp.expr import (
    MAX_DEPTH,
    MAX_SQL_EXPRESSION_DEPTH,
    MAX_SQL_NESTING,
    Comparison,
    ExpressionError,
    In,
    IsNull,
    Like,
    Literal,
    Logical,
    Name,
    Node,
    Not,
    evaluate,
    holds,
    names,
    parse,
    to_sql,
)

COLUMNS = ("id", "age", "status", "last_login", "email", "deleted_at", "a", "b", "c")


def sql(text: str, columns: tuple[str, ...] = COLUMNS) -> tuple[str, list[object]]:
    return to_sql(parse(text), columns)


def refusal(text: str) -> ExpressionError:
    with pytest.raises(ExpressionError) as caught:
        sql(text)
    return caught.value


def value(text: str, max_length: int = 4000, **values: object) -> object:
    return evaluate(parse(text, max_length=max_length), values)


# --- the examples the action's description promises ---------------------------------------------------------


def test_comparison_with_a_number() -> None:
    assert parse("age < 30") == Comparison("<", Name("age", 0), Literal(30, 6), 4)
    assert sql("age < 30") == ('("age" < ?)', [30])


def test_two_comparisons_joined_by_and() -> None:
    assert sql("status = 'inactive' AND last_login < '2024-01-01'") == (
        '(("status" = ?) AND ("last_login" < ?))',
        ["inactive", "2024-01-01"],
    )


def test_in_list_of_numbers() -> None:
    assert parse("id IN (1, 2, 3)") == In(
        Name("id", 0), (Literal(1, 0), Literal(2, 0), Literal(3, 0)), negated=False, position=0
    )
    assert sql("id in (1, 2, -3)") == ('("id" IN (?, ?, ?))', [1, 2, -3])


def test_like_pattern() -> None:
    assert parse("email LIKE '%@test.com'") == Like(Name("email", 0), Literal("%@test.com", 0), False, 0)
    assert sql("email not like '%@test.com'") == ('("email" NOT LIKE ?)', ["%@test.com"])


def test_is_not_null() -> None:
    assert parse("deleted_at IS NOT NULL") == IsNull(Name("deleted_at", 0), negated=True, position=0)
    assert sql("deleted_at is null") == ('("deleted_at" IS NULL)', [])


def test_parentheses_and_or() -> None:
    assert sql("(age < 18 OR age > 65) AND status = 'active'") == (
        '((("age" < ?) OR ("age" > ?)) AND ("status" = ?))',
        [18, 65, "active"],
    )


def test_and_binds_tighter_than_or() -> None:
    a, b, c = (Comparison("=", Name(n, 0), Literal(i, 0), 0) for i, n in enumerate("abc", start=1))
    assert parse("a = 1 OR b = 2 AND c = 3") == Logical("OR", (a, Logical("AND", (b, c), 0)), 0)
    assert sql("a = 1 OR b = 2 AND c = 3")[0] == '(("a" = ?) OR (("b" = ?) AND ("c" = ?)))'


def test_not_binds_looser_than_comparison() -> None:
    assert parse("NOT a = 1") == Not(Comparison("=", Name("a", 0), Literal(1, 0), 0), 0)


def test_multiplication_binds_tighter_than_addition_and_chains_read_left_to_right() -> None:
    assert sql("a + b * c - 2 > -a") == ('(("a" + ("b" * "c") - ?) > (-"a"))', [2])
    assert value("10 - 4 - 3") == 3
    assert value("2 + 3 * 4") == 14
    assert value("(2 + 3) * 4") == 20


def test_literals_become_parameters() -> None:
    text = "status = 'it''s' OR age = 1.5 OR a = TRUE OR b = FALSE OR c = NULL OR a <> -2"
    statement, params = sql(text)
    assert params == ["it's", 1.5, True, False, None, -2]
    assert "'" not in statement
    assert "1.5" not in statement
    assert statement.count("?") == len(params)


def test_text_inside_a_string_is_data_not_syntax() -> None:
    assert sql("status = '1; DROP TABLE users -- /* SELECT'") == (
        '("status" = ?)',
        ["1; DROP TABLE users -- /* SELECT"],
    )


def test_keywords_are_case_insensitive_and_columns_take_their_declared_spelling() -> None:
    assert sql("AGE < 3 and Status Is Not Null", ("age", "Status")) == (
        '(("age" < ?) AND ("Status" IS NOT NULL))',
        [3],
    )


def test_names_lists_the_identifiers_used() -> None:
    assert names(parse("a = 1 OR (b + c > 2 AND NOT a IN (1)) OR email LIKE b")) == {"a", "b", "c", "email"}


# --- refusals -----------------------------------------------------------------------------------------------


def test_expression_error_is_a_hitl_error_with_a_position() -> None:
    error = refusal("age <")
    assert isinstance(error, HitlError)
    assert error.position == 5


def test_semicolon_is_refused() -> None:
    error = refusal("1=1; DROP TABLE users")
    assert str(error) == "unexpected ';' at position 3: only one condition is allowed"
    assert error.position == 3


@pytest.mark.parametrize(("text", "position"), [("age < 30 -- and more", 9), ("age /* x */ < 30", 4)])
def test_comments_are_refused(text: str, position: int) -> None:
    assert str(refusal(text)) == f"comments are not allowed (position {position})"


@pytest.mark.parametrize("text", ["lower(email) = 'x'", "LENGTH (email) > 3", "count(*) > 1"])
def test_function_calls_are_refused(text: str) -> None:
    name = text.split("(")[0].strip()
    assert str(refusal(text)) == f"function calls are not allowed: '{name}' at position 0"


@pytest.mark.parametrize(
    ("text", "position"),
    [("id IN (SELECT id FROM admins)", 7), ("EXISTS (SELECT 1)", 0), ("age = (select max(age) from u)", 7)],
)
def test_subqueries_are_refused(text: str, position: int) -> None:
    assert str(refusal(text)) == f"subqueries are not allowed (position {position})"


@pytest.mark.parametrize("keyword", ["DROP", "union", "Delete", "INSERT", "UPDATE", "CASE", "FROM", "WHERE"])
def test_sql_keywords_outside_the_grammar_are_refused(keyword: str) -> None:
    message = str(refusal(f"age = 1 {keyword} x"))
    assert message.startswith(f"SQL keyword '{keyword}' is not allowed (position 8): ")


def test_between_is_refused_with_the_alternative() -> None:
    assert str(refusal("age BETWEEN 1 AND 2")) == (
        "BETWEEN is not supported (position 4): write 'x >= low AND x <= high' instead"
    )


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_empty_condition_is_refused(text: str) -> None:
    assert str(refusal(text)) == "the condition is empty"


def test_overlong_condition_is_refused() -> None:
    with pytest.raises(ExpressionError, match=r"too long: 41 characters, at most 40"):
        parse("a = 1" + " " * 36, max_length=40)


def test_unclosed_parenthesis_is_refused() -> None:
    assert str(refusal("(age < 3 OR (a = 1)")) == "unbalanced parentheses: '(' at position 0 is never closed"


def test_unopened_parenthesis_is_refused() -> None:
    assert str(refusal("age < 3)")) == "unbalanced parentheses: ')' at position 7 has no matching '('"


def test_nesting_deeper_than_the_limit_is_refused() -> None:
    parse("(" * MAX_DEPTH + "a" + ")" * MAX_DEPTH)
    with pytest.raises(ExpressionError, match=rf"nested too deeply at position {MAX_DEPTH} "):
        parse("(" * (MAX_DEPTH + 1) + "a" + ")" * (MAX_DEPTH + 1))
    with pytest.raises(ExpressionError, match="nested too deeply"):
        parse("NOT " * (MAX_DEPTH + 1) + "a")
    with pytest.raises(ExpressionError, match="nested too deeply"):
        parse("- " * (MAX_DEPTH + 1) + "a")


def test_long_chains_do_not_exhaust_the_stack() -> None:
    assert names(parse(" + ".join(["a"] * 3000), max_length=20_000)) == {"a"}
    assert value(" + ".join(["1"] * 3000), max_length=20_000) == 3000


def test_chains_are_limited_to_what_sqlite_can_hold() -> None:
    # A chain of n operands nests n - 1 binary nodes; the comparison above them is one more level.
    longest = " + ".join(["a"] * (MAX_SQL_EXPRESSION_DEPTH - 1)) + " > 0"
    statement, params = to_sql(parse(longest, max_length=10_000), ["a"])
    with closing(sqlite3.connect(":memory:")) as connection:
        connection.execute("CREATE TABLE t (a)")
        connection.execute(f'SELECT count(*) FROM "t" WHERE {statement}', params)
    with pytest.raises(ExpressionError, match="too long a chain of operators for the database"):
        to_sql(parse(" + ".join(["a"] * (MAX_SQL_EXPRESSION_DEPTH + 1)), max_length=10_000), ["a"])


def test_in_list_longer_than_the_limit_is_refused() -> None:
    parse("id IN (" + ", ".join(["1"] * 1000) + ")", max_length=10_000)
    with pytest.raises(ExpressionError, match="the IN list at position 6 has more than 1000 values"):
        parse("id IN (" + ", ".join(["1"] * 1001) + ")", max_length=10_000)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("age = ?", "unexpected character '?' at position 6"),
        ("age = :x", "unexpected character ':' at position 6"),
        ("age = @x", "unexpected character '@' at position 6"),
        ("age = `x`", "unexpected character '`' at position 6"),
        ('"age" = 1', "quoted identifiers are not allowed (position 0): write column names bare, e.g. age"),
        ("users.age = 1", "unexpected '.' at position 5: write column names alone, without a table name"),
        ("age == 1", "'==' is not an operator here; use '=' (position 4)"),
        ("a || b = 'x'", "'||' (string concatenation) is not supported (position 2)"),
        ("age = 'x", "unterminated string starting at position 6: close it with '"),
        ("age = 0x1F", "malformed number '0x1F' at position 6"),
        ("age = 99999999999999999999", "number at position 6 is too large (at most 9223372036854775807)"),
    ],
)
def test_stray_characters_and_foreign_syntax_are_refused(text: str, message: str) -> None:
    assert str(refusal(text)) == message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("age <", "the condition ends too early at position 5: expected a value"),
        ("age 30", "unexpected '30' at position 4: expected AND, OR or the end of the condition"),
        ("1 < age < 3", "a second comparison follows at position 8: combine comparisons with AND or OR"),
        ("age IS 3", "unexpected '3' at position 7: expected NULL or NOT NULL after IS"),
        ("age NOT = 3", "unexpected '=' at position 8: expected LIKE or IN after NOT"),
        ("age IN 3", "unexpected '3' at position 7: expected '(' after IN"),
        ("age IN ()", "IN needs at least one value (position 7)"),
        ("age IN (a)", "unexpected 'a' at position 8: an IN list may contain only literal values"),
        ("AND age = 1", "unexpected 'AND' at position 0: expected a value"),
    ],
)
def test_malformed_conditions_say_what_was_expected(text: str, message: str) -> None:
    assert str(refusal(text)).startswith(message)


def test_unknown_column_is_named_with_the_known_ones() -> None:
    with pytest.raises(ExpressionError) as caught:
        to_sql(parse("agee < 30"), ["id", "email", "age"], table="users")
    assert str(caught.value) == (
        "unknown column 'agee' at position 0 (did you mean 'age'?); columns of users: age, email, id"
    )
    with pytest.raises(ExpressionError, match=r"unknown column 'rowid' at position 11; known columns: id$"):
        to_sql(parse("id = 1 AND rowid = 2"), ["id"])


def test_sql_nesting_is_limited_to_what_sqlite_can_parse() -> None:
    def nested(levels: int) -> Node:
        return parse("a + (" * (levels - 1) + "a + a" + ")" * (levels - 1))

    statement, params = to_sql(nested(MAX_SQL_NESTING), ["a"])
    with closing(sqlite3.connect(":memory:")) as connection:
        connection.execute("CREATE TABLE t (a)")
        connection.execute(f'SELECT count(*) FROM "t" WHERE {statement}', params)
    with pytest.raises(ExpressionError, match="nested too deeply for the database"):
        to_sql(nested(MAX_SQL_NESTING + 1), ["a"])


# --- evaluation ---------------------------------------------------------------------------------------------


def test_policy_rule_over_arguments() -> None:
    rule = parse("quantity * price > 10000")
    assert holds(rule, {"quantity": 100, "price": Decimal("100.01")})
    assert not holds(rule, {"quantity": 100, "price": 100})
    assert holds(rule, {"quantity": 3, "price": 5000.5})


def test_like_follows_sqlite() -> None:
    assert value("to LIKE '%@example.com'", to="Bob@EXAMPLE.com") is True
    assert value("to LIKE '%@example.com'", to="bob@example.com.evil") is False
    assert value("code LIKE 'a_c'", code="abc") is True
    assert value("code LIKE 'a_c'", code="abbc") is False
    assert value("code NOT LIKE '%b%'", code="ABC") is False
    assert value("code LIKE 'é'", code="É") is False  # SQLite folds ASCII only
    assert value("code LIKE '%a%a%a%a%a%a%a%a%b'", code="a" * 3000) is False


def test_comparisons_in_and_null() -> None:
    assert value("status IN ('a', 'b') AND n != 3 AND n <> 4 AND n >= 2", status="b", n=2) is True
    assert value("n NOT IN (1, 2)", n=3) is True
    assert value("n IN (1, NULL)", n=3) is None
    assert value("n IS NULL", n=None) is True
    assert value("n = 1", n=None) is None
    assert value("n IS NOT NULL AND n > 1", n=None) is False


def test_three_valued_logic() -> None:
    assert value("n = 1 OR TRUE", n=None) is True
    assert value("n = 1 AND FALSE", n=None) is False
    assert value("NOT n = 1", n=None) is None
    assert not holds(parse("n = 1"), {"n": None})


def test_division_follows_sqlite() -> None:
    assert value("7 / 2") == 3
    assert value("-7 / 2") == -3
    assert value("-7 % 2") == -1
    assert value("7.0 / 2") == Decimal("3.5")
    assert value("x / 4", x=1.0) == 0.25


def test_division_by_zero_is_refused() -> None:
    with pytest.raises(ExpressionError, match="division by zero at position 2"):
        value("1 / (n - n)", n=5)
    with pytest.raises(ExpressionError, match="division by zero at position 4"):
        value("1.5 % 0")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("'a' * 2", "'*' at position 4 needs numbers, got text 'a' and the number 2"),
        ("n < 5", "cannot compare text 'x' with the number 5 using '<' at position 2"),
        ("n = 'x' AND 1", "AND at position 8 needs conditions (true or false), got the number 1"),
        ("n LIKE 5", "LIKE at position 2 needs text on both sides, got text 'x' and the number 5"),
        ("-n", "'-' at position 0 needs numbers, got text 'x'"),
    ],
)
def test_type_mismatch_is_refused(text: str, message: str) -> None:
    with pytest.raises(ExpressionError) as caught:
        value(text, n="x")
    assert str(caught.value) == message


def test_unknown_name_is_refused_even_when_the_result_is_already_known() -> None:
    with pytest.raises(ExpressionError) as caught:
        value("TRUE OR quantitty > 1", quantity=1, price=2)
    assert str(caught.value) == (
        "unknown name 'quantitty' at position 8 (did you mean 'quantity'?); known names: price, quantity"
    )


def test_values_that_are_not_scalars_are_refused() -> None:
    with pytest.raises(ExpressionError, match="'tags' at position 0 is a list"):
        value("tags = 1", tags=[1])


def test_holds_refuses_a_non_condition() -> None:
    with pytest.raises(ExpressionError, match="gives the number 3, not true or false"):
        holds(parse("1 + 2"), {})


# --- property: whatever the text, nothing but the allowed columns and fixed syntax reaches SQL -------------

ALLOWED = ("id", "name", "score")
# Everything to_sql may emit besides double-quoted identifiers and `?`.
SQL_SKELETON = re.compile(r"(?:\s|[()?,+\-*/%=!<>]|\b(?:AND|OR|NOT|LIKE|IN|IS|NULL)\b)*")
FRAGMENTS = (
    *ALLOWED, "other", "secret", "sqlite_master", "rowid", "(", ")", ",", ";", "--", "/*", "*/", "'", "''",
    "'x'", "'%a_'", "1", "-2", "3.5", ".5", "0x10", "=", "!=", "<>", "<", "<=", ">", ">=", "+", "-", "*",
    "/", "%", "AND", "or", "NOT", "LIKE", "IN", "IS", "NULL", "TRUE", "false", "SELECT", "DROP", "UNION",
    "DELETE", "FROM", '"', "`", "[", "]", "?", ":x", "@x", "||", ".", "lower", "count(*)", "\n", "\\",
)  # fmt: skip


@pytest.fixture(scope="module")
def database() -> Iterator[sqlite3.Connection]:
    connection = sqlite3.connect(":memory:")
    connection.execute('CREATE TABLE "t" (id INTEGER PRIMARY KEY, name TEXT, score REAL)')
    connection.executemany(
        'INSERT INTO "t" VALUES (?, ?, ?)', [(1, "ann", 1.5), (2, None, None), (3, "x", 7)]
    )
    connection.execute('CREATE TABLE "other" (secret TEXT)')
    connection.execute("INSERT INTO other VALUES ('keep me')")
    yield connection
    connection.close()


def check_compiles_safely(text: str, connection: sqlite3.Connection) -> None:
    try:
        statement, params = to_sql(parse(text), ALLOWED)
    except ExpressionError:
        return
    identifiers = re.findall(r'"([^"]*)"', statement)
    assert set(identifiers) <= set(ALLOWED)
    assert SQL_SKELETON.fullmatch(re.sub(r'"[^"]*"', " ", statement)), statement
    assert statement.count("?") == len(params)
    connection.execute(f'SELECT count(*) FROM "t" WHERE {statement}', params).fetchone()
    assert connection.execute("SELECT secret FROM other").fetchall() == [("keep me",)]
    assert connection.execute('SELECT count(*) FROM "t"').fetchone() == (3,)


@settings(max_examples=100, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.text(max_size=80))
def test_arbitrary_text_never_reaches_sql_unchecked(database: sqlite3.Connection, text: str) -> None:
    check_compiles_safely(text, database)


@settings(max_examples=100, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parts=st.lists(st.sampled_from(FRAGMENTS), max_size=25))
def test_token_soup_never_reaches_sql_unchecked(database: sqlite3.Connection, parts: list[str]) -> None:
    check_compiles_safely(" ".join(parts), database)


def well_formed() -> st.SearchStrategy[str]:
    """Conditions that mostly parse, so the SQL side is exercised and not only the refusals."""
    strings = st.text(max_size=8).map(lambda text: "'" + text.replace("'", "''") + "'")
    numbers = st.integers(-(2**63) + 1, 2**63 - 1).map(str) | st.sampled_from(["0.0", "1.5", ".25", "7."])
    leaves = st.sampled_from([*ALLOWED, "other", "NULL", "TRUE", "FALSE"]) | strings | numbers

    def extend(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        binary = st.sampled_from(
            ["=", "<>", "<", ">=", "+", "-", "*", "/", "%", "AND", "OR", "LIKE", "NOT LIKE"]
        )
        in_list = st.lists(strings | numbers | st.just("NULL"), min_size=1, max_size=4).map(", ".join)
        return (
            st.tuples(inner, binary, inner).map(" ".join)
            | inner.map(lambda text: f"({text})")
            | inner.map(lambda text: f"NOT {text}")
            | inner.map(lambda text: f"- {text}")
            | st.tuples(inner, st.sampled_from(["IS NULL", "IS NOT NULL"])).map(" ".join)
            | st.tuples(inner, st.sampled_from(["IN", "NOT IN"]), in_list).map(
                lambda t: f"{t[0]} {t[1]} ({t[2]})"
            )
        )

    return st.recursive(leaves, extend, max_leaves=20)


@settings(max_examples=100, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=well_formed())
def test_well_formed_conditions_compile_to_runnable_sql(database: sqlite3.Connection, text: str) -> None:
    check_compiles_safely(text, database)
