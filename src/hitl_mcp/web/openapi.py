"""The OpenAPI 3.1 document of `/api/v1`, generated from the models the handlers return: the records the MCP
face returns (`Request`, `SummaryPage`, `AuditEvent`) and the API's own bodies (`hitl_mcp.web.models`).
Pydantic writes JSON Schema 2020-12, which OpenAPI 3.1 takes as it is."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from hitl_mcp import __version__
from hitl_mcp.gate import MAX_PAGE
from hitl_mcp.json_input import MAX_DEPTH
from hitl_mcp.models import AuditEvent, Request, SummaryPage
from hitl_mcp.web.grants_api import GRANT_ID, GrantBody, GrantList, GrantRecord
from hitl_mcp.web.models import (
    ApproveBody,
    ChainState,
    ChangeEvent,
    EditBody,
    EditPreview,
    Problem,
    RejectBody,
    ReportFigures,
)
from hitl_mcp.web.problems import PROBLEM_JSON
from hitl_mcp.web.queries import STATUS_CHOICES
from hitl_mcp.web.remote_api import NDJSON, Count, DenialList, Principal, SettleBody

RESPONSES: tuple[type[BaseModel], ...] = (
    Request,
    SummaryPage,
    AuditEvent,
    ReportFigures,
    ChainState,
    EditPreview,
    ChangeEvent,
    Problem,
    Principal,
    Count,
    DenialList,
    GrantRecord,
    GrantList,
)
BODIES: tuple[type[BaseModel], ...] = (ApproveBody, RejectBody, EditBody, SettleBody, GrantBody)
REF = "#/components/schemas/{model}"
ERROR_TEXT = {
    400: f"Bad input: the detail names the field and the rule (a JSON body nests {MAX_DEPTH} levels at most)",
    401: "No principal: a missing or unknown bearer token",
    403: "Not allowed: the caller's own request, a role the policy does not admit, one decision each",
    404: "No request has this id",
    409: "Not pending, expired, or an id prefix matching more than one request",
    413: "The body is larger than 1 MiB",
    415: "The body is not JSON",
    503: "The store cannot do this now (locked, full, read-only, damaged); the detail says which",
}
TIME_PARAMETER = "An ISO date or time (UTC unless it gives an offset), or an age such as 30m, 12h or 7d"


@cache
def schemas() -> tuple[dict[Any, dict[str, Any]], dict[str, Any]]:
    keys: list[tuple[type[BaseModel], JsonSchemaMode]] = [(model, "serialization") for model in RESPONSES]
    keys += [(model, "validation") for model in BODIES]
    refs, top = models_json_schema(keys, ref_template=REF)
    return dict(refs), top.get("$defs", {})


def _ref(model: type[BaseModel], mode: JsonSchemaMode = "serialization") -> dict[str, Any]:
    return dict(schemas()[0][(model, mode)])


def _json(model: type[BaseModel], description: str, *, array: bool = False) -> dict[str, Any]:
    schema = {"type": "array", "items": _ref(model)} if array else _ref(model)
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    return {
        str(status): {
            "description": ERROR_TEXT[status],
            "content": {PROBLEM_JSON: {"schema": _ref(Problem)}},
        }
        for status in statuses
    }


def _body(model: type[BaseModel], *, required: bool) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": _ref(model, "validation")}}}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


REQUEST_ID = {
    "name": "request_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "minLength": 1, "maxLength": 64},
    "description": "The request id, or any unique prefix of it",
}


def _decision(summary: str, body: dict[str, Any] | None) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": summary,
        "parameters": [REQUEST_ID],
        "responses": {
            "200": _json(Request, "The record afterwards"),
            **_errors(400, 401, 403, 404, 409, 413, 415, 503),
        },
    }
    if body is not None:
        operation["requestBody"] = body
    return operation


CURSOR = {"type": "string", "pattern": "^[0-9]{1,18}$"}


def _for_the_cli(listing: list[dict[str, Any]], tool_schema: dict[str, Any]) -> dict[str, Any]:
    """The calls `hitl` makes through a server (HITL_SERVER) beyond the inbox's."""
    counted = [p for p in listing if p["name"] in ("status", "tool", "cursor")]
    denied = [
        _query("tool", tool_schema, "Only calls of this gated tool"),
        _query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 50}, "Per page"),
        _query("cursor", CURSOR, "`next_cursor` of the previous page"),
    ]
    return {
        "/api/v1/me": {
            "get": {
                "summary": "Who the token acts as, and the roles that count for it",
                "responses": {"200": _json(Principal, "The principal"), **_errors(401, 503)},
            }
        },
        "/api/v1/requests/count": {
            "get": {
                "summary": "How many requests are listed after `cursor`; `status` also takes a comma list",
                "parameters": counted,
                "responses": {"200": _json(Count, "The count"), **_errors(400, 401, 503)},
            }
        },
        "/api/v1/requests/{request_id}/retry": {
            "post": _decision(
                "Run again a failed request whose failure certainly had no effect, as one who may approve it",
                None,
            )
        },
        "/api/v1/requests/{request_id}/settle": {
            "post": _decision(
                "Record what a person found for a request whose outcome is unknown",
                _body(SettleBody, required=True),
            )
        },
        "/api/v1/denials": {
            "get": {
                "summary": "Calls the policy refused at filing, oldest first (no request was made)",
                "parameters": denied,
                "responses": {"200": _json(DenialList, "A page"), **_errors(400, 401, 503)},
            }
        },
        "/api/v1/denials/count": {
            "get": {
                "summary": "How many denied calls there are after `cursor`",
                "parameters": [denied[0], denied[2]],
                "responses": {"200": _json(Count, "The count"), **_errors(400, 401, 503)},
            }
        },
        "/api/v1/audit/records": {
            "get": {
                "summary": "The audit trail as stored, oldest first, one JSON object a line (`hitl audit "
                "export` and `hitl report` through a server)",
                "parameters": [
                    _query(
                        "since",
                        {"type": "string", "minLength": 1},
                        f"At or after: Unix seconds or {TIME_PARAMETER}",
                    ),
                    _query("until", {"type": "string", "minLength": 1}, "Before: given as `since`"),
                    _query(
                        "request",
                        {"type": "string", "pattern": "^[0-9A-Za-z_-]{1,64}$"},
                        "Only this request's records (an id or a unique prefix)",
                    ),
                ],
                "responses": {
                    "200": {
                        "description": "Records: seq, request_id, event, actor, at, details, prev_hash, hash",
                        "content": {NDJSON: {"schema": {"type": "string"}}},
                    },
                    **_errors(400, 401, 404, 409, 503),
                },
            }
        },
    }


def _grants() -> dict[str, Any]:
    """`/api/v1/grants`: standing approvals (docs/grants.md)."""
    changing = _errors(400, 401, 403, 404, 409, 503)

    def on_grant(summary: str) -> dict[str, Any]:
        return {
            "post": {
                "summary": summary,
                "parameters": [GRANT_ID],
                "responses": {"200": _json(GrantRecord, "The grant afterwards"), **changing},
            }
        }

    return {
        "/api/v1/grants": {
            "get": {
                "summary": "Grants waiting or active, oldest first; with all=true, finished ones too",
                "parameters": [
                    _query(
                        "all", {"type": "string", "enum": ["true", "false"]}, "Expired, revoked, used-up too"
                    )
                ],
                "responses": {"200": _json(GrantList, "The grants"), **_errors(400, 401, 503)},
            },
            "post": {
                "summary": "Grant a requester's calls of one tool whose arguments meet `when` (or any, said "
                "explicitly) until it expires; the caller must be able to approve such calls",
                "requestBody": _body(GrantBody, required=True),
                "responses": {
                    "201": _json(GrantRecord, "The grant: active, or waiting on further levels"),
                    **_errors(400, 401, 403, 404, 409, 413, 415, 503),
                },
            },
        },
        "/api/v1/grants/{grant_id}": {
            "get": {
                "summary": "One grant",
                "parameters": [GRANT_ID],
                "responses": {"200": _json(GrantRecord, "The grant"), **_errors(401, 404, 503)},
            }
        },
        "/api/v1/grants/{grant_id}/approve": on_grant("A further level's approval of a waiting grant"),
        "/api/v1/grants/{grant_id}/revoke": on_grant("End a grant: from the next call on it covers nothing"),
    }


def document(tools: Sequence[str] = ()) -> dict[str, Any]:
    """The document; `tools` (the gated tools served now) are what the `tool` filter takes."""
    tool_schema: dict[str, Any] = {"type": "string", "enum": list(tools)} if tools else {"type": "string"}
    listing = [
        _query(
            "status",
            {"type": "string", "enum": list(STATUS_CHOICES), "default": "pending"},
            "Only requests in this status; `finished` for every final one, `all` for any",
        ),
        _query("tool", tool_schema, "Only requests for this gated tool"),
        _query(
            "waiting_on",
            {"type": "string", "enum": ["me"]},
            "`me`: only requests whose current level admits the caller, who neither filed nor decided them",
        ),
        _query("requested_by", {"type": "string", "minLength": 1, "maxLength": 64}, "Only this requester's"),
        _query(
            "q",
            {"type": "string", "maxLength": 200, "pattern": "^[^\\x00-\\x1f\\x7f]*$"},
            "Only requests whose summary or arguments hold this text (case-blind; `%` and `_` are literal)",
        ),
        _query("since", {"type": "string", "minLength": 1}, f"Filed at or after: {TIME_PARAMETER}"),
        _query("until", {"type": "string", "minLength": 1}, f"Filed before: {TIME_PARAMETER}"),
        _query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 50}, "Per page"),
        _query(
            "cursor", {"type": "string", "pattern": "^[0-9]{1,18}$"}, "`next_cursor` of the previous page"
        ),
    ]
    paths: dict[str, Any] = {
        "/api/v1/requests": {
            "get": {
                "summary": "Requests, oldest first, a page at a time",
                "parameters": listing,
                "responses": {"200": _json(SummaryPage, "A page"), **_errors(400, 401, 503)},
            }
        },
        "/api/v1/requests/{request_id}": {
            "get": {
                "summary": "The whole record, as get_request returns it",
                "parameters": [REQUEST_ID],
                "responses": {"200": _json(Request, "The record"), **_errors(401, 404, 409, 503)},
            }
        },
        "/api/v1/requests/{request_id}/audit": {
            "get": {
                "summary": "The request's audit records, in order",
                "parameters": [REQUEST_ID],
                "responses": {
                    "200": _json(AuditEvent, "Its records", array=True),
                    **_errors(401, 404, 409, 503),
                },
            }
        },
        "/api/v1/requests/{request_id}/approve": {
            "post": _decision(
                "Approve someone else's pending request, optionally with edited arguments; once its policy's "
                "approvals are complete it runs here, when this server has its target",
                _body(ApproveBody, required=False),
            )
        },
        "/api/v1/requests/{request_id}/reject": {
            "post": _decision(
                "Reject someone else's pending request; it never runs", _body(RejectBody, required=True)
            )
        },
        "/api/v1/requests/{request_id}/cancel": {
            "post": _decision("Withdraw a pending request the caller filed; it never runs", None)
        },
        "/api/v1/requests/{request_id}/edit-preview": {
            "post": {
                "summary": "What approving with these changes would approve: validated, re-previewed, and "
                "the policy it selects. Changes nothing",
                "parameters": [REQUEST_ID],
                "requestBody": _body(EditBody, required=True),
                "responses": {
                    "200": _json(EditPreview, "The edit, previewed"),
                    **_errors(400, 401, 403, 404, 409, 413, 415, 503),
                },
            }
        },
        "/api/v1/events": {
            "get": {
                "summary": "Server-Sent Events, one per change: `id` the audit seq, `data` a ChangeEvent; "
                "resumes after Last-Event-ID",
                "parameters": [
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "The stream; each event's data is a ChangeEvent",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    **_errors(400, 401, 503),
                },
            }
        },
        "/api/v1/report": {
            "get": {
                "summary": "The report `hitl report --json` prints",
                "parameters": [
                    _query("since", {"type": "string", "minLength": 1}, f"Filed since: {TIME_PARAMETER}")
                ],
                "responses": {"200": _json(ReportFigures, "The figures"), **_errors(400, 401, 503)},
            }
        },
        **_for_the_cli(listing, tool_schema),
        **_grants(),
        "/api/v1/audit/verify": {
            "get": {
                "summary": "The audit chain's state, as `hitl audit verify` finds it",
                "responses": {"200": _json(ChainState, "The verdict"), **_errors(401, 503)},
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "hitl-mcp",
            "version": __version__,
            "description": "The approval inbox's REST API: the same Gate calls as the MCP tools and the CLI, "
            "with the same rules and the same refusals.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas()[1],
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }
