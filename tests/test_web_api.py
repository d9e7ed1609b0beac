"""The REST API against a real `hitl serve --http`: the same rules and the same words as the CLI and MCP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from hitl_mcp.config import Settings, load_settings
from hitl_mcp.gate import open_gate
from tests.cli_in_process import hitl
from tests.inbox import Served, Site, make_site, serve, until
from tests.test_cli import file_request as filed
from tests.test_store_faults import locked

SMALL_BUY = {"symbol": "GOOGL", "quantity": 10, "price": 150.0}  # $1,500: one trader
LARGE_BUY = {"symbol": "MSFT", "quantity": 100, "price": 150.0}  # $15,000: a trader, then a risk manager


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    # A short busy timeout, so that a write to a locked store gives up within the test.
    # The access log says when the event stream is open (read_events_after_now waits for it).
    made = make_site(tmp_path_factory.mktemp("api"), tokens=True, extra="\n[logging]\naccess_log = true\n")
    config = Path(made.env["HITL_CONFIG"])
    config.write_text(config.read_text().replace("[gate]\n", "[gate]\nbusy_timeout_seconds = 0.3\n", 1))
    return made


@pytest.fixture(scope="module")
def server(site: Site) -> Iterator[Served]:
    with serve(site) as served:
        yield served


@pytest.fixture(scope="module")
def settings(site: Site) -> Settings:
    return load_settings(site.env)


@pytest.fixture
def api(server: Served, site: Site) -> Iterator[dict[str, httpx2.Client]]:
    clients = {name: server.api(token) for name, token in site.tokens.items()}
    yield clients
    for client in clients.values():
        client.close()


def file_many(settings: Settings, tool: str, arguments: dict[str, Any], count: int) -> list[str]:
    """File `count` requests as the agent, from this process: another process on the same store."""

    async def run() -> list[str]:
        async with open_gate(settings) as gate:
            return [(await gate.file(tool, arguments, "agent")).request_id for _ in range(count)]

    return anyio.run(run)


def problem(response: httpx2.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status and body["title"]
    detail: str = body["detail"]
    return detail


def cli_refusal(site: Site, *args: str) -> str:
    """What `hitl` prints when it refuses: its one line, without the `hitl: ` it starts with."""
    done = hitl(site.env, *args)
    assert done.returncode != 0, done.stdout
    return done.stderr.strip().removeprefix("hitl: ")


def test_a_call_without_a_known_token_gets_401_and_nothing_else(server: Served, site: Site) -> None:
    request_id = filed(load_settings(site.env), "buy_stock", SMALL_BUY)
    wrong = [{}, {"Authorization": "Bearer not-a-token"}, {"Authorization": f"Basic {site.tokens['alice']}"}]
    with httpx2.Client(base_url=server.base) as http:
        for headers in wrong:
            listed = http.get("/api/v1/requests", headers=headers)
            approved = http.post(f"/api/v1/requests/{request_id}/approve", headers=headers, json={})

            assert "Bearer TOKEN" in problem(listed, 401) or "not one this server knows" in problem(
                listed, 401
            )
            assert listed.headers["www-authenticate"] == "Bearer"
            problem(approved, 401)
    with server.api(site.tokens["alice"]) as alice:
        assert alice.get(f"/api/v1/requests/{request_id}").json()["status"] == "pending"


def test_the_queue_is_oldest_first_and_pages_with_its_cursor(
    api: dict[str, httpx2.Client], settings: Settings
) -> None:
    ids = [
        filed(settings, "delete_database_records", {"table": "users", "condition": f"id = {n}"})
        for n in (1, 2, 3)
    ]

    first = api["alice"].get("/api/v1/requests", params={"tool": "delete_database_records", "limit": 2})
    assert first.status_code == 200, first.text
    page = first.json()
    rest = (
        api["alice"]
        .get(
            "/api/v1/requests",
            params={"tool": "delete_database_records", "limit": 200, "cursor": page["next_cursor"]},
        )
        .json()
    )

    listed = [r["request_id"] for r in page["requests"] + rest["requests"]]
    assert [i for i in listed if i in ids] == ids
    assert len(page["requests"]) == 2 and page["next_cursor"] is not None and rest["next_cursor"] is None
    assert {"summary", "waits_on", "expires_at", "escalated", "requested_by"} <= set(page["requests"][0])


def test_a_request_is_read_by_any_unique_prefix_and_an_ambiguous_one_is_refused(
    api: dict[str, httpx2.Client], settings: Settings, site: Site
) -> None:
    ids = file_many(settings, "buy_stock", SMALL_BUY, 17)  # two of 17 share a first digit
    request_id = ids[0]
    shared = next(a[0] for a in ids for b in ids if a != b and a[0] == b[0])

    record = api["bob"].get(f"/api/v1/requests/{request_id[:12]}")
    ambiguous = api["bob"].get(f"/api/v1/requests/{shared}")
    unknown = api["bob"].get("/api/v1/requests/ffffffffffffffffffff")

    assert record.status_code == 200 and record.json()["request_id"] == request_id
    assert record.json()["preview"]["total"] == 1500.0
    assert problem(ambiguous, 409) == cli_refusal(site, "show", shared)
    assert problem(unknown, 404) == cli_refusal(site, "show", "ffffffffffffffffffff")


def test_an_approval_runs_the_action_once_and_answers_with_the_record(
    api: dict[str, httpx2.Client], settings: Settings, site: Site
) -> None:
    request_id = filed(settings, "buy_stock", SMALL_BUY)

    approved = api["alice"].post(f"/api/v1/requests/{request_id}/approve", json={"reason": "within limits"})
    again = api["alice"].post(f"/api/v1/requests/{request_id}/approve", json={})

    assert approved.status_code == 200, approved.text
    record = approved.json()
    assert record["status"] == "executed" and record["result"]["total"] == 1500.0
    assert (
        record["decisions"][0]["principal"] == "alice" and record["decisions"][0]["reason"] == "within limits"
    )
    assert [order for order in site.orders() if order[0] == request_id] == [(request_id, "GOOGL", 10)]
    assert "not pending" in problem(again, 409)


def test_nobody_decides_their_own_request_in_the_clis_words(
    api: dict[str, httpx2.Client], settings: Settings, site: Site
) -> None:
    request_id = filed(settings, "buy_stock", SMALL_BUY)

    approved = api["agent"].post(f"/api/v1/requests/{request_id}/approve", json={})
    rejected = api["agent"].post(f"/api/v1/requests/{request_id}/reject", json={"reason": "mine"})

    words = cli_refusal(site, "approve", request_id, "--as", "agent", "--yes")
    assert problem(approved, 403) == words
    assert problem(rejected, 403) == words
    assert "a principal may not decide its own request" in words


def test_a_role_the_level_does_not_admit_is_refused(
    api: dict[str, httpx2.Client], settings: Settings, site: Site
) -> None:
    request_id = filed(settings, "buy_stock", SMALL_BUY)

    refused = api["carol"].post(f"/api/v1/requests/{request_id}/approve", json={})

    assert problem(refused, 403) == cli_refusal(site, "approve", request_id, "--as", "carol", "--yes")
    assert "trader" in problem(refused, 403)


def test_an_edit_that_needs_more_approvals_waits_on_the_missing_level(
    api: dict[str, httpx2.Client], settings: Settings, site: Site
) -> None:
    request_id = filed(settings, "buy_stock", SMALL_BUY)

    previewed = api["alice"].post(
        f"/api/v1/requests/{request_id}/edit-preview", json={"arguments": {"quantity": 100}}
    )
    edited = api["alice"].post(
        f"/api/v1/requests/{request_id}/approve", json={"arguments": {"quantity": 100}}
    )
    bad = api["bob"].post(f"/api/v1/requests/{request_id}/approve", json={"arguments": {"quantity": "many"}})

    assert previewed.status_code == 200, previewed.text
    assert previewed.json()["changes"] == {"quantity": {"before": 10, "after": 100}}
    assert previewed.json()["preview"]["total"] == 15000.0 and "risk_manager" in previewed.json()["needs"]
    record = edited.json()
    assert record["status"] == "pending" and record["approval"]["waiting_on"] == 1
    assert record["arguments"]["quantity"] == 100 and record["original_arguments"]["quantity"] == 10
    assert record["decisions"][0]["changes"] == {"quantity": {"before": 10, "after": 100}}
    assert problem(bad, 400).startswith("quantity:")
    assert site.orders() == [order for order in site.orders() if order[0] != request_id]


def test_a_rejection_needs_a_reason_and_then_it_never_runs(
    api: dict[str, httpx2.Client], settings: Settings, site: Site
) -> None:
    request_id = filed(settings, "buy_stock", SMALL_BUY)

    empty = api["alice"].post(f"/api/v1/requests/{request_id}/reject", json={"reason": ""})
    blank = api["alice"].post(f"/api/v1/requests/{request_id}/reject", json={"reason": "   "})
    rejected = api["alice"].post(f"/api/v1/requests/{request_id}/reject", json={"reason": "not today"})

    assert problem(empty, 400).startswith("body.reason:")
    assert problem(blank, 400) == cli_refusal(site, "reject", request_id, "--as", "bob", "--reason", "  ")
    assert rejected.json()["status"] == "rejected"
    assert rejected.json()["decisions"][0]["reason"] == "not today"
    assert all(order[0] != request_id for order in site.orders())


def test_only_the_requester_withdraws_a_request(
    api: dict[str, httpx2.Client], settings: Settings, site: Site
) -> None:
    request_id = filed(settings, "buy_stock", SMALL_BUY)

    refused = api["bob"].post(f"/api/v1/requests/{request_id}/cancel")
    cancelled = api["agent"].post(f"/api/v1/requests/{request_id}/cancel")

    assert problem(refused, 403) == cli_refusal(site, "cancel", request_id, "--as", "bob")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"


def test_a_requests_audit_records_come_in_order(api: dict[str, httpx2.Client], settings: Settings) -> None:
    request_id = filed(settings, "buy_stock", SMALL_BUY)
    api["alice"].post(f"/api/v1/requests/{request_id}/approve", json={})

    trail = api["bob"].get(f"/api/v1/requests/{request_id[:10]}/audit").json()

    assert [record["event"] for record in trail] == ["filed", "approved", "claimed", "executed"]
    assert [record["seq"] for record in trail] == sorted(record["seq"] for record in trail)
    assert trail[1]["actor"] == "alice"


def test_waiting_on_me_lists_what_the_caller_may_decide_now(
    api: dict[str, httpx2.Client], settings: Settings
) -> None:
    request_id = filed(settings, "buy_stock", LARGE_BUY)

    def waiting_on(name: str) -> list[str]:
        found: list[str] = []
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {
                "waiting_on": "me",
                "limit": 200,
                **({"cursor": cursor} if cursor else {}),
            }
            page = api[name].get("/api/v1/requests", params=params).json()
            found += [r["request_id"] for r in page["requests"]]
            cursor = page["next_cursor"]
            if cursor is None:
                return found

    before = {name: request_id in waiting_on(name) for name in ("alice", "bob", "agent")}
    api["alice"].post(f"/api/v1/requests/{request_id}/approve", json={})
    after = {name: request_id in waiting_on(name) for name in ("alice", "bob", "agent")}

    assert before == {"alice": True, "bob": False, "agent": False}
    assert after == {"alice": False, "bob": True, "agent": False}


def read_events(
    server: Served, token: str, count: int, last_event_id: str | None = None
) -> list[dict[str, Any]]:
    """The first `count` events of a fresh stream, each with its id."""
    headers = {
        "Authorization": f"Bearer {token}",
        **({"Last-Event-ID": last_event_id} if last_event_id else {}),
    }
    found: list[dict[str, Any]] = []
    with (
        httpx2.Client(base_url=server.base, timeout=httpx2.Timeout(10, read=10)) as http,
        http.stream("GET", "/api/v1/events", headers=headers) as stream,
    ):
        assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
        event: dict[str, Any] = {}
        for line in stream.iter_lines():
            if line.startswith("id: "):
                event["id"] = line.removeprefix("id: ")
            elif line.startswith("data: "):
                event["data"] = json.loads(line.removeprefix("data: "))
            elif line == "" and "data" in event:
                found.append(event)
                event = {}
                if len(found) == count:
                    return found
    return found


def test_the_event_stream_has_one_event_per_change_and_resumes_after_last_event_id(
    server: Served, site: Site, settings: Settings, api: dict[str, httpx2.Client]
) -> None:
    mark = read_events_after_now(server, site, settings)
    request_id, events = mark
    api["alice"].post(f"/api/v1/requests/{request_id}/approve", json={})
    resumed = read_events(server, site.tokens["bob"], 3, last_event_id=events[0]["id"])

    assert events[0]["data"] == {"request_id": request_id, "event": "filed", "status": "pending"}
    assert [e["data"]["event"] for e in resumed] == ["approved", "claimed", "executed"]
    assert {e["data"]["request_id"] for e in resumed} == {request_id}
    assert all(e["data"]["status"] == "executed" for e in resumed)
    assert [int(e["id"]) for e in resumed] == sorted(int(e["id"]) for e in resumed)
    assert int(resumed[0]["id"]) > int(events[0]["id"])


def read_events_after_now(server: Served, site: Site, settings: Settings) -> tuple[str, list[dict[str, Any]]]:
    """Open a stream, then file a request from another process: the stream tells of it."""
    import threading

    result: list[list[dict[str, Any]]] = []
    reader = threading.Thread(target=lambda: result.append(read_events(server, site.tokens["bob"], 1)))
    reader.start()
    # The stream starts at the newest record when it opens; a request filed before that is not news to it.
    until(lambda: "GET /api/v1/events" in server.log.read_text(), timeout=10)
    request_id = filed(settings, "buy_stock", SMALL_BUY)
    reader.join(timeout=10)
    assert result, "no event arrived"
    return request_id, result[0]


def test_the_report_is_what_hitl_report_json_prints(
    api: dict[str, httpx2.Client], settings: Settings, site: Site
) -> None:
    filed(settings, "buy_stock", SMALL_BUY)
    printed = hitl(site.env, "report", "--json", "--since", "1h")
    served = api["bob"].get("/api/v1/report", params={"since": "1h"})
    bad = api["bob"].get("/api/v1/report", params={"since": "last tuesday"})

    assert printed.returncode == 0, printed.stderr
    expected = json.loads(printed.stdout)
    got = served.json()
    # The window starts at "now minus an hour", read a moment apart by the two; both say when in ISO 8601,
    # as every other time the API and the CLI print.
    since_served, since_printed = (datetime.fromisoformat(got.pop("since")), expected.pop("since"))
    assert abs((since_served - datetime.fromisoformat(since_printed)).total_seconds()) < 60
    assert abs((datetime.now(UTC) - timedelta(hours=1) - since_served).total_seconds()) < 60
    assert got == expected
    assert problem(bad, 400).startswith("since:")


def test_a_body_over_one_mebibyte_is_refused_before_it_is_read(
    api: dict[str, httpx2.Client], settings: Settings
) -> None:
    request_id = filed(settings, "buy_stock", SMALL_BUY)
    huge = json.dumps({"reason": "x" * (1 << 20)})

    refused = api["alice"].post(
        f"/api/v1/requests/{request_id}/approve", content=huge, headers={"Content-Type": "application/json"}
    )
    malformed = api["alice"].post(
        f"/api/v1/requests/{request_id}/approve", content="{", headers={"Content-Type": "application/json"}
    )

    assert "1 MiB" in problem(refused, 413)
    assert problem(malformed, 400).startswith("body: not JSON")
    assert api["alice"].get(f"/api/v1/requests/{request_id}").json()["status"] == "pending"


def test_a_store_locked_by_another_process_answers_503_and_changes_nothing(
    api: dict[str, httpx2.Client], settings: Settings, site: Site
) -> None:
    request_id = filed(settings, "buy_stock", SMALL_BUY)

    with locked(settings.db_path):
        refused = api["alice"].post(f"/api/v1/requests/{request_id}/approve", json={})
        read = api["alice"].get(f"/api/v1/requests/{request_id}")

    assert "locked by another process" in problem(refused, 503)
    assert "nothing was changed" in problem(refused, 503)
    assert read.status_code == 200 and read.json()["status"] == "pending"


def test_a_server_without_the_target_approves_and_leaves_the_run_to_one_that_has_it(tmp_path: Path) -> None:
    site = make_site(tmp_path, tokens=True)
    config = tmp_path / "elsewhere.toml"
    # The same store and principals, another ledger: this server may decide, never run.
    config.write_text(Path(site.env["HITL_CONFIG"]).read_text().replace('"ledger.db"', '"other-ledger.db"'))
    request_id = filed(load_settings(site.env), "buy_stock", SMALL_BUY)

    with (
        serve(site, "elsewhere.log", env={**site.env, "HITL_CONFIG": str(config)}) as elsewhere,
        elsewhere.api(site.tokens["alice"]) as alice,
        elsewhere.signed_in(site.tokens["bob"]) as browser,
    ):
        approved = alice.post(f"/api/v1/requests/{request_id}/approve", json={}).json()
        page = browser.get(f"/requests/{request_id}").text

    assert approved["status"] == "approved" and approved["approval"]["waiting_on"] is None
    assert "not run here; waiting for a process configured for it" in page
    assert site.orders() == []

    async def run_where_the_ledger_is() -> str:
        # This process is configured for the request's ledger: its gate runs what was approved elsewhere.
        async with open_gate(load_settings(site.env)) as gate:
            return (await gate.execute(request_id)).status

    assert anyio.run(run_where_the_ledger_is) == "executed"
    assert site.orders() == [(request_id, "GOOGL", 10)]
