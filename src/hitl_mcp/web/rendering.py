"""The inbox's templates and the filters they show values through.

Autoescape is on for every template, and every value an agent or a person wrote goes through a filter built
on `hitl_mcp.display` as well: HTML escaping stops markup, and `visible` shows the controls, bidi overrides
and zero-width characters that would otherwise change how the rest of the page reads.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import jinja2

from hitl_mcp import display
from hitl_mcp.web import charts


def _visible(value: Any) -> str:
    return display.visible("" if value is None else str(value))


def _visible_lines(value: Any) -> str:
    return display.visible_lines("" if value is None else str(value))


def shown_json(value: Any) -> str:
    """JSON for a person: non-ASCII text as itself, yet every character that could change how the rest is
    shown escaped (`hitl_mcp.cli.common.shown_json`, the CLI's rendering)."""
    return display.visible_lines(json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False))


def _scalar(value: Any) -> str:
    """One cell of a table: text as itself, anything else as JSON; escaped for reading either way."""
    if isinstance(value, str):
        return display.visible(value)
    return display.visible(json.dumps(value, ensure_ascii=False))


def _moment(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S UTC")


def duration(seconds: float) -> str:
    """A span in its two largest units: `45s`, `12m 5s`, `23h 59m`, `3d 4h`."""
    left = max(0, int(seconds))
    units = (("d", 86_400), ("h", 3600), ("m", 60), ("s", 1))
    for index, (unit, size) in enumerate(units[:-1]):
        if left >= size:
            smaller, smaller_size = units[index + 1]
            rest = left % size // smaller_size
            return f"{left // size}{unit} {rest}{smaller}" if rest else f"{left // size}{unit}"
    return f"{left}s"


def _dollars(value: float) -> str:
    sign = "-" if value < 0 else ""
    return f"{sign}${abs(value):,.2f}"


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("hitl_mcp.web", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        visible=_visible,
        visible_lines=_visible_lines,
        json=shown_json,
        scalar=_scalar,
        moment=_moment,
        duration=duration,
        dollars=_dollars,
        series=charts.series_class,
    )
    return env
