"""Upstream MCP servers: the servers an operator's agents already use, reached through hitl.

- `settings.py` — `[upstreams.NAME]` tables, validated at start; `desktop.py` a desktop client's JSON
- `rules.py` — which tools are gated and which passed, and why
- `supervisor.py` — `Upstreams`: live sessions, restarted when they die, refreshed when tools change
- `state.py` — what is reported about an upstream; `reasons.py` why it failed, in words
- `session.py` — one session; `stdio.py` and `http.py` its transports, `processes.py` stopping children
- `delivery.py` — whether a call's request left hitl: `NotSent` and `LostAfterSend`

Nothing is re-exported here: `config.py` imports the settings on every command, and the SDK's client,
which the supervisor needs, is slow to import.
"""
