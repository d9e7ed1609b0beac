"""Who must approve what: rules from the TOML file, matched against a request's arguments and preview.

A policy is data. The rule that applied is stored with each request (a snapshot), so editing the config
never changes what an open request needs. Approvals are counted against that snapshot, level by level.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from itertools import combinations
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, computed_field, model_validator

from hitl_mcp import expr
from hitl_mcp import levels as level_rules
from hitl_mcp.errors import ConfigError, NotAllowed

# Re-exported: the gate and the models take them from here; `levels` holds them without pydantic.
from hitl_mcp.levels import Approver as Approver
from hitl_mcp.levels import Progress as Progress
from hitl_mcp.levels import progress as progress

if TYPE_CHECKING:
    from hitl_mcp.actions.base import Action

Approval = Literal["required", "none", "deny", "confirm"]


class Level(BaseModel):
    """One step of approval: `count` distinct principals holding any of `roles` (no roles: anyone)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    roles: tuple[str, ...] = ()
    count: int = Field(default=1, ge=1, le=100)
    escalate_after_seconds: float | None = Field(default=None, gt=0)

    def admits(self, roles: Iterable[str]) -> bool:
        return level_rules.admits(self, roles)

    def describe(self) -> str:
        return level_rules.describe(self)


class Rule(BaseModel):
    """`when` (an expression over arguments and preview) selects the rule; the first that holds applies."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    when: str | None = None
    approval: Approval = "required"
    levels: tuple[Level, ...] = ()

    @model_validator(mode="after")
    def _levels_match_approval(self) -> Rule:
        if self.approval == "required" and not self.levels:
            raise ValueError("a rule that needs approval must name its levels, e.g. levels = [{ count = 1 }]")
        if self.approval == "confirm" and self.levels:
            # A confirmation is consent by the requester's person, not separation of duties: it never
            # counts toward a quorum, so the two cannot share a rule.
            raise ValueError(
                'approval = "confirm" takes no levels: a confirmation by the requester never counts toward '
                "levels; put the levels in a rule of their own"
            )
        if self.approval != "required" and self.levels:
            raise ValueError(f'approval = "{self.approval}" takes no levels')
        return self


class ActionPolicy(BaseModel):
    """One `[policy.TOOL]` table."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rules: tuple[Rule, ...] = Field(min_length=1)
    ttl_seconds: int | None = Field(default=None, gt=0, le=366 * 86_400)


DEFAULT_RULE = Rule(levels=(Level(),))


class Snapshot(BaseModel):
    """The rule that applied to one request, kept with it."""

    model_config = ConfigDict(frozen=True)

    rule_index: int | None = Field(
        description="0-based index of the rule in [policy.TOOL].rules (the key `rules[N]` names it); null "
        "for the default"
    )
    when: str | None = None
    approval: Approval
    levels: tuple[Level, ...] = ()
    grant: str | None = Field(
        default=None,
        description="The standing approval (grant) that covered this call, which then ran without waiting",
    )

    @computed_field(  # type: ignore[prop-decorator]
        description="The rule's number as people read it (`rule 1` is the first); null for the default"
    )
    @property
    def rule(self) -> int | None:
        return None if self.rule_index is None else self.rule_index + 1

    @model_validator(mode="before")
    @classmethod
    def _stored_index(cls, data: Any) -> Any:
        # Snapshots stored before `rule_index` existed hold the 0-based index as `rule`; newer ones store
        # `rule` as the computed number beside `rule_index`, which alone is read back.
        if isinstance(data, dict) and "rule" in data:
            data = dict(data)
            number_or_index = data.pop("rule")
            data.setdefault("rule_index", number_or_index)
        return data

    @property
    def needs_decision(self) -> bool:
        """Whether the request waits on levels (a confirm rule's does, until its requester confirms)."""
        return self.approval in level_rules.NEEDS_DECISION

    def describe(self) -> str:
        source = "the default policy" if self.rule is None else f"rule {self.rule}"
        condition = f" (when {self.when})" if self.when else ""
        if self.grant is not None:
            return f"{source}{condition}: covered by grant {self.grant}"
        if self.approval == "none":
            return f"{source}{condition}: no approval needed"
        if self.approval == "deny":
            return f"{source}{condition}: denied"
        if self.approval == "confirm":
            return (
                f"{source}{condition}: the requester confirms through their client, or else "
                f"{(self.levels or DEFAULT_RULE.levels)[0].describe()} (a confirmation is consent, never a "
                "counted approval)"
            )
        steps = ", then ".join(level.describe() for level in self.levels)
        return f"{source}{condition}: {steps}"


def load_policies(
    raw: Any, principals: Mapping[str, Any], upstreams: Collection[str] = ()
) -> dict[str, ActionPolicy]:
    """Validate every `[policy.TOOL]`; expressions are parsed now so a bad one stops the start.

    TOOL is a registered action, or `UPSTREAM__TOOL`, an upstream's: its tools are known only once it
    runs, so the names a `when` uses are checked then (`hitl policy check` asks it)."""
    from hitl_mcp.actions import registry

    action_types = registry()
    if not isinstance(raw, dict):
        raise ConfigError("policy: must be a table of [policy.TOOL] tables")
    known_roles = {role for principal in principals.values() for role in principal.roles}
    policies = {}
    for tool, table in raw.items():
        # `hitl serve --upstreams FILE` may add the upstream after this file is read: any `NAME__TOOL`
        # is an upstream's tool; `hitl policy check` says when none such is offered.
        upstream_tool = "__" in tool
        if tool not in action_types and not upstream_tool:
            known = ", ".join([*sorted(action_types), *(f"{name}__TOOL" for name in sorted(upstreams))])
            raise ConfigError(f"policy.{tool}: no such action; known: {known}")
        if not isinstance(table, dict):
            raise ConfigError(f"policy.{tool}: must be a table")
        try:
            policy = ActionPolicy.model_validate(table)
        except ValidationError as error:
            from hitl_mcp.actions.base import describe_validation_error

            raise ConfigError(describe_validation_error(error, prefix=f"policy.{tool}.")) from None
        names = None if upstream_tool else action_types[tool].policy_names()
        for index, rule in enumerate(policy.rules):
            where = f"policy.{tool}.rules[{index}]"
            if rule.when is not None:
                _check_expression(rule.when, names, f"{where}.when")
            for number, level in enumerate(rule.levels):
                missing = [role for role in level.roles if role not in known_roles]
                if missing:
                    raise ConfigError(
                        f"{where}.levels[{number}].roles: no principal holds role {missing[0]!r}, so this "
                        "level could never be satisfied; give a [principals.NAME] that role"
                    )
        policies[tool] = policy
    return policies


def _check_expression(text: str, names: frozenset[str] | None, key: str) -> None:
    """Parse `text`; with `names`, refuse any other name. (None: names known only later.)"""
    try:
        node = expr.parse(text)
    except expr.ExpressionError as error:
        raise ConfigError(f"{key}: {error}") from None
    if names is None:
        return
    unknown = sorted(expr.names(node) - names)
    if unknown:
        raise ConfigError(
            f"{key}: unknown name {unknown[0]!r} in {text!r}; rules can use: {', '.join(sorted(names))}"
        )


def policy_warnings(policies: Mapping[str, ActionPolicy], principals: Mapping[str, Any]) -> list[str]:
    """What loads but cannot work as written, each naming its key like a load error: a rule no call reaches,
    a `when` that fails on every call that reaches it, a level too few principals can fill."""
    from hitl_mcp.actions import registry

    warnings: list[str] = []
    for tool, policy in policies.items():
        action = registry().get(tool)
        # An upstream's tool: its argument types come from its schema once it runs; only levels now.
        types = _name_types(action) if action is not None else None
        for index, rule in enumerate(policy.rules):
            where = f"policy.{tool}.rules[{index}]"
            earlier = next((i for i, r in enumerate(policy.rules[:index]) if r.when is None), None)
            if earlier is not None:
                warnings.append(
                    f"{where}: never applies: rules[{earlier}] has no `when`, so that rule applies to every "
                    "call first"
                )
            if rule.when is not None and types is not None:
                warnings.extend(_when_warnings(rule.when, types, f"{where}.when"))
            warnings.extend(_level_warnings(rule.levels, principals, where))
    return warnings


def _name_types(action: type[Action]) -> dict[str, expr.ValueType]:  # type: ignore[type-arg]
    """The type of each name a rule may use: preview values, then arguments, which `policy_values` lets
    win a clash. Arguments are as `model_dump(mode="json")` gives them; `expr.value_type` knows which."""
    types = {name: expr.value_type(python_type) for name, python_type in action.preview_types.items()}
    for name, field in action.arguments_model.model_fields.items():
        types[name] = expr.value_type(field.annotation)
    return types


def _when_warnings(text: str, types: Mapping[str, expr.ValueType], key: str) -> Iterator[str]:
    node = expr.parse(text)
    problems = expr.type_problems(node, types)
    for problem in problems:
        if problem.when is None:
            yield f"{key}: {problem.message}; every call that reaches this rule would be refused"
        else:
            yield f"{key}: {problem.message}; a call that reaches this rule is refused {problem.when}"
    if problems or expr.names(node):
        return
    try:
        constant = expr.holds(node, {})
    except expr.ExpressionError as error:
        yield f"{key}: {error}; every call that reaches this rule would be refused"
        return
    if not constant:
        yield f"{key}: {text!r} names no argument and is never true, so this rule never applies"


def _level_warnings(levels: Sequence[Level], principals: Mapping[str, Any], where: str) -> Iterator[str]:
    """Levels that need more distinct principals holding their roles than the config has. A principal
    counts once per request, at one level, so levels drawing on the same people are judged together."""
    holders = [
        frozenset(name for name, known in principals.items() if level.admits(known.roles))
        if level.roles
        else None
        for level in levels
    ]
    for number, (level, who) in enumerate(zip(levels, holders, strict=True)):
        if who is not None and level.count > len(who):
            yield (
                f"{where}.levels[{number}].count: needs {level.count} distinct principals holding "
                f"{' or '.join(level.roles)} but only {len(who)} {'does' if len(who) == 1 else 'do'} "
                f"({', '.join(sorted(who))}), so this level can never be satisfied"
            )
    restricted = [(number, who) for number, who in enumerate(holders) if who is not None]
    if any(levels[number].count > len(who) for number, who in restricted) or len(restricted) > 8:
        return
    # Hall's condition: every group of levels needs at least as many distinct principals as its counts add up.
    for size in range(2, len(restricted) + 1):
        for group in combinations(restricted, size):
            needed = sum(levels[number].count for number, _ in group)
            able = frozenset().union(*(who for _, who in group))
            if needed > len(able):
                numbers = " and ".join(f"levels[{number}]" for number, _ in group)
                yield (
                    f"{where}.levels: {numbers} together need {needed} distinct principals but only "
                    f"{len(able)} hold their roles ({', '.join(sorted(able))}); a principal counts once per "
                    "request, so these levels can never all be satisfied"
                )
                return


def select(policy: ActionPolicy | None, values: Mapping[str, object]) -> Snapshot:
    """The first rule whose `when` holds, as a snapshot; the default when none does."""
    if policy is not None:
        for index, rule in enumerate(policy.rules):
            if rule.when is None or expr.holds(expr.parse(rule.when), values):
                # Unconfirmed, a confirm rule's request waits like the default one: one approval by anyone
                # but the requester.
                levels = DEFAULT_RULE.levels if rule.approval == "confirm" else rule.levels
                return Snapshot(rule_index=index, when=rule.when, approval=rule.approval, levels=levels)
    return Snapshot(rule_index=None, approval=DEFAULT_RULE.approval, levels=DEFAULT_RULE.levels)


def check_eligible(
    snapshot: Snapshot, waiting_on: int, principal: str, roles: Sequence[str], request_id: str
) -> None:
    """Refuse a decider whose roles the level the request waits on does not admit."""
    level = snapshot.levels[waiting_on]
    if level.admits(roles):
        return
    held = ", ".join(roles) if roles else "no roles"
    raise NotAllowed(
        f"request {request_id} waits on level {waiting_on + 1} of {len(snapshot.levels)}, which needs "
        f"{' or '.join(level.roles)}; {principal} holds {held}"
    )
