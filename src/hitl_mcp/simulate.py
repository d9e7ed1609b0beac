"""`hitl policy simulate`: the filed calls replayed against another policy, beside what the policy in
force made of them.

Each request in the store is judged again from what it recorded — its arguments (as approved, after any
edit) and its preview's values — by the rules of the other policy, exactly as the Gate selects a rule at
filing (`policy.select`), with each `when` parsed once. Its outcome is compared with the rule it met when
filed (the snapshot kept with it): run at once, confirmed by the requester, approved at which levels by
whom, or denied. Only the outcome counts as a change: another rule with the same levels is the same
outcome. A grant that covered a call does not change what its policy asked. Calls the policy refused
at filing kept no arguments, so they are not replayed.

Nothing is written: the store is read a page at a time, in filing order, so 100,000 requests take seconds
and little memory.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from hitl_mcp import expr, policy
from hitl_mcp.store import Store
from hitl_mcp.store.replay import REPLAY_PAGE, Filed

EXAMPLES = 3
AT_ONCE, DENIED, CONFIRM = "at once", "denied", "confirmed by the requester"


@dataclass(frozen=True)
class _Compiled:
    """One `[policy.TOOL]` with each `when` parsed once: (parsed when or None, its outcome) in order, and
    whether any `when` reads the preview (otherwise the stored preview is never parsed)."""

    rules: tuple[tuple[expr.Node | None, str], ...]
    reads_preview: bool
    reads_arguments: bool


def compile_policies(policies: Mapping[str, policy.ActionPolicy]) -> dict[str, _Compiled]:
    from hitl_mcp.actions import registry

    compiled = {}
    for tool, configured in policies.items():
        rules = []
        names: set[str] = set()
        for rule in configured.rules:
            node = None if rule.when is None else expr.parse(rule.when)
            if node is not None:
                names |= expr.names(node)
            rules.append(
                (node, outcome_of(rule.approval, [(level.roles, level.count) for level in rule.levels]))
            )
        action = registry().get(tool)
        preview_names = frozenset(action.preview_types) if action is not None else frozenset()
        compiled[tool] = _Compiled(tuple(rules), bool(names & preview_names), bool(names))
    return compiled


def levels_outcome(levels: Sequence[tuple[Sequence[str], int]]) -> str:
    """Levels in words, as `policy.Level.describe` says them, one after another."""
    steps = ", then ".join(
        policy.Level(roles=tuple(roles), count=count).describe() for roles, count in levels
    )
    return f"needs {steps}"


def outcome_of(approval: str, levels: Sequence[tuple[Sequence[str], int]]) -> str:
    if approval == "none":
        return AT_ONCE
    if approval == "deny":
        return DENIED
    if approval == "confirm":
        return CONFIRM
    return levels_outcome(levels)


def select(compiled: _Compiled | None, values: Mapping[str, object]) -> str:
    """`policy.select`'s choice as an outcome, over rules parsed once; a `when` that fails on these values
    refuses the call at filing, as the Gate would."""
    if compiled is not None:
        for node, outcome in compiled.rules:
            try:
                if node is None or expr.holds(node, values):
                    return outcome
            except expr.ExpressionError as error:
                return f"refused ({error})"
    return DEFAULT_OUTCOME


@lru_cache(maxsize=1024)
def recorded_outcome(text: str) -> str:
    """What the rule a request met at filing asked of it (its stored snapshot, as JSON text: requests
    under one rule share the text, so each is read once)."""
    snapshot = _object(text)
    levels = [
        (tuple(level.get("roles") or ()), int(level.get("count", 1)))
        for level in snapshot.get("levels") or ()
    ]
    return outcome_of(str(snapshot.get("approval", "required")), levels)


def policy_values(tool: str, arguments: Mapping[str, Any], preview: Mapping[str, Any]) -> dict[str, object]:
    """The names a rule sees, as `Action.policy_values` gives them: the preview's declared values, then the
    arguments (stored as their JSON dump), which win a clash. An upstream's tool has no preview values."""
    from hitl_mcp.actions import registry

    action = registry().get(tool)
    names = action.preview_types if action is not None else ()
    values: dict[str, object] = {name: preview[name] for name in names if name in preview}
    values.update(arguments)
    return values


DEFAULT_OUTCOME = outcome_of("required", [(level.roles, level.count) for level in policy.DEFAULT_RULE.levels])


@dataclass
class ToolFigures:
    calls: int = 0
    now: Counter[str] = field(default_factory=Counter)
    would: Counter[str] = field(default_factory=Counter)
    changes: dict[tuple[str, str], list[Filed]] = field(default_factory=dict)
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)

    @property
    def changed(self) -> int:
        return sum(self.counts.values())


@dataclass
class Simulation:
    since: float | None
    tools: dict[str, ToolFigures] = field(default_factory=dict)

    @property
    def calls(self) -> int:
        return sum(figures.calls for figures in self.tools.values())

    @property
    def changed(self) -> int:
        return sum(figures.changed for figures in self.tools.values())

    def add(self, filed: Filed, now: str, would: str) -> None:
        figures = self.tools.setdefault(filed.tool, ToolFigures())
        figures.calls += 1
        figures.now[now] += 1
        figures.would[would] += 1
        if now != would:
            figures.counts[(now, would)] += 1
            examples = figures.changes.setdefault((now, would), [])
            if len(examples) < EXAMPLES:
                examples.append(filed)

    def to_json(self) -> dict[str, Any]:
        from hitl_mcp.models import utc

        return {
            "since": None if self.since is None else utc(self.since).isoformat().replace("+00:00", "Z"),
            "calls": self.calls,
            "changed": self.changed,
            "tools": {
                tool: {
                    "calls": figures.calls,
                    "changed": figures.changed,
                    "now": dict(figures.now.most_common()),
                    "would": dict(figures.would.most_common()),
                    "changes": [
                        {
                            "from": before,
                            "to": after,
                            "calls": count,
                            "examples": [
                                {
                                    "request_id": f.request_id,
                                    "requested_by": f.requested_by,
                                    "summary": f.summary,
                                }
                                for f in figures.changes[(before, after)]
                            ],
                        }
                        for (before, after), count in figures.counts.most_common()
                    ],
                }
                for tool, figures in sorted(self.tools.items())
            },
        }


async def simulate(
    store: Store, policies: Mapping[str, policy.ActionPolicy], since: float | None
) -> Simulation:
    """Every request filed at or after `since` (all when None) judged by `policies`, beside its own rule."""
    compiled = compile_policies(policies)
    result = Simulation(since)
    after = 0
    while page := await store.filed_page(after, since, REPLAY_PAGE):
        for filed in page:
            result.add(filed, *_judge(filed, compiled))
        after = page[-1].seq
    return result


def _judge(filed: Filed, compiled: Mapping[str, _Compiled]) -> tuple[str, str]:
    rules = compiled.get(filed.tool)
    values: dict[str, object] = {}
    if rules is not None and rules.reads_arguments:
        preview = _object(filed.preview) if rules.reads_preview else {}
        values = policy_values(filed.tool, _object(filed.arguments), preview)
    return recorded_outcome(filed.policy), select(rules, values)


def _object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
