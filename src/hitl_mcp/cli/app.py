"""The `hitl` command group, loading each command's module only when that command is used."""

from __future__ import annotations

import gc
import importlib
import pkgutil
from collections.abc import Iterator
from contextlib import contextmanager

import click

# The module that registers each command (on import, with `@main.command`/`@main.group`). `hitl list`
# then loads what listing needs and not the MCP SDK or the web face that `hitl serve` loads: start-up is
# most of a short command's time. A command missing here still works (every module is loaded to find
# it) but starts slowly; tests/test_cli_imports.py names any that is missing.
COMMANDS: dict[str, str] = {
    "approve": "requests",
    "audit": "audit",
    "cancel": "requests",
    "db": "db",
    "grants": "grants",
    "list": "list_command",
    "login": "login",
    "logout": "login",
    "mcp-config": "mcp_config",
    "notify": "notify",
    "policy": "policy",
    "reject": "requests",
    "report": "audit",
    "retry": "requests",
    "serve": "serve",
    "settle": "requests",
    "show": "requests",
    "token": "token",
    "upstreams": "upstreams",
    "watch": "watch",
}


def load_all() -> None:
    """Import every module of this package, so every command is registered (help, unknown names)."""
    with long_lived():
        for module in pkgutil.iter_modules(importlib.import_module("hitl_mcp.cli").__path__):
            importlib.import_module(f"hitl_mcp.cli.{module.name}")


@contextmanager
def long_lived() -> Iterator[None]:
    """Python's cyclic collector off while the block makes objects that live as long as the process, and
    what it made frozen after (`gc.freeze`), so no collection walks them again.

    Loading a command's modules (classes, pydantic's schemas and validators) and starting `hitl serve` (its
    models, tools and store: about 150,000 objects) make such objects and no garbage, and the collector
    walked them again and again as they were made: `hitl serve` made about 300 collections before it
    answered its first `tools/list`, 100-180 ms of its start (bench/cold_start.py). Unfrozen, the first
    collection after the block would walk all of it at once."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        load_all()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands:
            module = COMMANDS.get(cmd_name)
            if module is not None:
                with long_lived():
                    importlib.import_module(f"hitl_mcp.cli.{module}")
            if cmd_name not in self.commands:
                load_all()
        return super().get_command(ctx, cmd_name)


@click.group(
    cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}
)
@click.version_option(package_name="hitl-mcp-gateway")
def main() -> None:
    """hitl — a human between an AI agent and the actions it must not take alone.

    Agents file requests through the MCP server (`hitl serve`); you list, inspect, approve and reject
    them here. Both use the store named by HITL_DB (default: your user data directory) and the settings
    in the TOML file named by HITL_CONFIG. With HITL_SERVER (and HITL_TOKEN, or `hitl login`), the
    commands on requests work through that server as the token's principal instead.
    """
