"""JSON that comes from outside (request bodies, form fields, command-line values), parsed with a limit on
how deeply arrays and objects nest.

Python's parser recurses once per level: 100,000 nested `[` end in a `RecursionError`, which is not a
`ValueError` and so escapes every handler meant for bad JSON as a crash. What hitl keeps (arguments, bodies)
is also dumped, hashed and validated recursively later. So the depth is measured first, on the raw text, in
one linear pass run by C code (a regex removes the strings, `accumulate` walks the brackets), and text nested
past `MAX_DEPTH` is refused with a `TooDeep`, a `ValueError` naming the rule.
"""

from __future__ import annotations

import json
import operator
import re
from itertools import accumulate
from typing import Any

MAX_DEPTH = 64
"""How many arrays and objects may nest inside each other in one JSON text, the outermost counting as 1."""

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
# Openers become 2 and closers 0, everything else is dropped: after k brackets the sum is 2*(openers
# seen) and the depth is that sum minus k.
_BRACKETS = bytes.maketrans(b"[{]}", b"\x02\x02\x00\x00")
_NOT_BRACKETS = bytes(set(range(256)) - set(b"[]{}"))


class TooDeep(ValueError):
    """JSON nested past `MAX_DEPTH`."""

    def __init__(self, depth: int) -> None:
        super().__init__(
            f"nested {depth} levels deep; arrays and objects may nest at most {MAX_DEPTH} levels"
        )
        self.depth = depth


def depth(text: str | bytes) -> int:
    """How deeply arrays and objects nest in `text` (0 for a scalar), counting brackets outside strings.

    Text that is not JSON gets a number too; the parser refuses it afterwards."""
    raw = _bytes(text)
    brackets = _STRING.sub(b"", raw).translate(_BRACKETS, _NOT_BRACKETS)
    if not brackets:
        return 0
    levels = map(operator.sub, accumulate(brackets), range(1, len(brackets) + 1))
    return max(0, int(max(levels)))


def check_depth(text: str | bytes) -> None:
    """Refuse `text` with `TooDeep` when it nests past `MAX_DEPTH`."""
    raw = _bytes(text)
    # Most texts hold fewer openers than the limit, so cannot nest past it: no pass needed.
    if raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH:
        return
    found = depth(raw)
    if found > MAX_DEPTH:
        raise TooDeep(found)


def _bytes(text: str | bytes) -> bytes:
    return text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text


def loads(text: str | bytes) -> Any:
    """`json.loads`, refusing text nested past `MAX_DEPTH` (`TooDeep`) before parsing it. Every refusal
    is a `ValueError` (`json.JSONDecodeError`, `TooDeep`, or a `UnicodeDecodeError` for bytes)."""
    check_depth(text)
    return json.loads(text)


def protocol_line(line: bytes) -> Any:
    """One JSON-RPC line as strict JSON: NaN and Infinity (which Python's parser takes and a peer's may
    not) refused, and nesting too deep for Python's parser refused as a `ValueError` like any other bad
    text, not a `RecursionError`. For the lines hitl reads before the SDK does, which leave whatever this
    refuses to the SDK's own parser."""
    try:
        return json.loads(line, parse_constant=_not_json)
    except RecursionError:
        raise ValueError("nested too deeply for this parser") from None


def _not_json(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON")
