"""The inbox at volume: the queue's counts (how many wait, how many on me), search over arguments and
summaries in the store on both backends, and deciding several requests at once — each decided on its own,
with an answer per request."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from hitl_mcp.config import Settings, load_settings
from hitl_mcp.decisions import plan
from hitl_mcp.gate import open_gate
from hitl_mcp.policy import DEFAULT_RULE, Level, Snapshot
from hitl_mcp.store import NewRequest, Planner, Store
from hitl_mcp.store import queue as queue_reads
from hitl_mcp.store.sqlite import SQLiteStore
from tests.inbox import Served, Site, csrf_of, make_site, serve

NOW = 1_000_000.0
TTL = 3600.0
ANYONE = Snapshot(rule_index=None, approval="required", levels=DEFAULT_RULE.levels)
TWO_LEVELS = Snapshot(
    rule_index=1,
    approval="required",
    levels=[Level(roles=["trader"], count=1), Level(roles=["risk_manager"], count=1)],
)
SMALL = 10.0  # a price that keeps an order under the one-level limit of tests.inbox.POLICY


# -- the store's reads, on both backends ------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Store]:
    if request.param == "sqlite":
        return lambda: SQLiteStore(tmp_path / "store.db")
    from hitl_mcp.store.postgres import PostgresStore

    url: str = request.getfixturevalue("pg_url")  # asked only here: SQLite runs start no cluster
    return lambda: PostgresStore(url)


@pytest.fixture
async def store(make_store: Callable[[], Store]) -> AsyncIterator[Store]:
    opened = make_store()
    await opened.open()
    yield opened
    await opened.close()


def new(
    request_id: str,
    summary: str,
    arguments: dict[str, Any],
    *,
    requested_by: str = "agent",
    policy: Snapshot = ANYONE,
    expires_at: float = NOW + TTL,
) -> NewRequest:
    return NewRequest(
        request_id=request_id,
        tool="buy_stock",
        arguments=arguments,
        arguments_digest="d" * 64,
        summary=summary,
        preview={},
        requested_by=requested_by,
        created_at=NOW,
        expires_at=expires_at,
        policy=policy,
    )


def approval(principal: str, roles: tuple[str, ...], now: float) -> Planner:
    return lambda current: plan(
        current, principal=principal, roles=roles, verdict="approve", reason=None, edit=None, now=now
    )


async def ids(found: Awaitable[Any]) -> list[str]:
    return [request.request_id for request in (await found).requests]


async def test_search_matches_summaries_and_arguments_case_blind_and_its_wildcards_literally(
    store: Store,
) -> None:
    await store.insert(new("r1", "Buy 1 NVDA", {"symbol": "NVDA"}))
    await store.insert(new("r2", "Mail the team", {"to": "ops@corp.com", "note": "100% sure"}))
    await store.insert(new("r3", "Buy 2 AMZN", {"symbol": "AMZN"}))
    await store.insert(new("r4", "Buy 3 NVDA", {"symbol": "NVDA"}))

    def search(text: str, limit: int = 50, cursor: str | None = None) -> Awaitable[Any]:
        return queue_reads.search(store, None, None, text, limit, cursor)

    assert await ids(search("nvda")) == ["r1", "r4"]
    assert await ids(search("CORP.COM")) == ["r2"]  # only in the arguments
    assert await ids(search("100%")) == ["r2"]
    # `%` and `_` are what they are, not LIKE's wildcards: neither matches everything.
    assert await ids(search("%")) == ["r2"]
    assert await ids(search("_")) == []
    first = await search("buy", limit=2)
    assert [r.request_id for r in first.requests] == ["r1", "r3"]
    assert await ids(search("buy", limit=2, cursor=first.next_cursor)) == ["r4"]


async def test_the_queue_is_counted_by_rule_and_level_without_my_own_or_what_i_decided(store: Store) -> None:
    await store.insert(new("a", "a", {"n": 1}))
    await store.insert(new("b", "b", {"n": 2}, requested_by="ALICE"))
    await store.insert(new("c", "c", {"n": 3}, policy=TWO_LEVELS))
    await store.insert(new("d", "d", {"n": 4}, policy=TWO_LEVELS))
    await store.insert(new("gone", "gone", {"n": 5}, expires_at=NOW + 1))
    later = NOW + 10
    await store.decide("c", approval("alice", ("trader",), later), later)  # now waits on level 2

    groups = await queue_reads.waiting_groups(store, "Alice", later)
    by_level = {(group.policy == ANYONE.model_dump_json(), group.level): group for group in groups}

    assert sum(group.total for group in groups) == 4  # the expired one is not waiting
    assert (by_level[True, 0].total, by_level[True, 0].open_to) == (2, 1)  # b is hers
    assert (by_level[False, 0].total, by_level[False, 0].open_to) == (1, 1)  # d
    assert (by_level[False, 1].total, by_level[False, 1].open_to) == (1, 0)  # c: she counted already


# -- the inbox -----------------------------------------------------------------------------------------


def file_as(settings: Settings, principal: str, tool: str, arguments: dict[str, Any]) -> str:
    async def run() -> str:
        async with open_gate(settings) as gate:
            return (await gate.file(tool, arguments, principal)).request_id

    return anyio.run(run)


def buy(
    settings: Settings, symbol: str, quantity: int, principal: str = "agent", price: float = SMALL
) -> str:
    return file_as(settings, principal, "buy_stock", {"symbol": symbol, "quantity": quantity, "price": price})


def picks_on(page: str) -> dict[str, str]:
    """The queue's checkboxes: request id → the value the box sends."""
    return {
        value.partition(":")[0]: value
        for value in re.findall(
            r'<input type="checkbox" form="decide-selected" name="pick" value="([^"]+)"', page
        )
    }


def statuses(site: Site, *request_ids: str) -> list[str]:
    with sqlite3.connect(site.folder / "hitl.db") as conn:
        return [
            conn.execute("SELECT status FROM requests WHERE id = ?", (request_id,)).fetchone()[0]
            for request_id in request_ids
        ]


def audited(site: Site, request_id: str) -> list[tuple[str, str, str | None]]:
    """A request's audit records after filing: event, actor and the reason they give."""
    with sqlite3.connect(site.folder / "hitl.db") as conn:
        rows = conn.execute(
            "SELECT event, actor, json_extract(details, '$.reason') FROM audit WHERE request_id = ? "
            "AND event IN ('approved', 'rejected') ORDER BY seq",
            (request_id,),
        ).fetchall()
    return [(str(a), str(b), c) for a, b, c in rows]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Site, Served]]:
    site = make_site(tmp_path_factory.mktemp("volume"), tokens=True)
    with serve(site) as server:
        yield site, server


def test_the_queue_says_how_many_wait_and_how_many_wait_on_the_signed_in_person(tmp_path: Path) -> None:
    site = make_site(tmp_path, tokens=True)
    settings = load_settings(site.env)
    with serve(site) as server:
        buy(settings, "AAA", 1)
        buy(settings, "BBB", 2)
        buy(settings, "OWN", 3, principal="alice")
        big = buy(settings, "BIG", 100, price=150.0)  # a trader, then a risk manager
        file_as(settings, "agent", "delete_database_records", {"table": "users", "condition": "age > 40"})
        with server.api(site.tokens["alice"]) as alice:
            assert alice.post(f"/api/v1/requests/{big}/approve", json={}).status_code == 200

        with server.signed_in(site.tokens["alice"]) as alice_inbox:
            alices = alice_inbox.get("/").text
            alices_own_filter = alice_inbox.get("/", params={"waiting_on": "me"}).text
        with server.signed_in(site.tokens["bob"]) as bob_inbox:
            bobs = bob_inbox.get("/").text
        with server.signed_in(site.tokens["carol"]) as carol_inbox:
            carols = carol_inbox.get("/").text

    # Alice: AAA and BBB (not her own order, not the big one she already approved, not the delete).
    assert '5 requests wait; <a href="/?waiting_on=me">2 on you</a>.' in alices
    assert len(picks_on(alices_own_filter)) == 2
    assert "2 on you" not in bobs and "1 on you</a>" in bobs  # the big order's second level
    assert "1 on you</a>" in carols  # the delete


def test_search_narrows_the_queue_and_shows_agent_text_escaped(served: tuple[Site, Served]) -> None:
    site, server = served
    settings = load_settings(site.env)
    needle = buy(settings, "ZQXV", 1)
    other = buy(settings, "WWXY", 1)
    hostile = file_as(
        settings,
        "agent",
        "send_email",
        {"to": "ops@zqxv-corp.com", "subject": "<img src=x onerror=alert(1)>\u202e", "body": "b"},
    )

    with server.signed_in(site.tokens["alice"]) as alice:
        found = alice.get("/", params={"q": "zqxv"}).text
        live = alice.get("/", params={"q": "zqxv", "partial": "rows"}).text
        nothing = alice.get("/", params={"q": "no-such-words"}).text
        too_long = alice.get("/", params={"q": "x" * 201})
        control = alice.get("/", params={"q": "a\x00b"})
    with server.api(site.tokens["alice"]) as api:
        listed = api.get("/api/v1/requests", params={"q": "zqxv"}).json()

    assert set(picks_on(found)) == {needle, hostile} and other not in found
    assert set(picks_on(live)) == {needle, hostile}
    assert {line["request_id"] for line in listed["requests"]} == {needle, hostile}  # the page's JSON twin
    assert "&lt;img src=x onerror=alert(1)&gt;\\u202e" in found and "<img src=x" not in found
    assert 'data-live="/?q=zqxv&amp;partial=rows"' in found
    assert "Nothing waits for a decision that matches these filters." in nothing
    assert too_long.status_code == 400 and "q: at most 200 characters" in too_long.text
    assert control.status_code == 400 and "q: control characters" in control.text


def decide(
    client: httpx2.Client, picks: list[str], verdict: str, reason: str, csrf: str | None
) -> httpx2.Response:
    """The queue's form as a browser posts it: every ticked box, the button pressed, the reason."""
    fields: dict[str, Any] = {"pick": picks, "verdict": verdict, "reason": reason}
    if csrf is not None:
        fields["csrf"] = csrf
    return client.post("/decide", data=fields)


def test_several_approved_at_once_are_each_decided_and_audited_on_their_own(
    served: tuple[Site, Served],
) -> None:
    site, server = served
    settings = load_settings(site.env)
    first = buy(settings, "ONE", 1)
    second = buy(settings, "TWO", 2)
    own = buy(settings, "MINE", 3, principal="alice")

    with server.signed_in(site.tokens["alice"]) as alice:
        queue = alice.get("/").text
        picks = picks_on(queue)
        answer = decide(
            alice, [picks[first], picks[own], picks[second]], "approve", "batch ok", csrf_of(queue)
        )

    assert answer.status_code == 200
    assert "Approved 2 of 3" in answer.text
    done, refused = answer.text.split('id="decided-refused"')
    assert first in done and second in done
    assert f"alice filed request {own}; a principal may not decide its own request" in refused
    assert statuses(site, first, second, own) == ["executed", "executed", "pending"]
    assert {order[0] for order in site.orders()} >= {first, second}
    assert audited(site, first) == [("approved", "alice", "batch ok")]
    assert audited(site, second) == [("approved", "alice", "batch ok")]
    assert audited(site, own) == []


def test_a_selection_refused_whole_changes_nothing_and_keeps_what_was_selected(
    served: tuple[Site, Served],
) -> None:
    site, server = served
    settings = load_settings(site.env)
    one = buy(settings, "KEEP", 1)
    two = buy(settings, "KEPT", 2)

    with server.signed_in(site.tokens["alice"]) as alice:
        queue = alice.get("/").text
        picks = picks_on(queue)
        chosen = [picks[one], picks[two]]
        no_reason = decide(alice, chosen, "reject", "  ", csrf_of(queue))
        no_csrf = decide(alice, chosen, "reject", "no", None)
        none_chosen = decide(alice, [], "approve", "", csrf_of(queue))

    assert no_reason.status_code == 400
    assert "reason: a rejection needs a reason; nothing was changed" in no_reason.text
    assert re.search(rf'value="{re.escape(picks[one])}" id="pick-{one}" checked', no_reason.text)
    assert no_csrf.status_code == 403
    assert none_chosen.status_code == 400 and "pick: select at least one request" in none_chosen.text
    assert statuses(site, one, two) == ["pending", "pending"]


def test_each_refusal_in_a_selection_says_why_and_the_rest_are_decided(served: tuple[Site, Served]) -> None:
    site, server = served
    settings = load_settings(site.env)
    big = 150.0  # a price that puts an order above the one-level limit: a trader, then a risk manager
    decided = buy(settings, "GONE", 1)
    edited = buy(settings, "EDIT", 100, price=big)
    traders_only = buy(settings, "TRDR", 1)
    fine = buy(settings, "FINE", 101, price=big)
    with server.api(site.tokens["alice"]) as alice:
        assert alice.post(f"/api/v1/requests/{fine}/approve", json={}).status_code == 200

    with server.signed_in(site.tokens["bob"]) as bob:
        queue = bob.get("/").text
        picks = picks_on(queue)
        # Meanwhile alice rejects one and approves another with an edit: bob read neither as they stand.
        with server.api(site.tokens["alice"]) as alice:
            rejected = alice.post(f"/api/v1/requests/{decided}/reject", json={"reason": "no"})
            changed = alice.post(f"/api/v1/requests/{edited}/approve", json={"arguments": {"quantity": 99}})
        assert rejected.status_code == 200 and changed.status_code == 200, changed.text
        chosen = [picks[decided], picks[edited], picks[traders_only], picks[fine]]
        answer = decide(bob, chosen, "reject", "<b>not</b> today", csrf_of(queue))

    assert "Rejected 1 of 4" in answer.text
    assert f"request {decided} is rejected, not pending; nothing was changed" in answer.text
    assert f"request {edited} was edited since you were shown it; nothing was changed" in answer.text
    assert "which needs trader; bob holds risk_manager" in answer.text
    assert statuses(site, decided, edited, traders_only, fine) == [
        "rejected",
        "pending",
        "pending",
        "rejected",
    ]
    assert audited(site, fine) == [("approved", "alice", None), ("rejected", "bob", "<b>not</b> today")]


def test_history_searches_finished_requests_too(served: tuple[Site, Served]) -> None:
    site, server = served
    settings = load_settings(site.env)
    kept = buy(settings, "HSTQ", 1)
    other = buy(settings, "HSTR", 1)
    with server.api(site.tokens["alice"]) as alice:
        for request_id in (kept, other):
            rejected = alice.post(f"/api/v1/requests/{request_id}/reject", json={"reason": "no"})
            assert rejected.status_code == 200

    with server.signed_in(site.tokens["bob"]) as bob:
        found = bob.get("/history", params={"q": "hstq"}).text

    assert kept in found and other not in found
    assert 'name="q" value="hstq"' in found
