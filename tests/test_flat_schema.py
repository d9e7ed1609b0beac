"""hitl's tools list their answers' schemas flat: a client checks an answer at about half the cost, and
accepts and refuses exactly what the answer models' own schemas accept and refuse."""

from __future__ import annotations

import json
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from mcp import Client

from hitl_mcp.config import Settings
from hitl_mcp.flat_schema import flattened
from hitl_mcp.models import Decided, Request, SummaryPage
from hitl_mcp.server import FiledRequest, build_server
from tests.test_cli import BUY
from tests.test_server import ok

MODELS: dict[str, type[Any]] = {
    "buy_stock": FiledRequest,
    "approve": Decided,
    "get_request": Request,
    "list_pending": SummaryPage,
}


def accepts(schema: dict[str, Any], document: Any) -> bool:
    return Draft202012Validator(schema).is_valid(document)


async def test_hitls_tools_list_answer_schemas_without_references_and_their_answers_pass(
    settings: Settings,
) -> None:
    async with (
        Client(build_server(settings, principal="agent")) as agent,
        Client(build_server(settings, principal="alice")) as alice,
    ):
        listed = {tool.name: tool.output_schema for tool in (await agent.list_tools()).tools}
        filed = ok(await agent.call_tool("buy_stock", BUY))
        # The SDK's client checks each answer against the listed schema: these calls pass it.
        decided = ok(await alice.call_tool("approve", {"request_id": filed["request_id"]}))
        record = ok(await alice.call_tool("get_request", {"request_id": filed["request_id"]}))
        page = ok(await alice.call_tool("list_pending", {}))

    for name in MODELS:
        schema = listed[name]
        assert schema is not None
        assert "$ref" not in json.dumps(schema), name
        assert "$defs" not in schema, name
    for name, answer in (("buy_stock", filed), ("approve", decided), ("get_request", record)):
        assert accepts(listed[name] or {}, answer), name
        assert accepts(MODELS[name].model_json_schema(), answer), name
    assert accepts(listed["list_pending"] or {}, page)
    assert decided["status"] == "executed" and record["status"] == "executed"


def answers(model: type[Any], valid: dict[str, Any]) -> list[Any]:
    """A valid answer and near misses: each field dropped, each field given a value of every wrong kind."""
    found: list[Any] = [valid, {}, [], "text", None]
    for key in valid:
        found.append({k: v for k, v in valid.items() if k != key})
        for wrong in (None, "text", 7, 1.5, True, [], {}, {"extra": 1}, ["x"], "bogus-status"):
            found.append(valid | {key: wrong})
    return found


DECISION = {
    "principal": "alice",
    "verdict": "approve",
    "reason": None,
    "decided_at": "2026-12-07T11:46:11.290583Z",
    "roles": ["trader"],
    "level_index": 0,
    "changes": {"quantity": {"before": 1, "after": 2}},
    "level": 1,
}
VALID: dict[str, dict[str, Any]] = {
    "buy_stock": {
        "request_id": "cd3818b6698460515669",
        "status": "pending",
        "tool": "buy_stock",
        "summary": "Buy 1 GOOGL",
        "preview": {"total": 1.0},
        "expires_at": "2026-12-08T11:46:11.123976Z",
        "result": None,
        "error": None,
        "repeated": False,
        "next_step": "wait",
    },
    "approve": {
        "request_id": "cd3818b6698460515669",
        "tool": "buy_stock",
        "status": "executed",
        "summary": "Buy 1 GOOGL",
        "arguments": {"symbol": "GOOGL"},
        "decisions": [DECISION, DECISION | {"changes": None, "verdict": "reject"}],
        "waits_on": None,
        "result": {"order_id": "x"},
        "error": None,
        "effect": "none",
        "outcome_unknown": False,
        "recording": None,
    },
}


@pytest.mark.parametrize("name", sorted(VALID))
def test_a_flat_schema_accepts_and_refuses_what_the_models_schema_does(name: str) -> None:
    model = MODELS[name]
    original = model.model_json_schema()
    flat = flattened(original)
    assert accepts(flat, VALID[name])
    for document in answers(model, VALID[name]):
        assert accepts(flat, document) == accepts(original, document), document
    decided = VALID["approve"]
    if name == "approve":
        # A nested definition, inlined, still refuses what it refused.
        broken = decided | {"decisions": [DECISION | {"verdict": "maybe"}]}
        assert not accepts(flat, broken) and not accepts(original, broken)


def test_what_flattening_could_change_is_left_as_written() -> None:
    recursive = {
        "$defs": {"Node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/Node"}}}},
        "$ref": "#/$defs/Node",
    }
    flat = flattened(recursive)
    # The definition that contains itself stays a reference, and its definitions with it.
    assert flat["properties"]["next"] == {"$ref": "#/$defs/Node"} and "Node" in flat["$defs"]
    assert accepts(flat, {"next": {"next": {}}}) and not accepts(flat, {"next": {"next": 3}})

    asserting = {
        "$defs": {"S": {"type": "string"}},
        "properties": {"a": {"$ref": "#/$defs/S", "maxLength": 2}},
    }
    # Beside an assertion, a reference applies as well as it: inlining could let one override the other.
    assert flattened(asserting)["properties"]["a"] == {"$ref": "#/$defs/S", "maxLength": 2}
    assert not accepts(flattened(asserting), {"a": "long"}) and not accepts(flattened(asserting), {"a": 1})

    constrained = {"anyOf": [{"type": "string", "maxLength": 3}, {"type": "null"}]}
    assert flattened(constrained) == constrained

    unevaluated = {"type": "object", "additionalProperties": True, "unevaluatedProperties": False}
    assert flattened(unevaluated) == unevaluated
    assert accepts(unevaluated, {"x": 1}) and accepts(flattened(unevaluated), {"x": 1})
