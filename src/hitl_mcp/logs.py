"""`hitl serve`'s log: one record a line on stderr, as text for a person or as JSON for a collector.

stderr, because over stdio hitl's stdout is its client's transport. A record says which request, tool,
principal or upstream it is about in fields of its own (`extra=`, or `about` around an action's run), so a
collector can follow one request through the log. Whatever an agent or an upstream wrote stays inside one
record: a JSON line escapes it as a string, and a text line shows its control characters escaped, so no
line of theirs can pass for one of hitl's.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal, TextIO

from pydantic import BaseModel, ConfigDict, Field

from hitl_mcp import display

if TYPE_CHECKING:
    from hitl_mcp.models import Request

LogFormat = Literal["text", "json"]
LogLevel = Literal["debug", "info", "warning", "error"]

FIELDS = ("request_id", "tool", "principal", "status", "upstream", "client", "method", "path", "http_status")
"""The fields a JSON line carries besides level, time, event and logger, when its record has them."""
ACCESS_LOGGER = "uvicorn.access"
UPSTREAM_LOGGER = "hitl_mcp.upstream"

_about: ContextVar[Mapping[str, str] | None] = ContextVar("hitl_log_about", default=None)
_configured = False


class LoggingSettings(BaseModel):
    """The `[logging]` table: how `hitl serve` writes its log on stderr."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: LogFormat = Field(
        default="text",
        description="text: a line for a person; json: one JSON object a line (level, time, event, logger, "
        "and request_id, tool, principal, upstream where they apply); `hitl serve --log-format` wins",
    )
    level: LogLevel = Field(
        default="info", description="The least severe record written; `hitl serve --log-level` wins"
    )
    access_log: bool = Field(
        default=False,
        description="A line for every HTTP request `hitl serve --http` answers (off: they drown the rest)",
    )


def setup(settings: LoggingSettings, stream: TextIO | None = None) -> None:
    """Send every record of this process (hitl's, the SDK's, uvicorn's, Python's warnings) to `stream`
    (stderr) in `settings.format`, from `settings.level` up."""
    global _configured
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.format == "json" else TextFormatter())
    handler.addFilter(_stamp)
    root = logging.getLogger()
    # The SDK's server installs a rich, multi-line handler unless the root already has one.
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.level.upper())
    logging.captureWarnings(True)
    _configured = True


@contextmanager
def about(request: Request) -> Iterator[None]:
    """Records made inside carry `request`'s id and tool (an action's, an upstream's while it runs it)."""
    token = _about.set({"request_id": request.request_id, "tool": request.tool})
    try:
        yield
    finally:
        _about.reset(token)


def request_event(logger: logging.Logger, request: Request, what: str, principal: str | None) -> None:
    """One line of a request's lifecycle (filed, decided, ran): its id, tool, status and the principal who
    acted as fields, and in words for the text format."""
    if not logger.isEnabledFor(logging.INFO):
        return  # every filing passes here: below the level it costs one check
    status = request.status.value
    fields = {"request_id": request.request_id, "tool": request.tool, "status": status}
    if principal is None:
        logger.info("request %s %s: %s, now %s", request.request_id, what, request.tool, status, extra=fields)
        return
    logger.info(
        "request %s %s: %s by %s, now %s",
        request.request_id,
        what,
        request.tool,
        principal,
        status,
        extra=fields | {"principal": principal},
    )


def last_decider(request: Request) -> str | None:
    return request.decisions[-1].principal if request.decisions else None


def upstream_line(line: str) -> None:
    """A line about an upstream, `NAME: text` (its stderr, its restarts): a record with `upstream` NAME once
    `setup` ran; before (a CLI command running an upstream tool), the line on stderr as it is."""
    if not _configured:
        print(line, file=sys.stderr, flush=True)
        return
    # An upstream's name is letters, digits, _ and -: the first ": " ends it.
    name, _, text = line.partition(": ")
    logging.getLogger(UPSTREAM_LOGGER).info("%s", text, extra={"upstream": name})


def _stamp(record: logging.LogRecord) -> bool:
    """Adds the fields `about` set, and an access line's parts, to `record`."""
    for key, value in (_about.get() or {}).items():
        if not hasattr(record, key):
            setattr(record, key, value)
    if record.name == ACCESS_LOGGER and isinstance(record.args, tuple) and len(record.args) == 5:
        # uvicorn's access record: client, method, path with query, HTTP version, status.
        client, method, path, _, status = record.args
        record.client, record.method, record.path, record.http_status = client, method, path, status
    return True


class TextFormatter(logging.Formatter):
    """`hitl-mcp: [warning: ][UPSTREAM: ]message`, the message on one line with control characters shown."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = "hitl-mcp: "
        if record.levelno >= logging.WARNING:
            prefix += f"{record.levelname.lower()}: "
        upstream = getattr(record, "upstream", None)
        if upstream:
            prefix += f"{display.visible(str(upstream))}: "
        line = prefix + display.visible(record.getMessage())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object a line, ASCII only, so no character inside a value can break the line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        for key in FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value if isinstance(value, int | float | bool) else str(value)
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=True)
