"""The request lifecycle's spans, read from OpenTelemetry's in-memory exporter: the action's execution span
belongs to the trace of the agent's call that filed it, carried there by the MCP client's `_meta.traceparent`,
however much later and from whichever call it is approved."""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Iterator

import mcp.shared._otel
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from hitl_mcp import tracing
from hitl_mcp.config import Settings, load_settings
from hitl_mcp.policy import load_policies
from tests.test_server import BUY, ok, session

AGENT_TRACE = 0x0AF7651916CD43DD8448EB211C80319C
APPROVER_TRACE = 0x1BF7651916CD43DD8448EB211C80319D


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """A tracer provider for this test only, as an operator's SDK set-up would install one."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    # The API's global and the tracers taken from it at import (the SDK's, hitl's): all go back afterwards.
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)
    monkeypatch.setattr(mcp.shared._otel, "_tracer", provider.get_tracer("mcp-python-sdk"))
    monkeypatch.setattr(tracing, "_TRACER", provider.get_tracer(tracing.TRACER))
    yield exporter
    provider.shutdown()


def caller(trace_id: int) -> NonRecordingSpan:
    """The span of an agent's own trace, current while its MCP client calls."""
    context = SpanContext(
        trace_id, 0x00F067AA0BA902B7, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED)
    )
    return NonRecordingSpan(context)


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.name == name]


async def test_the_execution_span_joins_the_filers_trace_when_someone_else_approves_later(
    settings: Settings, spans: InMemorySpanExporter
) -> None:
    async with session(settings, "agent") as agent:
        with trace.use_span(caller(AGENT_TRACE)):
            request_id = ok(await agent.call_tool("buy_stock", BUY))["request_id"]
    async with session(settings, "alice") as alice:
        with trace.use_span(caller(APPROVER_TRACE)):
            assert ok(await alice.call_tool("approve", {"request_id": request_id}))["status"] == "executed"

    [filed] = named(spans, "hitl.request.filed")
    assert filed.context is not None and filed.context.trace_id == AGENT_TRACE
    assert filed.attributes is not None
    assert (filed.attributes[tracing.REQUEST_ID], filed.attributes[tracing.TOOL]) == (request_id, "buy_stock")
    [decided] = named(spans, "hitl.request.decided")
    assert decided.attributes is not None and decided.attributes[tracing.STATUS] == "executing"
    assert decided.context is not None and decided.context.trace_id == APPROVER_TRACE
    [executed] = named(spans, "hitl.request.executed")
    assert executed.context is not None and executed.context.trace_id == AGENT_TRACE
    assert executed.parent is not None and executed.parent.span_id == filed.context.span_id
    assert executed.attributes is not None
    assert executed.attributes[tracing.REQUEST_ID] == request_id
    assert executed.attributes[tracing.OUTCOME] == "executed"
    # The approver's call that released it is linked, in its own trace.
    assert [link.context.trace_id for link in executed.links] == [APPROVER_TRACE]


async def test_a_call_the_policy_approves_at_once_runs_in_its_callers_trace(
    settings: Settings, spans: InMemorySpanExporter
) -> None:
    free = load_policies({"buy_stock": {"rules": [{"approval": "none"}]}}, settings.principals)
    settings = dataclasses.replace(settings, policies={**settings.policies, **free})
    async with session(settings, "agent") as agent:
        with trace.use_span(caller(AGENT_TRACE)):
            assert ok(await agent.call_tool("buy_stock", BUY))["status"] == "executed"
    [filed] = named(spans, "hitl.request.filed")
    [executed] = named(spans, "hitl.request.executed")
    assert filed.context is not None and executed.context is not None
    assert executed.context.trace_id == filed.context.trace_id == AGENT_TRACE


@pytest.fixture(params=["sqlite", "postgres"])
def either_settings(request: pytest.FixtureRequest, env: dict[str, str], settings: Settings) -> Settings:
    if request.param == "sqlite":
        return settings
    return load_settings({**env, "HITL_DB": request.getfixturevalue("pg_url")})


async def test_a_server_that_did_not_file_the_request_finds_the_callers_trace_in_the_store(
    either_settings: Settings, spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with session(either_settings, "agent") as agent:
        with trace.use_span(caller(AGENT_TRACE)):
            request_id = ok(await agent.call_tool("buy_stock", BUY))["request_id"]
    # As on another server of the store: nothing of the filing is in this process's memory.
    monkeypatch.setattr(tracing, "_carried", OrderedDict())
    async with session(either_settings, "alice") as alice:
        with trace.use_span(caller(APPROVER_TRACE)):
            assert ok(await alice.call_tool("approve", {"request_id": request_id}))["status"] == "executed"

    [call] = named(spans, "tools/call buy_stock")
    [executed] = named(spans, "hitl.request.executed")
    assert call.context is not None and call.context.trace_id == AGENT_TRACE
    assert executed.context is not None and executed.context.trace_id == AGENT_TRACE
    assert executed.parent is not None and executed.parent.span_id == call.context.span_id
