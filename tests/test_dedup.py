"""Retries do not duplicate: a repeated call returns the request it repeats, and an idempotency key sent
in `_meta` always returns its first request."""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp_types import RequestParamsMeta

from hitl_mcp.config import Settings
from hitl_mcp.gate import open_gate
from hitl_mcp.server import IDEMPOTENCY_KEY, build_server
from tests.test_server import ok, text

BUY = {"symbol": "GOOGL", "quantity": 10, "price": 150.0}


def windowed(settings: Settings, seconds: float = 600) -> Settings:
    return dataclasses.replace(settings, gate=settings.gate.model_copy(update={"dedup_seconds": seconds}))


def filed(settings: Settings) -> int:
    with closing(sqlite3.connect(settings.db_path)) as conn:
        count: int = conn.execute("SELECT count(*) FROM requests").fetchone()[0]
        return count


@asynccontextmanager
async def agent(settings: Settings, principal: str = "agent") -> AsyncIterator[Client]:
    async with Client(build_server(settings, principal=principal)) as client:
        yield client


async def test_a_repeated_call_returns_the_pending_request_it_repeats(settings: Settings) -> None:
    async with agent(windowed(settings)) as client:
        first = ok(await client.call_tool("buy_stock", BUY))
        again = await client.call_tool("buy_stock", {**BUY, "symbol": "googl"})  # the same once normalised
        other = ok(await client.call_tool("buy_stock", {**BUY, "quantity": 11}))

    repeated = ok(again)
    assert repeated["request_id"] == first["request_id"] and repeated["repeated"] is True
    assert first["repeated"] is False
    assert f"repeats request {first['request_id']}" in repeated["next_step"]
    assert "no new request was filed" in text(again)
    assert other["request_id"] != first["request_id"]
    assert filed(settings) == 2


async def test_a_call_repeated_after_a_decision_or_by_someone_else_files_anew(settings: Settings) -> None:
    wide = windowed(settings)
    async with agent(wide) as client, agent(wide, "bot") as bot, agent(wide, "alice") as alice:
        first = ok(await client.call_tool("buy_stock", BUY))
        theirs = ok(await bot.call_tool("buy_stock", BUY))
        ok(await alice.call_tool("reject", {"request_id": first["request_id"], "reason": "not now"}))
        after = ok(await client.call_tool("buy_stock", BUY))

    assert len({first["request_id"], theirs["request_id"], after["request_id"]}) == 3
    assert not after["repeated"]


async def test_a_window_of_zero_turns_deduplication_off(settings: Settings) -> None:
    async with agent(windowed(settings, 0)) as client:
        ids = {ok(await client.call_tool("buy_stock", BUY))["request_id"] for _ in range(2)}

    assert len(ids) == 2


async def test_racing_retries_file_one_request(settings: Settings) -> None:
    ids: list[str] = []
    async with agent(windowed(settings)) as client:

        async def call() -> None:
            ids.append(ok(await client.call_tool("buy_stock", BUY))["request_id"])

        async with anyio.create_task_group() as tasks:
            for _ in range(10):
                tasks.start_soon(call)

    assert len(set(ids)) == 1 and len(ids) == 10
    assert filed(settings) == 1


async def test_an_idempotency_key_always_returns_its_first_request(settings: Settings) -> None:
    key: RequestParamsMeta = {"io.hitl/idempotency-key": "order-7f3a"}  # type: ignore[typeddict-unknown-key]
    async with agent(settings) as client, agent(settings, "alice") as alice, agent(settings, "bot") as bot:
        first = ok(await client.call_tool("buy_stock", BUY, meta=key))
        ok(await alice.call_tool("approve", {"request_id": first["request_id"]}))
        # Even after it ran, and with other arguments, the key names the first request.
        again = ok(await client.call_tool("buy_stock", {**BUY, "quantity": 99}, meta=key))
        theirs = ok(await bot.call_tool("buy_stock", BUY, meta=key))

    assert again["request_id"] == first["request_id"] and again["repeated"] is True
    assert again["status"] == "executed" and "same idempotency key" in again["next_step"]
    assert theirs["request_id"] != first["request_id"]
    assert filed(settings) == 2


@pytest.mark.parametrize("key", [17, "", "x" * 201, "line\nbreak"])
async def test_a_bad_idempotency_key_is_refused_and_files_nothing(settings: Settings, key: Any) -> None:
    async with agent(settings) as client:
        meta: RequestParamsMeta = {"io.hitl/idempotency-key": key}  # type: ignore[typeddict-unknown-key]
        refused = await client.call_tool("buy_stock", BUY, meta=meta)

    assert refused.is_error
    assert "_meta.io.hitl/idempotency-key" in text(refused) and "nothing was filed" in text(refused)
    assert filed(settings) == 0


def test_the_key_is_the_one_the_server_reads() -> None:
    assert IDEMPOTENCY_KEY == "io.hitl/idempotency-key"


async def test_the_gate_reports_a_repeat_to_any_face(settings: Settings) -> None:
    async with open_gate(windowed(settings)) as gate:
        first = await gate.file_call("buy_stock", BUY, "agent")
        second = await gate.file_call("buy_stock", BUY, "AGENT".lower())

    assert not first.repeated and second.repeated and not second.by_key
    assert second.request.request_id == first.request.request_id
