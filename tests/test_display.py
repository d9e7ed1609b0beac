"""`hitl_mcp.display`: what a person reads shows every character that could change how the rest reads."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hitl_mcp import display

HIDDEN = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Cn"})


def independent_width(text: str) -> int:
    """Display columns counted here, not by the module under test."""
    # Terminals give no column to marks (Mn, Me, whatever their combining class) nor to the Hangul
    # vowels and finals that join the syllable before them.
    return sum(
        0
        if unicodedata.category(c) in ("Mn", "Me") or 0x1160 <= ord(c) < 0x1200
        else 2
        if unicodedata.east_asian_width(c) in "WF"
        else 1
        for c in text
    )


@pytest.mark.parametrize(
    ("char", "shown"),
    [
        ("\x00", "\\x00"),
        ("\x1b", "\\x1b"),
        ("\x7f", "\\x7f"),
        ("\x85", "\\x85"),  # NEL, a C1 line break
        ("\xad", "\\xad"),  # soft hyphen
        ("\t", "\\t"),
        ("\n", "\\n"),
        ("\r", "\\r"),
        ("\u061c", "\\u061c"),  # Arabic letter mark
        ("\u200b", "\\u200b"),
        ("\u200d", "\\u200d"),
        ("\u200e", "\\u200e"),
        ("\u200f", "\\u200f"),
        *((chr(point), f"\\u{point:04x}") for point in range(0x202A, 0x202F)),  # embeddings, overrides
        *((chr(point), f"\\u{point:04x}") for point in range(0x2066, 0x206A)),  # isolates
        ("\u2060", "\\u2060"),
        ("\ufeff", "\\ufeff"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
        ("\ud800", "\\ud800"),  # a lone surrogate, which could not even be written out
        ("\u0378", "\\u0378"),  # unassigned
        ("\U000e0041", "\\U000e0041"),  # a tag character
    ],
)
def test_each_character_that_could_change_the_display_is_escaped(char: str, shown: str) -> None:
    assert display.visible(f"a{char}b") == f"a{shown}b"


def test_readable_text_stays_as_it_is() -> None:
    text = "Grüße, naïve cafe\u0301, 会議の議事録, 🙂, Ｇ, Ελληνικά, עברית, $1,500 — done"
    assert display.visible(text) == text
    assert display.visible_lines(text + "\n" + text) == text + "\n" + text


def test_a_backslash_is_shown_as_it_is_so_escaping_twice_changes_nothing() -> None:
    # Showing, not round-tripping: the exact text is what --json prints.
    assert display.visible("C:\\temp\\new") == "C:\\temp\\new"
    once = display.visible("x\u202ey")
    assert once == "x\\u202ey" and display.visible(once) == once


@given(st.text())
def test_nothing_hidden_survives_and_escaping_is_idempotent(text: str) -> None:
    for shown in (display.visible(text), display.visible_lines(text)):
        assert not [c for c in shown if unicodedata.category(c) in HIDDEN and c != "\n"]
    assert "\n" not in display.visible(text)
    assert display.visible(display.visible(text)) == display.visible(text)
    assert display.visible_lines(display.visible_lines(text)) == display.visible_lines(text)


def test_the_multi_line_form_keeps_line_feeds_and_nothing_else_that_moves_the_cursor() -> None:
    shown = display.visible_lines("one\r\ntwo\tthree\rfour\u2028five\x0bsix\n")
    assert shown == "one\ntwo     three\\rfour\\u2028five\\x0bsix\n"
    assert display.visible_lines("\tx") == " " * 8 + "x"  # tabs go to the next stop of 8


def test_width_counts_wide_characters_twice_and_combining_marks_not_at_all() -> None:
    assert display.width("abc") == 3
    assert display.width("会議") == 4
    assert display.width("Ｇ") == 2
    assert display.width("🙂") == 2
    assert display.width("cafe\u0301") == 4
    assert display.width(display.visible("\u202e")) == 6


def test_cut_never_splits_an_escape_or_a_wide_character() -> None:
    text = "x" * 10 + "\u202e" + "yz"
    assert display.cut(text, 18) == "x" * 10 + "\\u202eyz"  # fits: nothing cut
    assert display.cut(text, 17) == "x" * 10 + "\\u202e…"
    assert display.cut(text, 16) == "x" * 10 + "…"  # the escape goes whole, not as "\u20…"
    assert display.cut("会議会議", 6) == "会議…"
    assert display.cut("会議会議", 4) == "会…"  # the second wide character would take column 4 and 5
    assert display.cut("abc", 0) == ""
    # Cutting text that was already made visible still keeps its escapes whole.
    assert display.cut(display.visible(text), 16) == "x" * 10 + "…"


@given(st.text(), st.integers(min_value=0, max_value=60))
def test_cut_fits_and_keeps_a_whole_prefix_of_the_escaped_text(text: str, columns: int) -> None:
    shown = display.cut(text, columns)
    full = display.visible(text)
    assert independent_width(shown) <= columns
    if shown == full:
        return
    assert shown.endswith("…") or shown == ""
    kept = shown.removesuffix("…")
    assert full.startswith(kept)
    assert any("".join(display.pieces(text)[:n]) == kept for n in range(len(full) + 1))


def test_clip_counts_characters_for_limits_that_do() -> None:
    assert display.clip("会議会議", 3) == "会議…"
    assert display.clip("ab\u202ecd", 8) == "ab…"
    assert display.clip("one\ntwo\u2028", 20, lines=True) == "one\ntwo\\u2028"


@given(st.text(), st.integers(min_value=10, max_value=50))
def test_fold_breaks_lines_to_fit_and_loses_nothing(text: str, columns: int) -> None:
    lines = display.fold(text, columns)
    assert all(independent_width(line) <= columns for line in lines)
    assert "".join(lines) == display.visible_lines(text).replace("\n", "")


def test_fold_breaks_at_spaces_and_keeps_escapes_whole() -> None:
    assert display.fold("refused: agent may not decide its own request", 20) == [
        "refused: agent may ",
        "not decide its own ",
        "request",
    ]
    assert display.fold("abcdef\u202eghi", 8) == ["abcdef", "\\u202egh", "i"]


def test_a_table_lines_up_by_display_width_and_escapes_every_cell() -> None:
    rendered = display.table(
        ("ID", "SUMMARY", "BY"),
        [("1", "会議の議事録", "agent"), ("2", "x\u202ey\nz", "bob"), ("3", "cafe\u0301", "carol")],
    )
    header, *rows = rendered.split("\n")
    starts = [header.index("SUMMARY"), header.index("BY")]
    for row in rows:
        # The cell after the summary starts in the same display column on every row.
        before_by = next(i for i in range(len(row)) if independent_width(row[:i]) == starts[1])
        assert row[before_by - 2 : before_by] == "  " and row[before_by] != " "
    assert "x\\u202ey\\nz" in rendered and "\u202e" not in rendered and rendered.count("\n") == 3


def test_a_table_given_a_width_narrows_its_widest_columns_and_the_kept_ones_last() -> None:
    header = ("ID", "SUMMARY", "WAITS ON")
    rows = [("0123456789", "Email gail@example.org: \u202e the minutes", "1 × anyone but the requester")]
    rendered = display.table(header, rows, columns=64, keep=(0, 1))
    lines = rendered.split("\n")
    assert all(independent_width(line) <= 64 for line in lines)
    assert lines[1].startswith("0123456789  Email gail@example.org: \\u202e the minutes")
    assert "1 × any" in lines[1] and lines[1].endswith("…")
    # Too narrow for every floor: the lines themselves are cut, never wider than asked.
    assert all(independent_width(line) <= 20 for line in display.table(header, rows, columns=20).split("\n"))
