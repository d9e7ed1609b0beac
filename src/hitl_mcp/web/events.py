"""`GET /api/v1/events`: one Server-Sent Event per change of any request, from any process on the store.

Every change writes an audit record, so the audit sequence is the change log (as for `hitl_mcp.live`): an
event's `id` is its record's seq, and a client that reconnects with `Last-Event-ID` hears everything it
missed. The stream wakes on the store's change counter and this process's own changes, then reads only the
requests that changed: their audit records past the last one sent, and their status now.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

from hitl_mcp.gate import Gate
from hitl_mcp.store import wait_for_change
from hitl_mcp.web.models import ChangeEvent

# A comment line this often keeps proxies and browsers from closing a quiet stream.
KEEPALIVE_SECONDS = 15.0
# How often a quiet stream checks whether the server is stopping: it ends then, so shutdown need not wait.
STOP_CHECK_SECONDS = 0.5
# What a browser waits before reconnecting after the stream drops (a restart, say).
RETRY_MILLISECONDS = 1000


async def changes_after(gate: Gate, seen: int) -> tuple[list[tuple[int, ChangeEvent]], int]:
    """The audit records after `seen`, in order, each with its request's status; and the newest seq read."""
    store = gate.store
    changed, newest = await store.changed_since(seen)
    found: list[tuple[int, ChangeEvent]] = []
    for request_id in changed:
        request = await store.get(request_id)
        if request is None:
            continue
        for record in await store.audit_trail(request_id):
            # Past `newest` are records committed since `changed_since` read: the next round sends them.
            if seen < record.seq <= newest:
                found.append(
                    (
                        record.seq,
                        ChangeEvent(request_id=request_id, event=record.event, status=request.status),
                    )
                )
    found.sort(key=lambda item: item[0])
    return found, newest


async def stream(gate: Gate, last_event_id: int | None, stopping: Callable[[], bool]) -> AsyncIterator[str]:
    """The event stream's text until the server stops (the response ends it sooner when the client goes);
    a browser reconnects by itself, with the last id it heard."""
    store = gate.store
    if last_event_id is None:
        _, seen = await store.changed_since(None)
    else:
        seen = last_event_id
    yield f"retry: {RETRY_MILLISECONDS}\n\n"
    quiet_since = time.monotonic()
    # Taken before each read, so a commit landing while it reads still ends the wait after it.
    local, before = gate.change_event, await store.change_counter()
    changed = True  # the first round reads what the client missed
    while not stopping():
        if changed:
            events, seen = await changes_after(gate, seen)
            for seq, event in events:
                yield f"id: {seq}\ndata: {event.model_dump_json()}\n\n"
                quiet_since = time.monotonic()
        if time.monotonic() - quiet_since >= KEEPALIVE_SECONDS:
            yield ": keep-alive\n\n"
            quiet_since = time.monotonic()
        await wait_for_change(store, before, STOP_CHECK_SECONDS, local=local)
        counter = await store.change_counter()
        # A quiet round (the wait timed out to look at `stopping`) reads nothing.
        changed = counter != before or local.is_set()
        if changed:
            local, before = gate.change_event, counter
