"""Notifications for humans: `[[notify]]` entries, an outbox written with each transition, a delivery worker.

A transition that some notifier wants writes one `outbox` row per matching notifier in its own transaction
(store/sqlite.py `_audit` → `routing.Routing`), with a snapshot of the request as it stood. The worker
(`worker.deliver_forever`, run by the server through `deliver_forever` here) claims due rows, sends them —
webhook, Slack, email — and marks each delivered, retried later with backoff, or dead. Nothing here runs on
the filing path but the routing, which only reads the row and inserts; HTTP and SMTP happen in the worker
alone.

The package's `__init__` imports nothing at import time: `hitl_mcp.config` imports `notify.settings`, and
the worker imports the gate, which imports the config.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hitl_mcp.gate import Gate


async def deliver_forever(gate: Gate) -> None:
    """The server's delivery worker (`worker.deliver_forever`); returns at once when no notifier is
    configured."""
    if not gate.settings.notifiers:
        return
    # Only here: the worker brings the clients of every channel (SMTP, Slack, HTTP), which a server
    # without notifiers never uses, onto the start-up path of every `hitl serve`.
    from hitl_mcp.notify import worker

    await worker.deliver_forever(gate)
