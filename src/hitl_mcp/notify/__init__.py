"""Notifications for humans: `[[notify]]` entries, an outbox written with each transition, a delivery worker.

A transition that some notifier wants writes one `outbox` row per matching notifier in its own transaction
(store/sqlite.py `_audit` → `routing.Routing`), with a snapshot of the request as it stood. The worker
(`worker.deliver_forever`, run by the server) claims due rows, sends them — webhook, Slack, email — and
marks each delivered, retried later with backoff, or dead. Nothing here runs on the filing path but the
routing, which only reads the row and inserts; HTTP and SMTP happen in the worker alone.

The package's `__init__` imports nothing: `hitl_mcp.config` imports `notify.settings`, and the worker
imports the gate, which imports the config.
"""
