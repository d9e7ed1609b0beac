"""The REST API's OpenAPI document: generated from the models the faces return, and every answer of a real
server, fuzzed from the document by schemathesis, conforms to it and is never a server error."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import BaseSchema, Case, GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from hitl_mcp.config import load_settings
from hitl_mcp.models import AuditEvent, Request, SummaryPage
from hitl_mcp.web.models import ReportFigures
from hitl_mcp.web.openapi import REF
from tests.inbox import Served, Site, make_site, serve
from tests.test_cli import file_request

# Over every operation at once, in each mode: enough to reach each with good and bad input on every run, few
# enough to keep the suite fast.
FUZZ_EXAMPLES = 150
TABLE = {
    ("get", "/api/v1/requests"),
    ("get", "/api/v1/requests/{request_id}"),
    ("get", "/api/v1/requests/{request_id}/audit"),
    ("post", "/api/v1/requests/{request_id}/approve"),
    ("post", "/api/v1/requests/{request_id}/reject"),
    ("post", "/api/v1/requests/{request_id}/cancel"),
    ("get", "/api/v1/events"),
    ("get", "/api/v1/report"),
}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    return make_site(tmp_path_factory.mktemp("openapi"), tokens=True)


@pytest.fixture(scope="module")
def server(site: Site) -> Iterator[Served]:
    with serve(site) as served:
        # Something to list, read and decide: one request of each action.
        settings_ = load_settings(site.env)
        file_request(settings_, "buy_stock", {"symbol": "GOOGL", "quantity": 10, "price": 150.0})
        file_request(settings_, "send_email", {"to": "erin@example.org", "subject": "Hi", "body": "Hello"})
        file_request(settings_, "delete_database_records", {"table": "users", "condition": "age < 30"})
        yield served


@pytest.fixture(scope="module")
def document(server: Served) -> dict[str, Any]:
    with httpx2.Client(base_url=server.base) as http:
        found = http.get("/api/v1/openapi.json")
    assert found.status_code == 200 and found.headers["content-type"] == "application/json"
    body: dict[str, Any] = found.json()
    return body


def test_the_document_has_every_operation_of_the_api(document: dict[str, Any]) -> None:
    operations = {(method, path) for path, item in document["paths"].items() for method in item}

    assert document["openapi"] == "3.1.0"
    assert operations >= TABLE
    assert document["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    tools = next(p for p in document["paths"]["/api/v1/requests"]["get"]["parameters"] if p["name"] == "tool")
    assert set(tools["schema"]["enum"]) == {"buy_stock", "send_email", "delete_database_records"}


@pytest.mark.parametrize("model", [Request, SummaryPage, AuditEvent, ReportFigures])
def test_the_document_describes_the_records_with_the_models_the_faces_return(
    document: dict[str, Any], model: type[Any]
) -> None:
    described = document["components"]["schemas"][model.__name__]
    expected = model.model_json_schema(mode="serialization", ref_template=REF)
    expected.pop("$defs", None)

    assert described == expected


def test_every_answer_of_a_listing_validates_against_its_model(server: Served, site: Site) -> None:
    with server.api(site.tokens["alice"]) as alice:
        page = alice.get("/api/v1/requests", params={"status": "all"}).json()
        record = alice.get(f"/api/v1/requests/{page['requests'][0]['request_id']}").json()

    assert SummaryPage.model_validate(page).requests
    assert Request.model_validate(record).request_id == page["requests"][0]["request_id"]


@pytest.fixture(scope="module")
def api_schema(server: Served, site: Site) -> BaseSchema:
    token = site.tokens["bob"]
    schema = schemathesis.openapi.from_url(f"{server.base}/api/v1/openapi.json")
    schema.config.update(base_url=server.base, headers={"Authorization": f"Bearer {token}"})
    # The event stream never ends by itself; tests/test_web_api.py reads it.
    return schema.exclude(path="/api/v1/events")


@pytest.mark.parametrize("mode", list(GenerationMode))
def test_the_api_answers_every_generated_call_as_its_document_says(
    api_schema: BaseSchema, mode: GenerationMode
) -> None:
    # Schemathesis's own pytest plugin does not run under this pytest: its strategy goes through Hypothesis.
    @given(case=api_schema.as_strategy(generation_mode=mode))
    @settings(
        max_examples=FUZZ_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    def call(case: Case[Any]) -> None:
        # A call can fit the document and still be refused with a documented 400: the arguments an approver
        # edits are the action's to judge, a date may not exist, a reason may be blank. Every other check
        # holds: no 5xx, and each status, header, content type and body is the one the document gives.
        case.call_and_validate(excluded_checks=[positive_data_acceptance])

    call()


def _time_fields(schema: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every property of the document's schemas that holds a moment, by its name, with its schema."""
    if isinstance(schema, dict):
        for name, prop in (schema.get("properties") or {}).items():
            if name in ("since", "until", "at") or name.endswith("_at"):
                yield f"{path}.{name}", prop
        for key, value in schema.items():
            yield from _time_fields(value, f"{path}.{key}")
    elif isinstance(schema, list):
        for index, item in enumerate(schema):
            yield from _time_fields(item, f"{path}[{index}]")


def test_every_time_the_api_answers_with_is_iso_8601(
    document: dict[str, Any], server: Served, site: Site
) -> None:
    found = dict(_time_fields(document["components"]["schemas"]))
    with server.api(site.tokens["bob"]) as bob:
        report = bob.get("/api/v1/report", params={"since": "2026-01-02T03:04:05Z"}).json()

    assert {".ReportFigures.since", ".AuditEvent.at", ".Request.created_at"} <= set(found)
    for where, prop in found.items():
        kinds = [option for option in prop.get("anyOf", [prop]) if option.get("type") != "null"]
        assert [(kind.get("type"), kind.get("format")) for kind in kinds] == [("string", "date-time")], where
    assert report["since"] == "2026-01-02T03:04:05Z"
