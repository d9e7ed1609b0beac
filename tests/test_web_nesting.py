"""JSON nested deeper than anyone writes it — 100,000 arrays, 5,000 objects — from every outside door: the
REST API, the inbox's forms, /mcp and the command line. Each is refused in one line naming the rule, never a
server error or a traceback, and nothing is written."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import httpx2
import pytest

from hitl_mcp.config import load_settings
from hitl_mcp.json_input import MAX_DEPTH, TooDeep, depth, loads
from tests.cli_in_process import hitl
from tests.inbox import Served, Site, csrf_of, make_site, serve
from tests.test_cli import file_request

BUY = {"symbol": "GOOGL", "quantity": 10, "price": 150.0}
DEEP_ARRAYS = "[" * 100_000 + "]" * 100_000
DEEP_OBJECTS = '{"a":' * 5_000 + "1" + "}" * 5_000
RULE = f"may nest at most {MAX_DEPTH} levels"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    return make_site(tmp_path_factory.mktemp("nesting"), tokens=True)


@pytest.fixture(scope="module")
def server(site: Site) -> Iterator[Served]:
    with serve(site) as served:
        yield served


def decisions(site: Site) -> int:
    with sqlite3.connect(load_settings(site.env).db_path) as conn:
        return int(conn.execute("SELECT count(*) FROM decisions").fetchone()[0])


def test_depth_counts_brackets_outside_strings_and_loads_refuses_past_the_limit() -> None:
    within = "[" * MAX_DEPTH + "]" * MAX_DEPTH

    assert depth('{"a": ["[[[", {"b": "\\"]]{{"}]}') == 3
    assert loads(within) == loads(within) and depth(within) == MAX_DEPTH
    with pytest.raises(TooDeep, match=f"nested {MAX_DEPTH + 1} levels deep; arrays and objects {RULE}"):
        loads("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1))
    with pytest.raises(TooDeep):
        loads(DEEP_OBJECTS.encode())


@pytest.mark.parametrize("body", [DEEP_ARRAYS, DEEP_OBJECTS], ids=["arrays", "objects"])
@pytest.mark.parametrize("call", ["approve", "reject", "edit-preview"])
def test_a_deeply_nested_body_to_the_api_is_a_400_problem_naming_the_rule(
    server: Served, site: Site, body: str, call: str
) -> None:
    request_id = file_request(load_settings(site.env), "buy_stock", BUY)
    before = decisions(site)
    with server.api(site.tokens["alice"]) as alice:
        answer = alice.post(
            f"/api/v1/requests/{request_id}/{call}",
            content=body,
            headers={"Content-Type": "application/json"},
        )

    assert answer.status_code == 400, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["detail"].startswith("body: nested ") and RULE in answer.json()["detail"]
    assert decisions(site) == before
    assert "RecursionError" not in server.log.read_text() and "Traceback" not in server.log.read_text()


def test_deeply_nested_arguments_in_the_inbox_approve_form_are_refused_on_the_page(
    server: Served, site: Site
) -> None:
    request_id = file_request(load_settings(site.env), "buy_stock", BUY)
    before = decisions(site)
    with server.signed_in(site.tokens["alice"]) as alice:
        page = alice.get(f"/requests/{request_id}")
        answer = alice.post(
            f"/requests/{request_id}/approve",
            data={"csrf": csrf_of(page.text), "arguments": DEEP_OBJECTS},
            headers={"Origin": server.base},
        )

    assert answer.status_code == 400, answer.text
    assert f"arguments: nested 5000 levels deep; arrays and objects {RULE}" in answer.text
    assert decisions(site) == before
    assert "Traceback" not in server.log.read_text()


@pytest.mark.parametrize("body", [DEEP_ARRAYS, DEEP_OBJECTS], ids=["arrays", "objects"])
def test_a_deeply_nested_body_to_mcp_is_a_json_rpc_parse_error(server: Served, site: Site, body: str) -> None:
    headers = {
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
        "Authorization": f"Bearer {site.tokens['agent']}",
    }
    answer = httpx2.post(server.mcp, content=body, headers=headers, timeout=30)

    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] == -32700
    assert "Traceback" not in server.log.read_text()


def test_the_command_line_refuses_deep_json_in_one_line(site: Site) -> None:
    request_id = file_request(load_settings(site.env), "buy_stock", BUY)
    deep = "[" * 50_000 + "]" * 50_000
    approved = hitl(site.env, "approve", request_id, "--as", "alice", "--set", f"quantity={deep}")
    explained = hitl(site.env, "policy", "explain", "buy_stock", deep)

    for done in (approved, explained):
        assert done.returncode != 0
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "nested 50000 levels deep" in done.stderr and RULE in done.stderr
