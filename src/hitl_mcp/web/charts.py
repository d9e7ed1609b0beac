"""The report's charts, drawn on the server as SVG: no script, nothing fetched. Each bar carries its number
as text, so a chart reads without its colours, and the page gives each chart a table twin."""

from __future__ import annotations

import re
from collections.abc import Sequence

from markupsafe import Markup

from hitl_mcp import display

WIDTH = 640
LABEL_WIDTH = 170
VALUE_WIDTH = 70
ROW_HEIGHT = 26
BAR_HEIGHT = 16
LEGEND_HEIGHT = 24
# A rough advance per character of the legend's text, to lay entries out side by side.
CHARACTER_WIDTH = 7.5
LABEL_CHARACTERS = 22


def series_class(name: str) -> str:
    """A CSS class for a series (an outcome, a verdict): its colour lives in the stylesheet."""
    return "series-" + (re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "other")


def _label(text: str) -> str:
    return display.cut(text, LABEL_CHARACTERS)


def stacked_bars(
    chart_id: str, title: str, rows: Sequence[tuple[str, dict[str, int]]], series: Sequence[str]
) -> Markup:
    """One horizontal bar per row, cut into a segment per series, all on one scale."""
    largest = max((sum(counts.values()) for _, counts in rows), default=0) or 1
    span = WIDTH - LABEL_WIDTH - VALUE_WIDTH
    height = len(rows) * ROW_HEIGHT + LEGEND_HEIGHT + 8
    parts = [_open(chart_id, title, height)]
    for index, (label, counts) in enumerate(rows):
        y = index * ROW_HEIGHT + 4
        parts.append(_row_label(y, label))
        x = float(LABEL_WIDTH)
        for name in series:
            count = counts.get(name, 0)
            if not count:
                continue
            width = span * count / largest
            parts.append(
                Markup(
                    '<rect x="{:.1f}" y="{}" width="{:.1f}" height="{}" class="{}">'
                    "<title>{}: {}</title></rect>"
                ).format(x, y, width, BAR_HEIGHT, series_class(name), display.visible(name), count)
            )
            x += width
        parts.append(_value(x, y, str(sum(counts.values()))))
    parts.append(_legend(len(rows) * ROW_HEIGHT + 10, series))
    parts.append(Markup("</svg>"))
    return Markup("").join(parts)


def bars(chart_id: str, title: str, rows: Sequence[tuple[str, float, str]]) -> Markup:
    """One horizontal bar per row: its label, its length, and the text written after it."""
    largest = max((value for _, value, _ in rows), default=0) or 1
    span = WIDTH - LABEL_WIDTH - VALUE_WIDTH
    parts = [_open(chart_id, title, len(rows) * ROW_HEIGHT + 8)]
    for index, (label, value, text) in enumerate(rows):
        y = index * ROW_HEIGHT + 4
        width = span * value / largest
        parts.append(_row_label(y, label))
        parts.append(
            Markup(
                '<rect x="{}" y="{}" width="{:.1f}" height="{}" class="series-time"><title>{}</title></rect>'
            ).format(LABEL_WIDTH, y, width, BAR_HEIGHT, text)
        )
        parts.append(_value(LABEL_WIDTH + width, y, text))
    parts.append(Markup("</svg>"))
    return Markup("").join(parts)


def _open(chart_id: str, title: str, height: int) -> Markup:
    return Markup(
        '<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {} {}" role="img" '
        'aria-labelledby="{}-title"><title id="{}-title">{}</title>'
    ).format(WIDTH, height, chart_id, chart_id, title)


def _row_label(y: int, label: str) -> Markup:
    return Markup('<text x="{}" y="{}" text-anchor="end" class="chart-label">{}</text>').format(
        LABEL_WIDTH - 8, y + BAR_HEIGHT - 3, _label(label)
    )


def _value(x: float, y: int, text: str) -> Markup:
    return Markup('<text x="{:.1f}" y="{}" class="chart-value">{}</text>').format(
        x + 6, y + BAR_HEIGHT - 3, text
    )


def _legend(y: int, series: Sequence[str]) -> Markup:
    parts: list[Markup] = []
    x = float(LABEL_WIDTH)
    for name in series:
        parts.append(
            Markup('<rect x="{:.1f}" y="{}" width="12" height="12" class="{}"></rect>').format(
                x, y, series_class(name)
            )
        )
        parts.append(
            Markup('<text x="{:.1f}" y="{}" class="chart-legend">{}</text>').format(
                x + 16, y + 10, display.visible(name)
            )
        )
        x += 16 + CHARACTER_WIDTH * len(name) + 14
    return Markup("").join(parts)
