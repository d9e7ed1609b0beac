"""One readable line for an upstream call, e.g. `fs__write_file(path="/srv/a.txt", content="Dear …" 1.2 kB)`:
every argument named, long values cut with their size, so a person sees at a glance what would run."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

TEXT_SHOWN = 40
SUMMARY_LIMIT = 240


def call_summary(name: str, arguments: Mapping[str, Any]) -> str:
    parts = [f"{key}={_value(value)}" for key, value in arguments.items()]
    summary = f"{name}({', '.join(parts)})"
    if len(summary) <= SUMMARY_LIMIT:
        return summary
    return summary[: SUMMARY_LIMIT - 2] + "…)"


def _value(value: Any) -> str:
    if isinstance(value, str):
        if len(value) <= TEXT_SHOWN:
            return json.dumps(value, ensure_ascii=False)
        shown = json.dumps(value[:TEXT_SHOWN], ensure_ascii=False)[:-1]
        return f'{shown}…" {size(len(value.encode()))}'
    if isinstance(value, list):
        return f"[{len(value)} item{'s' if len(value) != 1 else ''}]" if value else "[]"
    if isinstance(value, dict):
        return f"{{{len(value)} key{'s' if len(value) != 1 else ''}}}" if value else "{}"
    return json.dumps(value)


def size(count: int) -> str:
    if count < 1000:
        return f"{count} B"
    if count < 1_000_000:
        return f"{count / 1000:.1f} kB"
    return f"{count / 1_000_000:.1f} MB"
