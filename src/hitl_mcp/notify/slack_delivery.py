"""Delivering a `slack_channel` notification: post the message (with buttons while the request waits) and
remember it; on a decision, outcome, expiry or withdrawal, update every message posted about the request.

Updates go through the outbox like any notification, so they are retried, and sent by one server however
many share the store — whichever face decided. Rows are not ordered, and a post may be retried while the
request is decided elsewhere, so the request's current state is looked at around each step: a request
decided before its post is not posted (nobody needs to act), one decided while its post was on the way has
the new message updated at once, and an update whose request has since reached another final status is
skipped, as the row of that later event shows it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol, runtime_checkable

from hitl_mcp.models import FINAL_STATUSES, Request, Status
from hitl_mcp.notify import slack_blocks
from hitl_mcp.notify.outbox import ClaimedDelivery
from hitl_mcp.notify.render import slack_body
from hitl_mcp.notify.routing import snapshot
from hitl_mcp.notify.settings import SLACK_UPDATE_EVENTS, Notifier
from hitl_mcp.notify.slack_api import SlackApi
from hitl_mcp.store.slack_messages import SlackMessage, SlackMessageStore

Current = Callable[[str], Awaitable[Request | None]]


@runtime_checkable
class RequestReader(Protocol):
    async def get(self, request_id: str) -> Request | None: ...


async def deliver(
    api: SlackApi,
    messages: SlackMessageStore,
    current: Current,
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
    if row.event in SLACK_UPDATE_EVENTS:
        found = await current(request_id)
        if found is None or found.status.value == request["status"] or found.status not in FINAL_STATUSES:
            for posted in await messages.slack_messages_of(request_id):
                await api.call("chat.update", channel=posted.channel, ts=posted.ts, **content)
    if row.event not in notifier.on or (notifier.tools and request["tool"] not in notifier.tools):
        return
    waiting = request["status"] == Status.PENDING.value
    if waiting and not _pending(await current(request_id)):
        return
    answer = await api.call("chat.postMessage", channel=channel, **content)
    if not waiting:
        return
    # Slack answers with the channel's id even when it was addressed by a user's (a DM).
    message = SlackMessage(str(answer.get("channel") or channel), str(answer["ts"]), request_id, now)
    await messages.slack_message_add(message)
    after = await current(request_id)
    if after is not None and not _pending(after):
        # Decided while the post was on the way: its update may have found no message to update.
        decided = slack_blocks.message(_snapshot_of(after, now), public_url=public_url, now=now)
        await api.call("chat.update", channel=message.channel, ts=message.ts, **decided)


def _pending(request: Request | None) -> bool:
    return request is None or request.status is Status.PENDING


def _snapshot_of(request: Request, now: float) -> dict[str, Any]:
    """What a message about the request's present state says (who rejected it, and why, included)."""
    rejection = next((d for d in reversed(request.decisions) if d.verdict == "reject"), None)
    actor = rejection.principal if rejection is not None else ""
    details = {"reason": rejection.reason} if rejection is not None and rejection.reason else {}
    return snapshot(request.status.value, request, actor, now, details, 0)
