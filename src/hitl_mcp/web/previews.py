"""How a request's preview is shown: an order as its cost and the cash and position after it, an email as it
will be sent, a delete as its matching-row count and sample rows, an upstream tool as its arguments and the
answer of its preview call. The view is chosen by the preview's shape as well as its tool, so a preview of
any other shape (a plug-in's, an older record's) is shown as JSON rather than half-shown."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class PreviewView:
    template: str
    values: dict[str, Any] = field(default_factory=dict)


def _numbers(preview: Mapping[str, Any], *names: str) -> bool:
    return all(
        isinstance(preview.get(name), int | float) and not isinstance(preview.get(name), bool)
        for name in names
    )


def preview_view(tool: str, preview: Mapping[str, Any]) -> PreviewView:
    if tool == "buy_stock" and _numbers(
        preview, "total", "cash_before", "cash_after", "position_before", "position_after"
    ):
        return PreviewView("previews/buy_stock.html", {"order": preview})
    if tool == "send_email" and isinstance(preview.get("rendered"), str):
        return PreviewView("previews/send_email.html", {"email": preview})
    sample = preview.get("sample")
    columns = preview.get("columns")
    if (
        tool == "delete_database_records"
        and _numbers(preview, "matching_rows")
        and isinstance(sample, list)
        and all(isinstance(row, Mapping) for row in sample)
        and isinstance(columns, list)
        and all(isinstance(column, str) for column in columns)
    ):
        rows = [[row.get(column) for column in columns] for row in sample]
        return PreviewView(
            "previews/delete_records.html", {"delete": preview, "columns": columns, "rows": rows}
        )
    if isinstance(preview.get("upstream"), str) and isinstance(preview.get("arguments"), Mapping):
        call = preview.get("preview_call")
        return PreviewView(
            "previews/upstream.html",
            {"upstream": preview, "call": call if isinstance(call, Mapping) else None},
        )
    return PreviewView("previews/json.html", {"value": preview})
