"""`hitl policy`: check a config file, and explain which rule a request would meet."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import anyio
import click

from hitl_mcp import policy
from hitl_mcp.actions import build_actions, find
from hitl_mcp.cli.app import main
from hitl_mcp.cli.common import load, refusals
from hitl_mcp.config import Settings, load_settings
from hitl_mcp.errors import InvalidArguments


@main.group("policy")
def policy_group() -> None:
    """Check the policy in a config file, and see which rule a request would meet."""


@policy_group.command()
@click.argument("config", required=False, type=click.Path(path_type=Path))
@click.option("--strict", is_flag=True, help="Exit 1 when there is any warning.")
@refusals
def check(config: Path | None, strict: bool) -> None:
    """Validate CONFIG (default: the file HITL_CONFIG names) and summarise each action's policy.

    Exits 2 with a message naming the key when the file is wrong. A file that loads may still hold rules
    that cannot work: a `when` that fails on every call (text compared with a number, division by zero),
    a rule after one that always applies, a level needing more principals than hold its roles. Each is
    printed on stderr as `warning: KEY: …`; the exit status stays 0 unless --strict, which exits 1."""
    env = dict(os.environ)
    if config is not None:
        env["HITL_CONFIG"] = str(config)
    settings = load_settings(env)
    where = settings.config_path or "no config file (built-in defaults)"
    if settings.warnings:
        count = len(settings.warnings)
        click.echo(f"valid, with {count} warning{'s' if count != 1 else ''}: {where}")
    else:
        click.echo(f"OK: {where}")
    for tool in sorted(settings.actions):
        click.echo(f"{tool}:")
        for line in _policy_lines(settings, tool):
            click.echo(f"  {line}")
    for warning in settings.warnings:
        click.echo(f"warning: {warning}", err=True)
    if strict and settings.warnings:
        sys.exit(1)


def _policy_lines(settings: Settings, tool: str) -> list[str]:
    configured = settings.policies.get(tool)
    lines = []
    if configured is None:
        lines.append(f"default: {policy.DEFAULT_RULE.levels[0].describe()}")
    else:
        for index, rule in enumerate(configured.rules):
            snapshot = policy.Snapshot(rule=index, when=rule.when, approval=rule.approval, levels=rule.levels)
            lines.append(snapshot.describe())
        if configured.rules[-1].when is not None:
            lines.append(f"otherwise the default: {policy.DEFAULT_RULE.levels[0].describe()}")
    lines.append(f"expires after {settings.ttl_for(tool)} s")
    return lines


@policy_group.command()
@click.argument("tool")
@click.argument("arguments")
@refusals
def explain(tool: str, arguments: str) -> None:
    """Which rule applies to TOOL called with ARGUMENTS (a JSON object), and what approvals it needs.

    Example: hitl policy explain buy_stock '{"symbol": "GOOGL", "quantity": 100, "price": 150}'"""
    settings = load()
    action = find(build_actions(settings.actions), tool)
    try:
        raw = json.loads(arguments)
    except json.JSONDecodeError as error:
        raise InvalidArguments(f"arguments: not valid JSON ({error})") from None
    if not isinstance(raw, dict):
        raise InvalidArguments("arguments: must be a JSON object")
    args = action.parse(raw)
    preview = anyio.run(action.preview, args)
    snapshot = policy.select(settings.policies.get(tool), action.policy_values(args, preview))
    click.echo(action.summary(args))
    click.echo(f"applies: {snapshot.describe()}")
    if snapshot.approval == "required":
        for number, level in enumerate(snapshot.levels, start=1):
            escalation = (
                f", escalated after {level.escalate_after_seconds:g} s"
                if level.escalate_after_seconds
                else ""
            )
            click.echo(f"level {number}: {level.describe()}{escalation}")
    click.echo(f"expires after {settings.ttl_for(tool)} s")
