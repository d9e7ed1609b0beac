"""`hitl policy`: check a config file, and explain which rule a request would meet."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import click

from hitl_mcp import display, expr, json_input, policy
from hitl_mcp.actions import Action, build_actions, find
from hitl_mcp.cli.app import main
from hitl_mcp.cli.common import load, refusals
from hitl_mcp.config import Settings, load_settings
from hitl_mcp.errors import ConfigError, InvalidArguments

# How long `check` and `explain` wait for an upstream to start and list its tools.
PROBE_SECONDS = 20.0


@main.group("policy")
def policy_group() -> None:
    """Check the policy in a config file, see which rule a request would meet, and replay the filed calls
    against another policy."""


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
    warnings = list(settings.warnings)
    if settings.upstreams or any("__" in tool for tool in settings.policies):
        warnings += _check_upstreams(settings)
    for warning in warnings:
        click.echo(f"warning: {display.visible(warning)}", err=True)
    if strict and warnings:
        sys.exit(1)


def _check_upstreams(settings: Settings) -> list[str]:
    """Each upstream's tools, read from the upstream itself, and what its `[policy."NAME__TOOL"]`
    tables ask of them: warnings for a tool it does not offer or a name its schema does not have."""
    from hitl_mcp.upstream.state import Status
    from hitl_mcp.upstream.supervisor import probe

    async def probe_all() -> dict[str, Any]:
        return {name: await probe(upstream, PROBE_SECONDS) for name, upstream in settings.upstreams.items()}

    states = anyio.run(probe_all)
    warnings: list[str] = []
    for name, state in states.items():
        if state.status is not Status.READY:
            warnings.append(f"upstreams.{name}: could not be checked: {state.reason}")
            continue
        for listed in state.tools:
            exposure = listed.exposure
            click.echo(f"{exposure.exposed_name}: {exposure.decision} ({exposure.why})")
            if exposure.gated:
                for line in _policy_lines(settings, exposure.exposed_name):
                    click.echo(f"  {line}")
    for tool, configured in settings.policies.items():
        if "__" not in tool:
            continue
        upstream, _, name = tool.partition("__")
        key = f'policy."{tool}"'
        state = states.get(upstream)
        if state is None:
            warnings.append(f"{key}: no upstream {upstream!r} is configured")
            continue
        if state.status is not Status.READY:
            continue
        listed = state.tool(name)
        if listed is None or not listed.exposure.gated:
            why = "does not offer it" if listed is None else "passes it at once, so no policy applies"
            warnings.append(f"{key}: {upstream} {why}")
            continue
        known = frozenset(listed.tool.input_schema.get("properties", {}))
        for index, rule in enumerate(configured.rules):
            if rule.when is not None:
                unknown = sorted(expr.names(expr.parse(rule.when)) - known)
                if unknown:
                    warnings.append(
                        f"{key}.rules[{index}].when: {name} has no argument {unknown[0]!r}; it takes: "
                        f"{', '.join(sorted(known)) or 'no arguments'}"
                    )
    return warnings


def _policy_lines(settings: Settings, tool: str) -> list[str]:
    configured = settings.policies.get(tool)
    lines = []
    if configured is None:
        lines.append(f"default: {policy.DEFAULT_RULE.levels[0].describe()}")
    else:
        for index, rule in enumerate(configured.rules):
            snapshot = policy.Snapshot(
                rule_index=index, when=rule.when, approval=rule.approval, levels=rule.levels
            )
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
    action = (
        find(build_actions(settings.actions), tool) if "__" not in tool else _upstream_action(settings, tool)
    )
    try:
        raw = json_input.loads(arguments)
    except json_input.TooDeep as error:
        raise InvalidArguments(f"arguments: {error}") from None
    except ValueError as error:
        raise InvalidArguments(f"arguments: not valid JSON ({error})") from None
    if not isinstance(raw, dict):
        raise InvalidArguments("arguments: must be a JSON object")
    args = action.parse(raw)
    # An upstream's preview would call the upstream; its rules see only the call's arguments anyway.
    preview = anyio.run(action.preview, args) if "__" not in tool else {}
    snapshot = policy.select(settings.policies.get(tool), action.policy_values(args, preview))
    click.echo(action.summary(args))
    click.echo(f"applies: {snapshot.describe()}")
    if snapshot.needs_decision:
        for number, level in enumerate(snapshot.levels, start=1):
            escalation = (
                f", escalated after {level.escalate_after_seconds:g} s"
                if level.escalate_after_seconds
                else ""
            )
            click.echo(f"level {number}: {level.describe()}{escalation}")
    click.echo(f"expires after {settings.ttl_for(tool)} s")


def _upstream_action(settings: Settings, tool: str) -> Action:  # type: ignore[type-arg]
    """The gated action for an upstream's tool, read from the upstream itself (no session kept)."""
    from hitl_mcp.gateway.action import Offline, upstream_tool
    from hitl_mcp.upstream.state import Status
    from hitl_mcp.upstream.supervisor import probe

    name, _, upstream_name = tool.partition("__")
    upstream = settings.upstreams.get(name)
    if upstream is None:
        known = ", ".join(sorted(settings.upstreams)) or "none"
        raise InvalidArguments(f"tool: no upstream is named {name!r} (configured: {known})")
    state = anyio.run(probe, upstream, PROBE_SECONDS)
    if state.status is not Status.READY:
        raise InvalidArguments(f"tool: {name} could not be reached: {state.reason}")
    listed = state.tool(upstream_name)
    if listed is None or not listed.exposure.gated:
        why = "offers no such tool" if listed is None else "passes it at once (no policy applies)"
        raise InvalidArguments(f"tool: {name} {why}: {upstream_name}")
    return upstream_tool(name, listed.tool, target=state.target)(Offline())


@policy_group.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option(
    "--since", metavar="T", help="Only calls filed at or after T: an ISO date or time, or an age (7d)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@refusals
def simulate(file: Path, since: str | None, as_json: bool) -> None:
    """Replay the calls filed in the store against FILE's policy, beside what the policy in force did.

    FILE is a config file like HITL_CONFIG's; only its [policy.*] tables (and the principals they name)
    are used. Per tool: how many calls would have run at once, needed which levels, been confirmed by
    the requester or denied, and a few examples of each change. Reads the store only; a call the policy
    refused at filing kept no arguments and is not replayed. Exits 2 when FILE is wrong, naming the key."""
    from hitl_mcp.cli.audit import parse_moment, reading
    from hitl_mcp.cli.simulate_view import render
    from hitl_mcp.simulate import simulate as replay

    if not file.is_file():
        raise ConfigError(f"{file}: no such policy file")
    try:
        window = None if since is None else parse_moment(since, time.time())
    except ValueError as error:
        raise InvalidArguments(f"--since: {error}") from None
    other = load_settings({**os.environ, "HITL_CONFIG": str(file)})
    figures = reading(lambda store: replay(store, other.policies, window))
    if as_json:
        click.echo(json.dumps(figures.to_json(), indent=2, ensure_ascii=False))
    else:
        click.echo(render(figures, file))
