"""The human face: `hitl`. Parses, establishes who is acting, calls the gate, renders the answer."""

from hitl_mcp.cli import requests, serve
from hitl_mcp.cli.app import main

__all__ = ["main", "requests", "serve"]
