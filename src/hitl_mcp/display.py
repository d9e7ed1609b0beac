"""Text made safe for a person to read in a terminal or a plain-text message.

Agents write summaries, previews, email bodies and delete conditions, so they can try to make the approver
read something other than what was sent: a U+202E (right-to-left override) reverses the rest of a row, a
NUL or an ESC sequence hides or repaints text, a U+2028 starts what looks like a new line. Every face a
person reads passes agent- and human-written text through `visible` (or a function built on it), which
replaces each such character by an escape the person can see, such as ``\\u202e``.

The backslash itself is left as it is. These escapes are for showing, not for round-tripping: the exact
data is always one `--json` away. Leaving it makes `visible` idempotent (escaping twice changes nothing,
so layers may each escape without doubling), and keeps Windows paths, regular expressions and JSON text
readable. The cost is that an agent can write the six characters ``\\u202e`` and look exactly like a real
U+202E shown escaped; both are equally odd in a summary, and neither can reorder what follows.

Widths are display columns as a terminal counts them, from `unicodedata` alone: East Asian wide and
fullwidth characters take 2, combining marks 0, everything else 1. Shortening (`cut`, `clip`, `table`) and
wrapping (`fold`) escape first and then move whole units only, a character or an escape, so a value is
never cut inside an escape and never runs into the next column.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Collection, Sequence

# Cc: C0, DEL and C1 (NEL among them). Cf: bidi embeddings, overrides and isolates, LRM/RLM/ALM, zero-width
# space/joiners, word joiner, BOM, soft hyphen, tags. Zl/Zp: U+2028/U+2029, which some readers break lines
# on. Cs: lone surrogates, which cannot even be encoded for output. Cn: unassigned code points, whose width
# and behaviour our Unicode tables cannot know (a later Unicode may make one a format character).
HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Cn"})
ZERO_WIDTH_CATEGORIES = frozenset({"Mn", "Me"})
WIDE = frozenset({"W", "F"})
# Hangul medial vowels and final consonants join the preceding syllable: terminals give them no column.
HANGUL_JOINING = range(0x1160, 0x1200)
SHORT_ESCAPES = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}
ESCAPE_OR_CHARACTER = re.compile(r"\\(?:x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8}|[tnr])|.", re.DOTALL)
ELLIPSIS = "…"
TAB_STOP = 8
COLUMN_GAP = "  "
# A table narrowed to fit cuts no column below its header or this many columns, whichever is wider: a
# cell cut shorter says too little to be worth its place.
NARROWEST_COLUMN = 8


def escape(char: str) -> str:
    """One character as a visible escape: ``\\n`` and the like, ``\\x1b`` below U+0100, ``\\u202e`` in
    the BMP, ``\\U000e0041`` above."""
    if char in SHORT_ESCAPES:
        return SHORT_ESCAPES[char]
    point = ord(char)
    if point < 0x100:
        return f"\\x{point:02x}"
    if point < 0x10000:
        return f"\\u{point:04x}"
    return f"\\U{point:08x}"


def is_hidden(char: str) -> bool:
    """Whether showing `char` raw could change, hide or reorder how the text around it is shown."""
    return unicodedata.category(char) in HIDDEN_CATEGORIES


def _escaped(text: str, *, lines: bool) -> str:
    shown: list[str] = []
    column = 0
    for index, char in enumerate(text):
        if lines and char == "\n":
            shown.append(char)
            column = 0
            continue
        if lines and char == "\r" and text[index + 1 : index + 2] == "\n":
            continue
        if lines and char == "\t":
            spaces = TAB_STOP - column % TAB_STOP
            shown.append(" " * spaces)
            column += spaces
            continue
        piece = escape(char) if is_hidden(char) else char
        shown.append(piece)
        column += width(piece)
    return "".join(shown)


def visible(text: str) -> str:
    """`text` on one line, with every character that could change how the rest is shown escaped."""
    if text.isprintable():  # nothing hidden: the common case, without a look-up per character
        return text
    return _escaped(text, lines=False)


def visible_lines(text: str) -> str:
    """Like `visible`, but line feeds stay line breaks (CRLF counts as one) and a tab becomes spaces up to
    the next tab stop, for places that show a multi-line text."""
    if all(line.isprintable() for line in text.split("\n")):
        return text
    return _escaped(text, lines=True)


def pieces(text: str, *, lines: bool = False) -> list[str]:
    """`text` made visible, as the units shortening and wrapping keep whole: one character, or one escape
    such as ``\\u202e``. An escape already in the text counts as one too, so shortening text that was
    made visible before (or that an agent wrote to look escaped) never leaves half an escape."""
    return ESCAPE_OR_CHARACTER.findall(visible_lines(text) if lines else visible(text))


def char_width(char: str) -> int:
    if char.isascii():
        return 1 if char.isprintable() else 0
    if unicodedata.category(char) in ZERO_WIDTH_CATEGORIES or ord(char) in HANGUL_JOINING:
        return 0
    if is_hidden(char):  # not shown as such once escaped; counted as nothing if it reaches us raw
        return 0
    return 2 if unicodedata.east_asian_width(char) in WIDE else 1


def width(text: str) -> int:
    """How many terminal columns `text` takes on one line (meant for text already made visible)."""
    if text.isascii() and text.isprintable():
        return len(text)
    return sum(char_width(char) for char in text)


def fit(parts: Sequence[str], limit: int, size: Callable[[str], int] = len) -> str:
    """`parts` joined, or as many whole parts as fit in `limit` (measured by `size`) followed by "…": a
    part that does not fit is dropped with everything after it, never split."""
    if sum(size(part) for part in parts) <= limit:
        return "".join(parts)
    if limit < 1:
        return ""
    room = limit - size(ELLIPSIS)
    kept: list[str] = []
    for part in parts:
        needed = size(part)
        if needed > room:
            break
        room -= needed
        kept.append(part)
    return "".join(kept) + ELLIPSIS


def cut(text: str, columns: int) -> str:
    """`text` made visible and shortened to at most `columns` display columns, ending in "…" when it was
    shortened; an escape or a character is never cut in half."""
    return fit(pieces(text), columns, width)


def clip(text: str, length: int, *, lines: bool = False) -> str:
    """`text` made visible (keeping line breaks with `lines`) in at most `length` characters, ending in "…"
    when it was shortened: for limits counted in characters, such as a header's or an API's."""
    return fit(pieces(text, lines=lines), length, len)


def fold(text: str, columns: int) -> list[str]:
    """`text` made visible and broken into lines of at most `columns` display columns: at its own line
    breaks, and where a line is too long after its last space that fits (inside a word only when there
    is none). The spaces stay, so the lines joined are the visible text. An escape wider than `columns`
    gets a line of its own."""
    folded: list[str] = []
    current: list[str] = []
    for piece in pieces(text, lines=True):
        if piece == "\n":
            folded.append("".join(current))
            current = []
            continue
        if current and width("".join(current)) + width(piece) > columns:
            start = _word_start(current)
            folded.append("".join(current[:start]))
            current = current[start:]
        current.append(piece)
    folded.append("".join(current))
    return folded


def _word_start(line: list[str]) -> int:
    # Where the last word of a line starts, so a fold can move it whole; not in the line's indentation.
    content = next((i for i, piece in enumerate(line) if piece != " "), len(line))
    for i in range(len(line) - 1, content, -1):
        if line[i - 1] == " " and line[i] != " ":
            return i
    return len(line)


def pad(text: str, columns: int) -> str:
    """`text` (already visible) followed by spaces up to `columns` display columns."""
    return text + " " * max(0, columns - width(text))


def _narrowed(natural: list[int], floors: list[int], limit: int, keep: Collection[int]) -> list[int]:
    # The widest column gives way first, one column at a time, so narrowing spreads over the wide ones;
    # columns in `keep` give way only once every other column is down to its floor.
    widths = list(natural)
    spare = sum(widths) + len(COLUMN_GAP) * (len(widths) - 1) - limit
    while spare > 0:
        shrinkable = [i for i in range(len(widths)) if widths[i] > floors[i]]
        candidates = [i for i in shrinkable if i not in keep] or shrinkable
        if not candidates:
            break
        widest = max(candidates, key=lambda i: widths[i])
        widths[widest] -= 1
        spare -= 1
    return widths


def table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    columns: int | None = None,
    keep: Collection[int] = (),
) -> str:
    """Rows under a header, each cell made visible and padded by display width so columns line up.

    With `columns`, no line is wider than that: wide columns are narrowed (their cells cut with "…"),
    those whose index is in `keep` last."""
    grid = [[visible(cell) for cell in row] for row in (header, *rows)]
    natural = [max(width(row[i]) for row in grid) for i in range(len(header))]
    widths = natural
    if columns is not None:
        floors = [min(n, max(width(h), NARROWEST_COLUMN)) for n, h in zip(natural, grid[0], strict=True)]
        widths = _narrowed(natural, floors, columns, keep)
    lines = []
    for row in grid:
        cells = [pad(cut(cell, w), w) for cell, w in zip(row, widths, strict=True)]
        line = COLUMN_GAP.join(cells).rstrip()
        lines.append(line if columns is None else cut(line, columns))
    return "\n".join(lines)
