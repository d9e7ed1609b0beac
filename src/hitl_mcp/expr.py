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
from collections.abc import Callable, Collection, Iterator, Mapping
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
