"""The one small expression language: delete conditions compiled to SQL, policy rules evaluated in Python.

Text is tokenized and parsed by hand into an immutable tree. `to_sql` emits only validated column names,
fixed operators and `?` placeholders, so nothing the caller wrote is ever pasted into SQL; `evaluate` walks
the tree with SQL's semantics (three-valued logic, LIKE wildcards, integer division). There is no `eval`.

Grammar, loosest binding first (keywords are case-insensitive):

    condition  := or
    or         := and ("OR" and)*
    and        := not ("AND" not)*
    not        := "NOT" not | comparison
    comparison := additive [ ("=" | "!=" | "<>" | "<" | "<=" | ">" | ">=") additive
                           | ["NOT"] "LIKE" additive
                           | ["NOT"] "IN" "(" literal ("," literal)* ")"
                           | "IS" ["NOT"] "NULL" ]
    additive   := multiplicative (("+" | "-") multiplicative)*
    multiplicative := unary (("*" | "/" | "%") unary)*
    unary      := "-" unary | primary
    primary    := number | string | "NULL" | "TRUE" | "FALSE" | identifier | "(" or ")"
"""

from __future__ import annotations

import difflib
import math
import re
import types
import typing
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Final, TypeAlias, TypeVar, cast

from hitl_mcp.errors import HitlError

MAX_DEPTH: Final = 64
"""Nesting allowed by `parse`: parentheses, NOT and unary minus, counted together."""

MAX_SQL_NESTING: Final = 30
"""Nesting `to_sql` emits. SQLite builds before 3.46 have a fixed 100-slot parser stack, and each level of a
right-nested `(a + (b ...))` takes three slots, so deeper SQL fails with "parser stack overflow"."""

MAX_SQL_EXPRESSION_DEPTH: Final = 1000
"""SQLite's default SQLITE_MAX_EXPR_DEPTH: it reads `a + b + c ...` as nested binary nodes, one level each."""

MAX_IN_ITEMS: Final = 1000

_MAX_INTEGER: Final = 2**63 - 1  # what SQLite can bind


class ExpressionError(HitlError):
    """The text is not a valid expression, or cannot be compiled or evaluated. Says what and where."""

    exit_code = 2

    def __init__(self, message: str, position: int) -> None:
        super().__init__(message)
        self.position = position


# --- the tree ---------------------------------------------------------------------------------------------
# `position` is the 0-based offset of the node's token in the text, for error messages; it does not take part
# in equality, so trees parsed from differently spaced text compare equal.

Scalar: TypeAlias = int | Decimal | str | bool | None


@dataclass(frozen=True, slots=True)
class Literal:
    value: Scalar
    position: int = field(compare=False)


@dataclass(frozen=True, slots=True)
class Name:
    name: str
    position: int = field(compare=False)


@dataclass(frozen=True, slots=True)
class Negate:
    operand: Node
    position: int = field(compare=False)


@dataclass(frozen=True, slots=True)
class Not:
    operand: Node
    position: int = field(compare=False)


@dataclass(frozen=True, slots=True)
class Operation:
    """One `op operand` step of an arithmetic chain."""

    op: str
    operand: Node
    position: int = field(compare=False)


@dataclass(frozen=True, slots=True)
class Arithmetic:
    """`first op operand op operand ...`, left-associative, all ops of one precedence level.

    A chain rather than nested binary nodes, so a long `a + b + c + ...` cannot exhaust Python's stack."""

    first: Node
    rest: tuple[Operation, ...]
    position: int = field(compare=False)


@dataclass(frozen=True, slots=True)
class Comparison:
    op: str  # one of = != < <= > >=  (`<>` is read as `!=`)
    left: Node
    right: Node
    position: int = field(compare=False)


@dataclass(frozen=True, slots=True)
class Like:
    operand: Node
    pattern: Node
    negated: bool
    position: int = field(compare=False)


@dataclass(frozen=True, slots=True)
class In:
    operand: Node
    items: tuple[Literal, ...]
    negated: bool
    position: int = field(compare=False)


@dataclass(frozen=True, slots=True)
class IsNull:
    operand: Node
    negated: bool
    position: int = field(compare=False)


@dataclass(frozen=True, slots=True)
class Logical:
    op: str  # AND or OR
    operands: tuple[Node, ...]
    position: int = field(compare=False)


Node: TypeAlias = Literal | Name | Negate | Not | Arithmetic | Comparison | Like | In | IsNull | Logical


# --- tokens -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # number, string, name, keyword, op, "(", ")", ",", end
    text: str
    position: int
    value: Scalar = None


_WHITESPACE: Final = frozenset(" \t\r\n\f\v")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")
_NUMBER_TAIL = re.compile(r"[A-Za-z0-9_.]+")
_OPERATORS: Final = ("<=", ">=", "<>", "!=", "=", "<", ">", "+", "-", "*", "/", "%")
_GRAMMAR_KEYWORDS: Final = frozenset({"AND", "OR", "NOT", "LIKE", "IN", "IS", "NULL", "TRUE", "FALSE"})

_GRAMMAR_HINT: Final = (
    "a condition may only use column names, literals, comparisons, LIKE, IN, IS NULL, AND, OR, NOT "
    "and parentheses"
)
# Words of SQL that have no place in a condition. Refusing them by name gives a clear message where a parse
# error would only say "unexpected"; words likely to be column names (to, key, action, ...) are left out.
_REFUSED_KEYWORDS: Final = frozenset(
    {
        "ALTER", "ANALYZE", "AS", "ATTACH", "BEGIN", "BY", "CASE", "CAST", "COLLATE", "COMMIT", "CREATE",
        "DELETE", "DETACH", "DISTINCT", "DROP", "ELSE", "END", "ESCAPE", "EXCEPT", "EXPLAIN", "FROM", "GLOB",
        "GROUP", "HAVING", "INSERT", "INTERSECT", "INTO", "JOIN", "LIMIT", "MATCH", "OFFSET", "ORDER",
        "PRAGMA", "RAISE", "REGEXP", "REINDEX", "RELEASE", "REPLACE", "RETURNING", "ROLLBACK", "SAVEPOINT",
        "SET", "TABLE", "THEN", "TRIGGER", "UNION", "UPDATE", "VACUUM", "VALUES", "WHEN", "WHERE", "WITH",
    }
)  # fmt: skip
_KEYWORD_HINTS: Final = {
    "BETWEEN": "write 'x >= low AND x <= high' instead",
    "ISNULL": "write 'x IS NULL' instead",
    "NOTNULL": "write 'x IS NOT NULL' instead",
    "CURRENT_DATE": "write the date as a quoted literal, e.g. '2024-01-01'",
    "CURRENT_TIME": "write the time as a quoted literal, e.g. '12:00:00'",
    "CURRENT_TIMESTAMP": "write the timestamp as a quoted literal, e.g. '2024-01-01 12:00:00'",
}


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char in _WHITESPACE:
            i += 1
            continue
        if text.startswith(("--", "/*"), i):
            raise ExpressionError(f"comments are not allowed (position {i})", i)
        if char == "'":
            token = _read_string(text, i)
        elif number := _NUMBER.match(text, i):
            token = _read_number(text, number)
        elif word := _WORD.match(text, i):
            token = _read_word(text, word)
        elif char in "(),":
            token = _Token(char, char, i)
        else:
            token = _read_operator(text, i)
        tokens.append(token)
        i = token.position + len(token.text)
    tokens.append(_Token("end", "", len(text)))
    return tokens


def _read_string(text: str, start: int) -> _Token:
    i = start + 1
    while True:
        end = text.find("'", i)
        if end < 0:
            raise ExpressionError(f"unterminated string starting at position {start}: close it with '", start)
        if text.startswith("''", end):
            i = end + 2
            continue
        raw = text[start : end + 1]
        return _Token("string", raw, start, raw[1:-1].replace("''", "'"))


def _read_number(text: str, match: re.Match[str]) -> _Token:
    start, raw = match.start(), match.group()
    tail = _NUMBER_TAIL.match(text, match.end())
    if tail:
        bad = raw + tail.group()
        raise ExpressionError(f"malformed number '{bad}' at position {start}", start)
    if "." not in raw:
        if len(raw) > 19 or int(raw) > _MAX_INTEGER:
            raise ExpressionError(f"number at position {start} is too large (at most {_MAX_INTEGER})", start)
        return _Token("number", raw, start, int(raw))
    value = Decimal(raw)
    if not math.isfinite(float(value)):
        raise ExpressionError(f"number at position {start} is too large", start)
    return _Token("number", raw, start, value)


def _read_word(text: str, match: re.Match[str]) -> _Token:
    start, word = match.start(), match.group()
    upper = word.upper()
    if upper in _GRAMMAR_KEYWORDS:
        return _Token("keyword", upper, start)
    if upper in ("SELECT", "EXISTS"):
        raise ExpressionError(f"subqueries are not allowed (position {start})", start)
    rest = match.end()
    while rest < len(text) and text[rest] in _WHITESPACE:
        rest += 1
    if text.startswith("(", rest):
        raise ExpressionError(f"function calls are not allowed: '{word}' at position {start}", start)
    if upper in _KEYWORD_HINTS:
        raise ExpressionError(f"{upper} is not supported (position {start}): {_KEYWORD_HINTS[upper]}", start)
    if upper in _REFUSED_KEYWORDS:
        raise ExpressionError(
            f"SQL keyword '{word}' is not allowed (position {start}): {_GRAMMAR_HINT}", start
        )
    return _Token("name", word, start, word)


def _read_operator(text: str, i: int) -> _Token:
    char = text[i]
    if char == ";":
        raise ExpressionError(f"unexpected ';' at position {i}: only one condition is allowed", i)
    if text.startswith("==", i):
        raise ExpressionError(f"'==' is not an operator here; use '=' (position {i})", i)
    if text.startswith("||", i):
        raise ExpressionError(f"'||' (string concatenation) is not supported (position {i})", i)
    for op in _OPERATORS:
        if text.startswith(op, i):
            return _Token("op", op, i)
    if char == '"':
        raise ExpressionError(
            f"quoted identifiers are not allowed (position {i}): write column names bare, e.g. age", i
        )
    if char == ".":
        raise ExpressionError(
            f"unexpected '.' at position {i}: write column names alone, without a table name", i
        )
    raise ExpressionError(f"unexpected character {char!r} at position {i}", i)


def _check_parentheses(tokens: list[_Token]) -> None:
    """Name the unbalanced parenthesis, where the parser could only say 'unexpected'."""
    opened: list[int] = []
    for token in tokens:
        if token.kind == "(":
            opened.append(token.position)
            if len(opened) > MAX_DEPTH:
                raise _too_deep(token.position)
        elif token.kind == ")":
            if not opened:
                raise ExpressionError(
                    f"unbalanced parentheses: ')' at position {token.position} has no matching '('",
                    token.position,
                )
            opened.pop()
    if opened:
        raise ExpressionError(
            f"unbalanced parentheses: '(' at position {opened[-1]} is never closed", opened[-1]
        )


def _too_deep(position: int) -> ExpressionError:
    return ExpressionError(
        f"the condition is nested too deeply at position {position} (at most {MAX_DEPTH} levels)", position
    )


# --- parsing ----------------------------------------------------------------------------------------------

_COMPARISON_OPS: Final = frozenset({"=", "!=", "<>", "<", "<=", ">", ">="})


def parse(text: str, *, max_length: int = 4000) -> Node:
    """Parse `text` into a tree, or raise `ExpressionError` saying what is wrong and where."""
    if len(text) > max_length:
        raise ExpressionError(
            f"the condition is too long: {len(text)} characters, at most {max_length}", max_length
        )
    if not text.strip():
        raise ExpressionError("the condition is empty", 0)
    tokens = _tokenize(text)
    _check_parentheses(tokens)
    return _Parser(tokens).parse()


class _Parser:
    def __init__(self, tokens: list[_Token]) -> None:
        self._tokens = tokens
        self._index = 0
        self._depth = 0

    def parse(self) -> Node:
        node = self._or()
        token = self._peek()
        if token.kind != "end":
            raise self._unexpected(token, "expected AND, OR or the end of the condition")
        return node

    # Each level of the grammar, loosest first.

    def _or(self) -> Node:
        return self._logical("OR", self._and)

    def _and(self) -> Node:
        return self._logical("AND", self._not)

    def _logical(self, op: str, operand: Callable[[], Node]) -> Node:
        first = operand()
        operands = [first]
        position = self._peek().position
        while self._accept_keyword(op):
            operands.append(operand())
        if len(operands) == 1:
            return first
        return Logical(op, tuple(operands), position)

    def _not(self) -> Node:
        token = self._accept_keyword("NOT")
        if token is None:
            return self._comparison()
        self._enter(token)
        operand = self._not()
        self._depth -= 1
        return Not(operand, token.position)

    def _comparison(self) -> Node:
        left = self._additive()
        node = self._comparison_tail(left)
        if node is not left and self._starts_comparison():
            token = self._peek()
            raise ExpressionError(
                f"a second comparison follows at position {token.position}: combine comparisons with AND "
                "or OR, e.g. a > 1 AND a < 5",
                token.position,
            )
        return node

    def _comparison_tail(self, left: Node) -> Node:
        token = self._peek()
        if token.kind == "op" and token.text in _COMPARISON_OPS:
            self._advance()
            op = "!=" if token.text == "<>" else token.text
            return Comparison(op, left, self._additive(), token.position)
        if token.kind != "keyword" or token.text not in ("NOT", "LIKE", "IN", "IS"):
            return left
        self._advance()
        if token.text == "IS":
            negated = self._accept_keyword("NOT") is not None
            if self._accept_keyword("NULL") is None:
                raise self._unexpected(self._peek(), "expected NULL or NOT NULL after IS")
            return IsNull(left, negated, token.position)
        negated = token.text == "NOT"
        keyword = self._advance() if negated else token
        if keyword.kind == "keyword" and keyword.text == "LIKE":
            return Like(left, self._additive(), negated, token.position)
        if keyword.kind == "keyword" and keyword.text == "IN":
            return In(left, self._in_list(), negated, token.position)
        raise self._unexpected(keyword, "expected LIKE or IN after NOT")

    def _starts_comparison(self) -> bool:
        token = self._peek()
        if token.kind == "op":
            return token.text in _COMPARISON_OPS
        return token.kind == "keyword" and token.text in ("NOT", "LIKE", "IN", "IS")

    def _in_list(self) -> tuple[Literal, ...]:
        opening = self._advance()
        if opening.kind != "(":
            raise self._unexpected(opening, "expected '(' after IN")
        if self._peek().kind == ")":
            raise ExpressionError(
                f"IN needs at least one value (position {opening.position})", opening.position
            )
        items = [self._in_item()]
        while self._peek().kind == ",":
            self._advance()
            items.append(self._in_item())
            if len(items) > MAX_IN_ITEMS:
                raise ExpressionError(
                    f"the IN list at position {opening.position} has more than {MAX_IN_ITEMS} values",
                    opening.position,
                )
        closing = self._advance()
        if closing.kind != ")":
            raise self._unexpected(closing, "expected ',' or ')' in the IN list")
        return tuple(items)

    def _in_item(self) -> Literal:
        token = self._advance()
        if token.kind == "op" and token.text == "-" and self._peek().kind == "number":
            number = self._advance()
            assert isinstance(number.value, int | Decimal)
            return Literal(-number.value, token.position)
        literal = self._literal(token)
        if literal is None:
            raise self._unexpected(
                token, "an IN list may contain only literal values (numbers, strings, NULL, TRUE, FALSE)"
            )
        return literal

    def _additive(self) -> Node:
        return self._chain(("+", "-"), self._multiplicative)

    def _multiplicative(self) -> Node:
        return self._chain(("*", "/", "%"), self._unary)

    def _chain(self, ops: tuple[str, ...], operand: Callable[[], Node]) -> Node:
        first = operand()
        rest: list[Operation] = []
        while (token := self._peek()).kind == "op" and token.text in ops:
            self._advance()
            rest.append(Operation(token.text, operand(), token.position))
        if not rest:
            return first
        return Arithmetic(first, tuple(rest), first.position)

    def _unary(self) -> Node:
        token = self._peek()
        if token.kind != "op" or token.text != "-":
            return self._primary()
        self._advance()
        self._enter(token)
        operand = self._unary()
        self._depth -= 1
        # A negative number is one literal, so it becomes one SQL parameter.
        if isinstance(operand, Literal) and _is_number(operand.value):
            return Literal(-cast(int | Decimal, operand.value), token.position)
        return Negate(operand, token.position)

    def _primary(self) -> Node:
        token = self._advance()
        literal = self._literal(token)
        if literal is not None:
            return literal
        if token.kind == "name":
            return Name(token.text, token.position)
        if token.kind == "(":
            self._enter(token)
            node = self._or()
            self._depth -= 1
            closing = self._advance()
            if closing.kind != ")":
                raise self._unexpected(closing, "expected ')'")
            return node
        raise self._unexpected(token, "expected a value (a column name, number, 'text', NULL, TRUE or FALSE)")

    @staticmethod
    def _literal(token: _Token) -> Literal | None:
        if token.kind in ("number", "string"):
            return Literal(token.value, token.position)
        if token.kind == "keyword" and token.text in ("NULL", "TRUE", "FALSE"):
            constants: dict[str, Scalar] = {"NULL": None, "TRUE": True, "FALSE": False}
            return Literal(constants[token.text], token.position)
        return None

    # Token plumbing.

    def _peek(self) -> _Token:
        return self._tokens[self._index]

    def _advance(self) -> _Token:
        token = self._tokens[self._index]
        if token.kind != "end":
            self._index += 1
        return token

    def _accept_keyword(self, keyword: str) -> _Token | None:
        token = self._peek()
        if token.kind == "keyword" and token.text == keyword:
            return self._advance()
        return None

    def _enter(self, token: _Token) -> None:
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _too_deep(token.position)

    @staticmethod
    def _unexpected(token: _Token, expected: str) -> ExpressionError:
        if token.kind == "end":
            return ExpressionError(
                f"the condition ends too early at position {token.position}: {expected}", token.position
            )
        return ExpressionError(
            f"unexpected '{token.text}' at position {token.position}: {expected}", token.position
        )


# --- walking the tree -------------------------------------------------------------------------------------


def _children(node: Node) -> Iterator[Node]:
    match node:
        case Literal() | Name():
            return
        case Negate(operand) | Not(operand) | IsNull(operand):
            yield operand
        case Arithmetic(first, rest):
            yield first
            for step in rest:
                yield step.operand
        case Comparison(_, left, right):
            yield left
            yield right
        case Like(operand, pattern):
            yield operand
            yield pattern
        case In(operand, items):
            yield operand
            yield from items
        case Logical(_, operands):
            yield from operands


def names(node: Node) -> set[str]:
    """The identifiers the expression uses, as written."""
    found: set[str] = set()
    pending = [node]
    while pending:
        current = pending.pop()
        if isinstance(current, Name):
            found.add(current.name)
        pending.extend(_children(current))
    return found


# --- SQL --------------------------------------------------------------------------------------------------


def to_sql(node: Node, columns: Collection[str], *, table: str | None = None) -> tuple[str, list[object]]:
    """A parenthesised SQL fragment for `WHERE`, and its parameters.

    Every identifier must name one of `columns` (case-insensitively, like SQLite) and is emitted as that
    column's double-quoted name; every literal becomes a `?` parameter. `table` only improves messages."""
    compiler = _SqlCompiler(columns, table)
    sql = compiler.compile(node)
    if _expression_depth(node) > MAX_SQL_EXPRESSION_DEPTH:
        raise ExpressionError(
            f"the condition is too long a chain of operators for the database at position {node.position} "
            f"(at most {MAX_SQL_EXPRESSION_DEPTH} levels)",
            node.position,
        )
    return sql, compiler.params


def _expression_depth(node: Node) -> int:
    """An upper bound of the depth of SQLite's expression tree: a chain counts one level per operator."""
    operands = list(_children(node))
    deepest = max((_expression_depth(operand) for operand in operands), default=0)
    if isinstance(node, Arithmetic | Logical):
        return len(operands) - 1 + deepest
    return 1 + deepest


def quote_identifier(name: str) -> str:
    """`name` as an SQL identifier in double quotes, embedded quotes doubled."""
    return '"' + name.replace('"', '""') + '"'


class _SqlCompiler:
    def __init__(self, columns: Collection[str], table: str | None) -> None:
        self._columns = {column.lower(): column for column in columns}
        self._known = sorted(columns)
        self._table = table
        self._depth = 0
        self.params: list[object] = []

    def compile(self, node: Node) -> str:
        match node:
            case Literal(value):
                self.params.append(float(value) if isinstance(value, Decimal) else value)
                return "?"
            case Name(name, position):
                return quote_identifier(self._column(name, position))
        # Every other node is emitted inside its own parentheses: count them against SQLite's parser stack.
        self._depth += 1
        if self._depth > MAX_SQL_NESTING:
            raise ExpressionError(
                f"the condition is nested too deeply for the database at position {node.position} "
                f"(at most {MAX_SQL_NESTING} levels of operators and parentheses)",
                node.position,
            )
        sql = self._compound(node)
        self._depth -= 1
        return sql

    def _compound(self, node: Node) -> str:
        match node:
            case Negate(operand):
                return f"(-{self.compile(operand)})"
            case Not(operand):
                return f"(NOT {self.compile(operand)})"
            case Arithmetic(first, rest):
                # One precedence level per chain, so SQL's left-to-right reading is the tree's.
                parts = [self.compile(first)]
                for step in rest:
                    parts.append(f"{step.op} {self.compile(step.operand)}")
                return "(" + " ".join(parts) + ")"
            case Comparison(op, left, right):
                left_sql = self.compile(left)
                return f"({left_sql} {op} {self.compile(right)})"
            case Like(operand, pattern, negated):
                operand_sql = self.compile(operand)
                return f"({operand_sql} {'NOT ' if negated else ''}LIKE {self.compile(pattern)})"
            case In(operand, items, negated):
                operand_sql = self.compile(operand)
                placeholders = ", ".join(self.compile(item) for item in items)
                return f"({operand_sql} {'NOT ' if negated else ''}IN ({placeholders}))"
            case IsNull(operand, negated):
                return f"({self.compile(operand)} IS {'NOT ' if negated else ''}NULL)"
            case Logical(op, operands):
                parts = []
                for operand in operands:
                    parts.append(self.compile(operand))
                return "(" + f" {op} ".join(parts) + ")"
        raise AssertionError(f"unhandled node {node!r}")

    def _column(self, name: str, position: int) -> str:
        column = self._columns.get(name.lower())
        if column is not None:
            return column
        where = f"columns of {self._table}" if self._table else "known columns"
        close = difflib.get_close_matches(name.lower(), list(self._columns), n=1)
        hint = f" (did you mean '{self._columns[close[0]]}'?)" if close else ""
        raise ExpressionError(
            f"unknown column '{name}' at position {position}{hint}; {where}: {_listing(self._known)}",
            position,
        )


def _listing(items: list[str], limit: int = 40) -> str:
    if not items:
        return "(none)"
    shown = ", ".join(items[:limit])
    return shown if len(items) <= limit else f"{shown}, and {len(items) - limit} more"


# --- evaluation -------------------------------------------------------------------------------------------


def evaluate(node: Node, values: Mapping[str, object]) -> object:
    """The value of the expression over `values`, with SQL's semantics.

    NULL propagates and AND/OR/NOT use three-valued logic (so a condition may come out `None`); `/` and `%`
    on two integers give an integer truncated toward zero, as in SQLite; LIKE uses `%` and `_` and ignores
    ASCII case. Unknown names, mixed types and division by zero raise `ExpressionError`."""
    return _Evaluator(values).value(node)


def holds(node: Node, values: Mapping[str, object]) -> bool:
    """Whether the condition is true; NULL (unknown) counts as not true, as in a WHERE clause."""
    result = evaluate(node, values)
    if result is None or isinstance(result, bool):
        return result is True
    raise ExpressionError(
        f"the expression gives {_describe(result)}, not true or false (position {node.position})",
        node.position,
    )


Number: TypeAlias = int | float | Decimal


class _Evaluator:
    def __init__(self, values: Mapping[str, object]) -> None:
        self._values = values

    def value(self, node: Node) -> object:
        match node:
            case Literal(value):
                return value
            case Name(name, position):
                return self._lookup(name, position)
            case Negate(operand, position):
                operand_value = self.value(operand)
                if operand_value is None:
                    return None
                return -_number(operand_value, "-", position)
            case Not(operand, position):
                truth = _truth(self.value(operand), "NOT", position)
                return None if truth is None else not truth
            case Arithmetic(first, rest):
                result = self.value(first)
                for step in rest:
                    result = _arithmetic(step.op, result, self.value(step.operand), step.position)
                return result
            case Comparison(op, left, right, position):
                return _compare(op, self.value(left), self.value(right), position)
            case Like(operand, pattern, negated, position):
                return _negate_if(negated, _like(self.value(operand), self.value(pattern), position))
            case In(operand, items, negated, position):
                return _negate_if(negated, self._member(self.value(operand), items, position))
            case IsNull(operand, negated):
                return (self.value(operand) is None) != negated
            case Logical(op, operands, position):
                # Every operand is evaluated, so a typo or a type error is reported whatever the data.
                truths = [_truth(self.value(operand), op, position) for operand in operands]
                return _combine(op, truths)
        raise AssertionError(f"unhandled node {node!r}")

    def _lookup(self, name: str, position: int) -> object:
        if name not in self._values:
            known = sorted(self._values)
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ExpressionError(
                f"unknown name '{name}' at position {position}{hint}; known names: {_listing(known)}",
                position,
            )
        value = self._values[name]
        if value is None or isinstance(value, bool | int | float | Decimal | str):
            return value
        raise ExpressionError(
            f"'{name}' at position {position} is a {type(value).__name__}; only text, numbers, booleans and "
            "null can be used in an expression",
            position,
        )

    def _member(self, value: object, items: tuple[Literal, ...], position: int) -> bool | None:
        if value is None:
            return None
        saw_null = False
        for item in items:
            if item.value is None:
                saw_null = True
            elif _compare("=", value, item.value, position):
                return True
        return None if saw_null else False


def _negate_if(negated: bool, truth: bool | None) -> bool | None:
    if truth is None or not negated:
        return truth
    return not truth


def _combine(op: str, truths: list[bool | None]) -> bool | None:
    decisive = op == "OR"  # True decides an OR, False decides an AND
    if decisive in truths:
        return decisive
    if None in truths:
        return None
    return not decisive


def _truth(value: object, op: str, position: int) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise ExpressionError(
        f"{op} at position {position} needs conditions (true or false), got {_describe(value)}", position
    )


def _is_number(value: object) -> bool:
    return isinstance(value, int | float | Decimal) and not isinstance(value, bool)


def _number(value: object, op: str, position: int) -> Number:
    if _is_number(value):
        return value  # type: ignore[return-value]
    raise ExpressionError(f"'{op}' at position {position} needs numbers, got {_describe(value)}", position)


def _arithmetic(op: str, left: object, right: object, position: int) -> object:
    if left is None or right is None:
        return None
    if not (_is_number(left) and _is_number(right)):
        raise ExpressionError(
            f"'{op}' at position {position} needs numbers, got {_describe(left)} and {_describe(right)}",
            position,
        )
    a, b = cast(Number, left), cast(Number, right)
    if op in ("/", "%") and b == 0:
        raise ExpressionError(f"division by zero at position {position}", position)
    # Decimal and float do not mix in Python: exact while both operands are, float as soon as one is.
    if isinstance(a, float) or isinstance(b, float):
        return _inexact(op, float(a), float(b))
    if isinstance(a, Decimal) or isinstance(b, Decimal):
        return _inexact(op, Decimal(a), Decimal(b))
    return _integer(op, a, b)


_Inexact = TypeVar("_Inexact", float, Decimal)


def _inexact(op: str, a: _Inexact, b: _Inexact) -> _Inexact:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if op == "/":
        return a / b
    # SQL's remainder takes the dividend's sign, like math.fmod and Decimal's %, unlike float's %.
    return math.fmod(a, b) if isinstance(a, float) else a % b


def _integer(op: str, a: int, b: int) -> int:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    # SQLite truncates toward zero where Python's // and % floor.
    quotient = abs(a) // abs(b) * (1 if (a < 0) == (b < 0) else -1)
    return quotient if op == "/" else a - b * quotient


_COMPARE: Final = {
    "=": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


def _compare(op: str, left: object, right: object, position: int) -> bool | None:
    if left is None or right is None:
        return None
    numeric = isinstance(left, int | float | Decimal) and isinstance(right, int | float | Decimal)
    if not numeric and not (isinstance(left, str) and isinstance(right, str)):
        raise ExpressionError(
            f"cannot compare {_describe(left)} with {_describe(right)} using '{op}' at position {position}",
            position,
        )
    result: bool = _COMPARE[op](left, right)
    return result


def _like(value: object, pattern: object, position: int) -> bool | None:
    if value is None or pattern is None:
        return None
    if not (isinstance(value, str) and isinstance(pattern, str)):
        raise ExpressionError(
            f"LIKE at position {position} needs text on both sides, got {_describe(value)} and "
            f"{_describe(pattern)}",
            position,
        )
    return _like_match(value.translate(_ASCII_LOWER), pattern.translate(_ASCII_LOWER))


_ASCII_LOWER: Final = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _like_match(text: str, pattern: str) -> bool:
    """`%` matches any run, `_` any one character.

    Backtracks only to the last `%`, so it is O(len(text) * len(pattern)) where a regular expression could
    take exponential time on a hostile pattern."""
    t = p = 0
    star = -1  # position in pattern just after the last %
    resume = 0  # position in text where that % should next try to end
    while t < len(text):
        if p < len(pattern) and pattern[p] == "%":
            star, resume = p + 1, t
            p += 1
        elif p < len(pattern) and pattern[p] in ("_", text[t]):
            p += 1
            t += 1
        elif star >= 0:
            resume += 1
            p, t = star, resume
        else:
            return False
    while p < len(pattern) and pattern[p] == "%":
        p += 1
    return p == len(pattern)


def _describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"text {shown!r}"
    if _is_number(value):
        return f"the number {value}"
    return f"a {type(value).__name__}"


# --- static types: what `evaluate` would refuse on every call ---------------------------------------------
# Policy rules are checked at load against the types of the names they use, so a rule that can only fail is
# reported before any call meets it. The rules mirror `_Evaluator` exactly. A type is an over-approximation
# (every kind a value may take, and whether it may be null), and a problem is reported only when every
# combination of those kinds is refused: a warning is never a guess. A refusal that a null operand would
# avoid is reported with `when` saying so, as is an IN value that an earlier match would skip.

_KIND_NAMES: Final = {"boolean": "a boolean", "number": "a number", "text": "text"}
_COMPARABLE_WITH_NUMBERS: Final = frozenset({"number", "boolean"})  # `_compare` takes bool as a number
_WHEN_SET: Final = "whenever its operands are not null"


@dataclass(frozen=True, slots=True)
class ValueType:
    """The kinds (boolean, number, text) a name or subexpression may hold, and whether it may be null.

    No kinds: always null."""

    kinds: frozenset[str]
    nullable: bool = False


NUMBER: Final = ValueType(frozenset({"number"}))
TEXT: Final = ValueType(frozenset({"text"}))
BOOLEAN: Final = ValueType(frozenset({"boolean"}))
NULL: Final = ValueType(frozenset(), nullable=True)
UNKNOWN: Final = ValueType(frozenset(_KIND_NAMES), nullable=True)


@dataclass(frozen=True, slots=True)
class TypeProblem:
    """A part of an expression the evaluator refuses on every evaluation (`when` None), or on every
    evaluation that meets `when`."""

    message: str
    position: int
    when: str | None = None


def value_type(annotation: object) -> ValueType:
    """How a value of this Python type (a pydantic field's annotation, as dumped to JSON) looks to an
    expression; `UNKNOWN` for anything else, which is never reported."""
    if annotation is bool:
        return BOOLEAN
    if annotation in (int, float):
        return NUMBER
    if annotation is str:
        return TEXT
    if annotation is None or annotation is type(None):
        return NULL
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return _union(_scalar_type(value) for value in typing.get_args(annotation))
    if origin is typing.Union or origin is types.UnionType:
        return _union(value_type(part) for part in typing.get_args(annotation))
    return UNKNOWN


def _union(parts: Iterable[ValueType]) -> ValueType:
    listed = list(parts)
    return ValueType(
        frozenset().union(*(part.kinds for part in listed)), any(part.nullable for part in listed)
    )


def _scalar_type(value: object) -> ValueType:
    if value is None:
        return NULL
    if isinstance(value, bool):
        return BOOLEAN
    if _is_number(value):
        return NUMBER
    return TEXT if isinstance(value, str) else UNKNOWN


def type_problems(node: Node, name_types: Mapping[str, ValueType]) -> list[TypeProblem]:
    """What `holds(node, values)` refuses whatever `values` holds, given the type of each name in
    `name_types` (a name not in it is `UNKNOWN`)."""
    checker = _TypeChecker(name_types)
    result = checker.type_of(node)
    if result.kinds and "boolean" not in result.kinds:
        checker.refuse(
            f"the expression gives {_describe_type(result)}, not true or false (position {node.position})",
            node.position,
            result,
        )
    return checker.problems


def _describe_type(value: ValueType) -> str:
    if not value.kinds:
        return "null"
    kinds = " or ".join(_KIND_NAMES[kind] for kind in sorted(value.kinds))
    return f"{kinds} or null" if value.nullable else kinds


def _describe_operand(node: Node, value: ValueType) -> str:
    if isinstance(node, Literal):
        return _describe(node.value)
    if isinstance(node, Name):
        return f"{node.name} ({_describe_type(value)})"
    return _describe_type(value)


def _comparable(left: str, right: str) -> bool:
    """Whether `_compare` accepts one value of kind `left` and one of kind `right`."""
    both_numeric = left in _COMPARABLE_WITH_NUMBERS and right in _COMPARABLE_WITH_NUMBERS
    return both_numeric or left == right == "text"


def _constant(node: Node) -> object:
    """The value of a subexpression that names nothing, or None when it has none (or fails)."""
    if names(node):
        return None
    try:
        return _Evaluator({}).value(node)
    except ExpressionError:
        return None


class _TypeChecker:
    def __init__(self, name_types: Mapping[str, ValueType]) -> None:
        self._types = name_types
        self.problems: list[TypeProblem] = []

    def refuse(self, message: str, position: int, *operands: ValueType, when: str | None = None) -> ValueType:
        """Record a refusal met whenever `operands` are not null (and `when`, if given)."""
        if when is None and any(operand.nullable for operand in operands):
            when = _WHEN_SET
        self.problems.append(TypeProblem(message, position, when))
        # What follows a refusal is never evaluated; UNKNOWN keeps one mistake from being reported twice.
        return UNKNOWN

    def type_of(self, node: Node) -> ValueType:
        match node:
            case Literal(value):
                return _scalar_type(value)
            case Name(name):
                return self._types.get(name, UNKNOWN)
            case Negate(operand, position):
                return self._negate(operand, position)
            case Not(operand, position):
                return self._condition("NOT", [operand], position)
            case Arithmetic(first, rest):
                result = self.type_of(first)
                left: Node = first
                for step in rest:
                    result = self._arithmetic(step, left, result, self.type_of(step.operand))
                    left = node  # past the first step the left operand is the chain so far
                return result
            case Comparison(op, left, right, position):
                return self._comparison(op, left, right, position)
            case Like(operand, pattern, _, position):
                return self._like(operand, pattern, position)
            case In(operand, items, _, position):
                return self._member(operand, items, position)
            case IsNull(operand):
                self.type_of(operand)
                return BOOLEAN
            case Logical(op, operands, position):
                return self._condition(op, list(operands), position)
        raise AssertionError(f"unhandled node {node!r}")

    def _negate(self, operand: Node, position: int) -> ValueType:
        found = self.type_of(operand)
        if found.kinds and "number" not in found.kinds:
            return self.refuse(
                f"'-' at position {position} needs numbers, got {_describe_operand(operand, found)}",
                position,
                found,
            )
        return ValueType(found.kinds & {"number"}, found.nullable)

    def _condition(self, op: str, operands: list[Node], position: int) -> ValueType:
        """NOT, AND, OR: every operand is evaluated (`_Evaluator` does not short-circuit) and must be a
        condition; the first that is not is refused."""
        found = [self.type_of(operand) for operand in operands]
        for operand, operand_type in zip(operands, found, strict=True):
            if operand_type.kinds and "boolean" not in operand_type.kinds:
                return self.refuse(
                    f"{op} at position {position} needs conditions (true or false), got "
                    f"{_describe_operand(operand, operand_type)}",
                    position,
                    operand_type,
                )
        # NULL in, NULL out (three-valued logic); always null only when every operand is.
        kinds = frozenset({"boolean"}) if any(value.kinds for value in found) else frozenset()
        return ValueType(kinds, any(value.nullable for value in found))

    def _arithmetic(self, step: Operation, left_node: Node, left: ValueType, right: ValueType) -> ValueType:
        if not (left.kinds and right.kinds):
            return NULL
        position = step.position
        if "number" not in left.kinds or "number" not in right.kinds:
            return self.refuse(
                f"'{step.op}' at position {position} needs numbers, got {_describe_operand(left_node, left)} "
                f"and {_describe_operand(step.operand, right)}",
                position,
                left,
                right,
            )
        divisor = _constant(step.operand) if step.op in ("/", "%") else None
        if _is_number(divisor) and divisor == 0:
            return self.refuse(f"division by zero at position {position}", position, left)
        return ValueType(frozenset({"number"}), left.nullable or right.nullable)

    def _like(self, operand: Node, pattern: Node, position: int) -> ValueType:
        left, right = self.type_of(operand), self.type_of(pattern)
        if not (left.kinds and right.kinds):
            return NULL
        if "text" not in left.kinds or "text" not in right.kinds:
            return self.refuse(
                f"LIKE at position {position} needs text on both sides, got "
                f"{_describe_operand(operand, left)} and {_describe_operand(pattern, right)}",
                position,
                left,
                right,
            )
        return ValueType(frozenset({"boolean"}), left.nullable or right.nullable)

    def _comparison(self, op: str, left_node: Node, right_node: Node, position: int) -> ValueType:
        left, right = self.type_of(left_node), self.type_of(right_node)
        if not (left.kinds and right.kinds):
            return NULL
        if not any(_comparable(a, b) for a in left.kinds for b in right.kinds):
            return self.refuse(
                f"cannot compare {_describe_operand(left_node, left)} with "
                f"{_describe_operand(right_node, right)} using '{op}' at position {position}",
                position,
                left,
                right,
            )
        return ValueType(frozenset({"boolean"}), left.nullable or right.nullable)

    def _member(self, operand: Node, items: tuple[Literal, ...], position: int) -> ValueType:
        value = self.type_of(operand)
        if not value.kinds or all(item.value is None for item in items):
            return NULL  # `_member` gives null when it finds no match and the list holds a null
        # `_member` compares with each item in turn and stops at the first match, so an item the operand
        # cannot be compared with fails every call that reaches it: every call if no item before it can match.
        failures = [_in_failure(kind, items) for kind in sorted(value.kinds)]
        if any(failure is None for failure in failures):
            nullable = value.nullable or any(item.value is None for item in items)
            return ValueType(frozenset({"boolean"}), nullable)
        found = [failure for failure in failures if failure is not None]
        item = found[0][0]
        first = all(first for _, first in found)
        return self.refuse(
            f"cannot compare {_describe_operand(operand, value)} with {_describe(item.value)} using '=' "
            f"at position {position} (IN)",
            position,
            value,
            when=None if first else "unless it matches an earlier value of the IN list",
        )


def _in_failure(kind: str, items: tuple[Literal, ...]) -> tuple[Literal, bool] | None:
    """The first item a value of `kind` cannot be compared with, and whether no item before it could match."""
    first = True
    for item in items:
        if item.value is None:
            continue
        if not _comparable(kind, _first_kind(item)):
            return item, first
        first = False
    return None


def _first_kind(item: Literal) -> str:
    (kind,) = _scalar_type(item.value).kinds
    return kind
