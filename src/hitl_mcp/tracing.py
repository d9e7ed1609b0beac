"""Spans for a request's lifecycle — `hitl.request.filed`, `.decided`, `.executed` — through OpenTelemetry's
API only. Exporting them is the operator's choice: with no tracer provider installed every call here is the
API's no-op, a few microseconds.

The action usually runs long after the call that filed it, often in another call (an approval) or task (the
runner), maybe on another server. Its span still belongs to the trace of the agent's call: the filing's
context (under the caller's `_meta.traceparent`, which the SDK's server span already continues) is kept
in this process by request id, and in W3C form in the request's `filed` audit record for any other server
(read from the store only while a tracer provider is installed). The execution span is started under it,
linked to whatever span was current when it ran (the approver's call).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanKind

from hitl_mcp.models import AuditEvent, Request, Status

TRACER = "hitl_mcp"
REQUEST_ID = "hitl.request.id"
TOOL = "hitl.tool"
STATUS = "hitl.request.status"
OUTCOME = "hitl.execution.outcome"
# Requests filed here whose context is kept for their execution: the oldest give way past this many.
KEPT = 10_000

_carried: OrderedDict[str, dict[str, str]] = OrderedDict()


def now_ns() -> int:
    return time.time_ns()


# The API's proxy: it uses the provider the operator installs, even one installed after this import (asking
# the API for a tracer at each use would cost ~3 µs a span).
_TRACER = trace.get_tracer(TRACER)


def _tracer() -> trace.Tracer:
    return _TRACER


def filed(request: Request, started_ns: int) -> None:
    """The filing that began at `started_ns` ended with `request`: its span, and its context kept for the
    request's execution."""
    span = _tracer().start_span(
        "hitl.request.filed",
        start_time=started_ns,
        attributes={REQUEST_ID: request.request_id, TOOL: request.tool, STATUS: request.status.value},
    )
    span.end()
    if not span.get_span_context().is_valid:
        return  # neither a tracer provider nor a caller's trace: nothing to carry
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    _carried[request.request_id] = carrier
    while len(_carried) > KEPT:
        _carried.popitem(last=False)


def decided(request: Request, started_ns: int) -> None:
    """A decision recorded: the request as it then stands (still pending while levels remain)."""
    _tracer().start_span(
        "hitl.request.decided",
        start_time=started_ns,
        attributes={REQUEST_ID: request.request_id, TOOL: request.tool, STATUS: request.status.value},
    ).end()


def outcome_of(status: Status | None) -> str:
    """`executed`, `failed`, or `unknown` (the action was handed over and then lost)."""
    return "unknown" if status is None else status.value


def traceparent() -> str | None:
    """The W3C `traceparent` of the span current now (the MCP call filing a request, which continues the
    caller's `_meta.traceparent`), for the request's `filed` audit record; None outside any trace."""
    if not trace.get_current_span().get_span_context().is_valid:
        return None
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent")


def active() -> bool:
    """Whether a tracer provider is installed: only then is a trace context worth a read of the store."""
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def carried(request_id: str) -> dict[str, str] | None:
    """The context of a filing made in this process, taken (an action runs once)."""
    return _carried.pop(request_id, None)


def from_trail(trail: Sequence[AuditEvent]) -> dict[str, str] | None:
    """The filing call's trace context as its `filed` audit record keeps it, when it does."""
    for event in trail:
        if event.event == "filed":
            kept = event.details.get("traceparent")
            return {"traceparent": kept} if isinstance(kept, str) else None
    return None


@contextmanager
def executing(request: Request, carrier: Mapping[str, str] | None) -> Iterator[Span]:
    """The span the action runs in: in the filing call's trace when `carrier` holds its context (as
    `carried` or `from_trail` found it), linked to the span current now (the call or task that runs it)."""
    parent = None
    links: list[Link] = []
    if carrier is not None:
        from opentelemetry import propagate

        parent = propagate.extract(carrier)
        current = trace.get_current_span().get_span_context()
        if current.is_valid:
            links.append(Link(current))
    with _tracer().start_as_current_span(
        "hitl.request.executed",
        context=parent,
        kind=SpanKind.INTERNAL,
        links=links,
        attributes={REQUEST_ID: request.request_id, TOOL: request.tool},
    ) as span:
        yield span
