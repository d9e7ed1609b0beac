"""The store's counts and its page of calls denied at filing, the same on every store."""

from __future__ import annotations

from hitl_mcp.models import Status
from hitl_mcp.store import Store
from tests.test_store_contract import NOW, new, open_store, store  # noqa: F401 -- the stores' fixtures


async def test_count_says_how_many_requests_a_page_has_left(store: Store) -> None:  # noqa: F811
    for number in range(5):
        await store.insert(new(f"r{number}"))
    first = await store.page([Status.PENDING], None, 2, None)

    assert await store.count([Status.PENDING], None, None) == 5
    assert first.next_cursor is not None
    assert await store.count([Status.PENDING], None, first.next_cursor) == 3
    assert await store.count([Status.PENDING], "send_email", None) == 0
    assert await store.count([Status.EXECUTED], None, None) == 0
    assert await store.count(None, None, None) == 5


async def test_denied_calls_page_oldest_first_with_their_tool_and_policy(store: Store) -> None:  # noqa: F811
    for number, tool in enumerate(["buy_stock", "send_email", "buy_stock"]):
        details = {"tool": tool, "arguments_digest": "d" * 64, "policy": "rule 1 (when x > 1): denied"}
        await store.record_event(f"denied{number}", "denied", "agent", details, NOW + number)
    await store.record_event("passed0", "passed", "agent", {"tool": "fs__read", "outcome": "ok"}, NOW)

    first = await store.denials(None, 2, None)
    rest = await store.denials(None, 2, first.next_cursor)
    bought = await store.denials("buy_stock", 10, None)

    assert [d.request_id for d in first.denials] == ["denied0", "denied1"]
    assert [d.request_id for d in rest.denials] == ["denied2"] and rest.next_cursor is None
    assert first.denials[1].tool == "send_email" and first.denials[1].requested_by == "agent"
    assert first.denials[0].policy == "rule 1 (when x > 1): denied" and first.denials[0].at == NOW
    assert [d.request_id for d in bought.denials] == ["denied0", "denied2"]
    assert await store.count_denials(None, None) == 3
    assert await store.count_denials(None, first.next_cursor) == 1
    assert await store.count_denials("send_email", None) == 1
