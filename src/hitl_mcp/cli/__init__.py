"""The human face: `hitl`. Parses, establishes who is acting, calls the gate, renders the answer."""

from hitl_mcp.cli import (
    audit,
    db,
    grants,
    login,
    mcp_config,
    notify,
    policy,
    requests,
    serve,
    token,
    upstreams,
    watch,
)
from hitl_mcp.cli.app import main

__all__ = [
    "audit",
    "db",
    "grants",
    "login",
    "main",
    "mcp_config",
    "notify",
    "policy",
    "requests",
    "serve",
    "token",
    "upstreams",
    "watch",
]
