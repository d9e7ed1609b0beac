"""Delivering a `slack_channel` notification: post the message (with buttons while the request waits) and
remember it; on a decision, outcome, expiry or withdrawal, update every message posted about the request.

Updates go through the outbox like any notification, so they are retried, and sent by one server however
many share the store — whichever face decided. Rows are not ordered: an update whose request has since
reached another final status is skipped, as the row of that later event shows it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol, runtime_checkable

from hitl_mcp.models import FINAL_STATUSES, Request, Status
from hitl_mcp.notify import slack_blocks
from hitl_mcp.notify.outbox import ClaimedDelivery
from hitl_mcp.notify.render import slack_body
from hitl_mcp.notify.settings import SLACK_UPDATE_EVENTS, Notifier
from hitl_mcp.notify.slack_api import SlackApi
from hitl_mcp.store.slack_messages import SlackMessage, SlackMessageStore

CurrentStatus = Callable[[str], Awaitable[Status | None]]


@runtime_checkable
class RequestReader(Protocol):
    async def get(self, request_id: str) -> Request | None: ...


async def deliver(
    api: SlackApi,
    messages: SlackMessageStore,
    current_status: CurrentStatus,
    notifier: Notifier,
    row: ClaimedDelivery,
    *,
    public_url: str | None,
    now: float,
) -> None:
    payload = row.payload
    channel = notifier.slack_channel
    assert channel is not None
    if "notice" in payload:
        await api.call("chat.postMessage", channel=channel, **slack_body(payload))
        return
    request: dict[str, Any] = payload["request"]
    request_id = str(request["request_id"])
    content = slack_blocks.message(payload, public_url=public_url, now=now)
    if row.event in SLACK_UPDATE_EVENTS and await _still_current(current_status, request_id, request):
        for posted in await messages.slack_messages_of(request_id):
            await api.call("chat.update", channel=posted.channel, ts=posted.ts, **content)
    if row.event in notifier.on and (not notifier.tools or request["tool"] in notifier.tools):
        answer = await api.call("chat.postMessage", channel=channel, **content)
        if request["status"] == Status.PENDING.value:
            # Slack answers with the channel's id even when it was addressed by a user's (a DM).
            await messages.slack_message_add(
                SlackMessage(str(answer.get("channel") or channel), str(answer["ts"]), request_id, now)
            )


async def _still_current(current_status: CurrentStatus, request_id: str, request: dict[str, Any]) -> bool:
    status = await current_status(request_id)
    return status is None or status.value == request["status"] or status not in FINAL_STATUSES
