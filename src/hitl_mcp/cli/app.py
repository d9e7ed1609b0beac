"""The `hitl` command group."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="hitl-mcp-gateway")
def main() -> None:
    """hitl — a human between an AI agent and the actions it must not take alone.

    Agents file requests through the MCP server (`hitl serve`); you list, inspect, approve and reject
    them here. Both use the store named by HITL_DB (default: your user data directory) and the settings
    in the TOML file named by HITL_CONFIG. With HITL_SERVER (and HITL_TOKEN, or `hitl login`), the
    commands on requests work through that server as the token's principal instead.
    """
