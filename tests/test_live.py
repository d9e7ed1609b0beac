"""Subscriptions: a client hears of a change to its request — made here or by another process — at once."""

from __future__ import annotations

import json
import subprocess
import time
from datetime import datetime
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client

from hitl_mcp.config import Settings
from hitl_mcp.server import build_server
from tests.test_cli import HITL

BUY = {"symbol": "GOOGL", "quantity": 10, "price": 150.0}
# The bound for a subscriber to hear of a change made by another process.
NOTIFY_WITHIN_SECONDS = 0.150


async def file(client: Client) -> str:
    result = await client.call_tool("buy_stock", BUY)
    assert result.structured_content is not None
    request_id: str = result.structured_content["request_id"]
    return request_id


def approve_in_another_process(env: dict[str, str], request_id: str) -> float:
    """Run `hitl approve` and return the wall-clock time at which its decision was committed."""
    subprocess.run(
        [HITL, "approve", request_id, "--as", "alice", "--yes"], env=env, check=True, capture_output=True
    )
    return time.time()


async def test_resources_read_the_pending_queue_and_one_request(settings: Settings) -> None:
    async with Client(build_server(settings, principal="agent")) as client:
        request_id = await file(client)
        pending = await client.read_resource("hitl://requests/pending")
        one = await client.read_resource(f"hitl://requests/{request_id}")
        record = await client.call_tool("get_request", {"request_id": request_id})

    [pending_text] = pending.contents
    [one_text] = one.contents
    assert isinstance(pending_text, types.TextResourceContents)
    assert isinstance(one_text, types.TextResourceContents)
    assert [r["request_id"] for r in json.loads(pending_text.text)["requests"]] == [request_id]
    assert json.loads(one_text.text) == record.structured_content


async def test_an_unknown_request_resource_is_not_found(settings: Settings) -> None:
    async with Client(build_server(settings, principal="agent")) as client:
        with pytest.raises(Exception, match="no request has id"):
            await client.read_resource("hitl://requests/ffffffffffffffffffff")


async def test_a_subscriber_hears_of_a_decision_made_by_another_process(
    settings: Settings, env: dict[str, str]
) -> None:
    async with Client(build_server(settings, principal="agent")) as client:
        request_id = await file(client)
        uri = f"hitl://requests/{request_id}"
        async with (
            client.listen(resource_subscriptions=[uri]) as subscription,
            anyio.create_task_group() as tasks,
        ):
            tasks.start_soon(anyio.to_thread.run_sync, approve_in_another_process, env, request_id)
            with anyio.fail_after(5):
                async for event in subscription:
                    heard_at = time.time()
                    assert getattr(event, "uri", None) == uri
                    break
        record = await client.call_tool("get_request", {"request_id": request_id})

    assert record.structured_content is not None
    assert record.structured_content["status"] == "executed"
    decided_at = datetime.fromisoformat(record.structured_content["decisions"][0]["decided_at"]).timestamp()
    assert heard_at - decided_at < NOTIFY_WITHIN_SECONDS


# The old handshake is deprecated by the SDK; proving it still works is the point.
@pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")
async def test_an_older_client_subscribes_with_resources_subscribe_and_hears(
    settings: Settings, env: dict[str, str]
) -> None:
    updates: list[str] = []
    heard = anyio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            updates.append(str(message.params.uri))
            heard.set()

    async with Client(
        build_server(settings, principal="agent"), mode="legacy", message_handler=on_message
    ) as client:
        assert client.server_capabilities.resources is not None
        assert client.server_capabilities.resources.subscribe
        request_id = await file(client)
        uri = f"hitl://requests/{request_id}"
        await client.session.subscribe_resource(uri)
        await anyio.to_thread.run_sync(approve_in_another_process, env, request_id)
        with anyio.fail_after(5):
            await heard.wait()

    assert uri in updates
