"""`/metrics` of a real `hitl serve --http`, scraped as Prometheus does, on both stores."""

from __future__ import annotations

from pathlib import Path

import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hitl_mcp.config import Settings
from hitl_mcp.gate import open_gate
from hitl_mcp.metrics import PROCESS, Scraper
from tests.inbox import Site, make_site, serve
from tests.test_auth import connect
from tests.test_notify import (  # noqa: F401 (fixtures)
    BIG_BUY,
    FAST,
    Configure,
    Receiver,
    configure,
    delivering,
    outbox,
    receiver,
    until,
)
from tests.test_server import ok
from tests.test_stored_tokens import made

SMALL_BUY = {"symbol": "GOOGL", "quantity": 10, "price": 150.0}  # one trader's approval under tests/inbox.py


def scrape(base: str, token: str | None = None) -> httpx2.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx2.get(f"{base}/metrics", headers=headers, timeout=30)


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition by name and labels, parsed by prometheus_client's own parser."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture(params=["sqlite", "postgres"])
def either_site(request: pytest.FixtureRequest, tmp_path: Path) -> Site:
    made_site = make_site(tmp_path, tokens=False)
    if request.param == "postgres":
        made_site.env["HITL_DB"] = request.getfixturevalue("pg_url")
    return made_site


async def test_a_tokenless_loopback_server_shows_the_queue_as_the_store_holds_it(either_site: Site) -> None:
    with serve(either_site) as server:
        async with connect(server.mcp, None) as agent:
            kept = ok(await agent.call_tool("buy_stock", SMALL_BUY))["request_id"]
            withdrawn = ok(await agent.call_tool("buy_stock", SMALL_BUY))["request_id"]
            ok(await agent.call_tool("cancel_request", {"request_id": withdrawn}))
        answer = scrape(server.base)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    found = samples(answer.text)
    assert value(found, "hitl_requests_pending", tool="buy_stock") == 1
    assert value(found, "hitl_requests_open", tool="buy_stock", status="pending") == 1
    assert value(found, "hitl_requests_total", tool="buy_stock", status="cancelled") == 1
    assert 0 <= value(found, "hitl_oldest_pending_age_seconds", tool="buy_stock") < 600
    assert kept != withdrawn


async def test_two_servers_on_one_store_show_the_same_pending_gauge(either_site: Site) -> None:
    with serve(either_site, "a.log") as first, serve(either_site, "b.log") as second:
        async with connect(first.mcp, None) as agent:
            for _ in range(3):
                ok(await agent.call_tool("buy_stock", SMALL_BUY))
        seen = [samples(scrape(server.base).text) for server in (first, second)]
    assert [value(found, "hitl_requests_pending", tool="buy_stock") for found in seen] == [3, 3]


async def test_with_tokens_only_a_principal_holding_the_metrics_role_may_scrape(tmp_path: Path) -> None:
    site = make_site(tmp_path, tokens=True)
    prometheus = made(site.env, "prometheus", "--roles", "metrics")
    with serve(site) as server:
        anonymous = scrape(server.base)
        assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"] == "Bearer"
        assert scrape(server.base, "not-a-token").status_code == 401
        trader = scrape(server.base, site.tokens["alice"])
        assert trader.status_code == 403 and "metrics role" in trader.text
        assert "hitl_requests_pending" not in anonymous.text + trader.text
        assert scrape(server.base, prometheus).status_code == 200


async def test_the_process_that_decides_and_runs_counts_the_decision_time_and_the_outcome(
    tmp_path: Path,
) -> None:
    site = make_site(tmp_path, tokens=True)
    prometheus = made(site.env, "prometheus", "--roles", "metrics")
    with serve(site) as server:
        before = samples(scrape(server.base, prometheus).text)
        async with connect(server.mcp, site.tokens["agent"]) as agent:
            request_id = ok(await agent.call_tool("buy_stock", SMALL_BUY))["request_id"]
        async with connect(server.mcp, site.tokens["alice"]) as alice:
            assert ok(await alice.call_tool("approve", {"request_id": request_id}))["status"] == "executed"
        after = samples(scrape(server.base, prometheus).text)
    assert value(before, "hitl_decision_seconds_count", tool="buy_stock") == 0
    assert value(after, "hitl_decision_seconds_count", tool="buy_stock") == 1
    assert value(after, "hitl_decision_seconds_bucket", tool="buy_stock", le="+Inf") == 1
    assert value(after, "hitl_executions_total", tool="buy_stock", outcome="executed") == 1
    commits = value(after, "hitl_store_commit_seconds_count", backend="sqlite")
    assert commits > value(before, "hitl_store_commit_seconds_count", backend="sqlite")
    assert value(after, "hitl_requests_pending", tool="buy_stock") == 0


async def test_a_failed_notification_is_counted_by_channel(
    configure: Configure,  # noqa: F811 (the fixture imported above)
    receiver: Receiver,  # noqa: F811
) -> None:
    receiver.always["/down"] = 500
    settings = configure(f'\n[[notify]]\non = ["filed"]\nwebhook = "{receiver.url("/down")}"\n')
    before = PROCESS.notifications_failed.get("webhook", 0)
    async with open_gate(settings) as gate:
        await gate.file("buy_stock", BIG_BUY, "agent")
        async with delivering(gate):
            await until(lambda: outbox(settings.db_path)[0]["state"] == "dead")
        exposition = (await Scraper(gate.store).render()).decode()
    assert PROCESS.notifications_failed["webhook"] - before == FAST.max_attempts
    found = samples(exposition)
    assert value(found, "hitl_notifications_failed_total", channel="webhook") >= FAST.max_attempts


async def test_finished_requests_are_recounted_at_most_once_a_minute_and_the_open_queue_at_once(
    settings: Settings,
) -> None:
    clock = [1000.0]
    async with open_gate(settings) as gate:
        scraper = Scraper(gate.store, clock=lambda: clock[0])
        first = await gate.file("buy_stock", SMALL_BUY, "agent")
        assert (
            value(samples((await scraper.render()).decode()), "hitl_requests_pending", tool="buy_stock") == 1
        )
        await gate.cancel(first.request_id, "agent")
        await gate.file("buy_stock", SMALL_BUY, "agent")
        await gate.file("buy_stock", SMALL_BUY, "agent")
        clock[0] += 59
        soon = samples((await scraper.render()).decode())
        clock[0] += 1
        later = samples((await scraper.render()).decode())
    assert value(soon, "hitl_requests_pending", tool="buy_stock") == 2
    assert value(soon, "hitl_requests_total", tool="buy_stock", status="cancelled") == 0
    assert value(later, "hitl_requests_total", tool="buy_stock", status="cancelled") == 1
