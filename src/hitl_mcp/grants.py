"""Standing approvals: what a grant is, and the rules it lives by.

A grant is a policy decision made at run time by people who could approve the calls it covers: one tool,
one requester principal, a `when` over the call's arguments and preview values (or, said explicitly, any
arguments), a mandatory expiry under `[grants] max_seconds`, an optional count of uses, revocable.

Everything here is pure: the store runs `plan_approval` and `plan_revocation` inside the transaction that
applies them, on the grant as it stands then, as it does with a request's decision (`decisions.plan`).
"""

from __future__ import annotations

import json
import re
import secrets
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from hitl_mcp import expr
from hitl_mcp.config import fold_principal
from hitl_mcp.errors import HitlError, InvalidArguments, NotAllowed, NotFound, NotPending
from hitl_mcp.policy import DEFAULT_RULE, ActionPolicy, Approver, Level, Snapshot, progress

GRANT_CREATED = "grant-created"
GRANT_APPROVED = "grant-approved"
GRANT_REVOKED = "grant-revoked"
GRANTED = "granted"
"""The audit event of a call a grant covered: on the request's trail, naming the grant."""

State = Literal["waiting", "active", "revoked"]
"""What the store keeps; `GrantStatus` adds what time and use make of it."""
GrantStatus = Literal["waiting", "active", "expired", "revoked", "used-up"]
FINISHED: frozenset[GrantStatus] = frozenset({"expired", "revoked", "used-up"})

ID_PATTERN = re.compile(r"^g[0-9a-f]{1,16}$")
REASON_MAX = 500
REQUESTER_MAX = 64
LIFETIME = re.compile(r"([0-9]{1,7})([smhd])")
LIFETIME_UNITS = {"s": 1, "m": 60, "h": 3_600, "d": 86_400}


class GrantUnavailable(HitlError):
    """The grant a call was about to use was revoked, expired or used up in the meantime: nothing was filed
    under it, and the call goes on as if it had not been there."""


def new_grant_id() -> str:
    # A leading letter keeps grant ids apart from request ids (hex only) on the shared audit trail.
    return f"g{secrets.token_hex(8)}"


@dataclass(frozen=True)
class Need:
    """The approvals one rule a grant's scope can reach asks for: its levels, as a request under it would."""

    rule: str
    levels: tuple[Level, ...]

    def as_json(self) -> dict[str, Any]:
        return {"rule": self.rule, "levels": [level.model_dump(mode="json") for level in self.levels]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Need:
        return cls(str(data["rule"]), tuple(Level.model_validate(level) for level in data["levels"]))


@dataclass(frozen=True)
class Grant:
    id: str
    tool: str
    requester: str
    when: str | None
    any_arguments: bool
    created_by: str
    created_at: float
    expires_at: float
    uses: int | None
    """How many calls it may cover in all; None: any number until it expires."""
    uses_left: int | None
    uses_made: int
    state: State
    approvers: tuple[Approver, ...]
    needs: tuple[Need, ...]
    reason: str | None = None
    revoked_by: str | None = None
    revoked_at: float | None = None
    status: GrantStatus = "waiting"
    """As of when it was read: `state`, unless it has since expired or been used up."""

    def at(self, now: float) -> Grant:
        """The grant with its status as of `now`."""
        status: GrantStatus
        if self.state == "revoked":
            status = "revoked"
        elif self.expires_at <= now:
            status = "expired"
        elif self.uses_left is not None and self.uses_left <= 0:
            status = "used-up"
        else:
            status = self.state
        return replace(self, status=status)

    @property
    def levels_needed(self) -> tuple[str, ...]:
        """What each rule it can reach still waits on, one line each; empty once complete."""
        waiting = []
        for need in self.needs:
            after = progress(need.levels, self.approvers)
            if after.waiting_on is not None:
                level = need.levels[after.waiting_on]
                waiting.append(
                    f"{need.rule}: level {after.waiting_on + 1} of {len(need.levels)}, {level.describe()}"
                )
        return tuple(waiting)

    @property
    def scope(self) -> str:
        """The calls it covers, in one line: `buy_stock from agent when symbol = 'GOOGL'`."""
        what = "with any arguments" if self.any_arguments else f"when {self.when}"
        return f"{self.tool} from {self.requester} {what}"

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tool": self.tool,
            "requester": self.requester,
            "when": self.when,
            "any_arguments": self.any_arguments,
            "status": self.status,
            "created_by": self.created_by,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "uses": self.uses,
            "uses_left": self.uses_left,
            "uses_made": self.uses_made,
            "approved_by": [approver.principal for approver in self.approvers],
            "levels_needed": list(self.levels_needed),
            "reason": self.reason,
            "revoked_by": self.revoked_by,
            "revoked_at": self.revoked_at,
        }


def approvers_json(approvers: Sequence[Approver]) -> str:
    return json.dumps([{"principal": a.principal, "roles": list(a.roles)} for a in approvers])


def approvers_of(text: str) -> tuple[Approver, ...]:
    return tuple(Approver(item["principal"], tuple(item["roles"])) for item in json.loads(text))


def needs_json(needs: Sequence[Need]) -> str:
    return json.dumps([need.as_json() for need in needs])


def needs_of(text: str) -> tuple[Need, ...]:
    return tuple(Need.from_json(item) for item in json.loads(text))


# -- the rules of making one ------------------------------------------------------------------------


def check_id(ref: str) -> str:
    grant_id = ref.strip().lower()
    if not ID_PATTERN.fullmatch(grant_id):
        raise NotFound(
            f"{ref[:40]!r} is not a grant id (a g followed by hex digits, as `hitl grants list` shows)"
        )
    return grant_id


def check_scope(when: str | None, any_arguments: bool, names: frozenset[str] | None) -> str | None:
    """The grant's `when`, parsed and checked against the names a rule of its tool may use (None: an
    upstream's tool not running yet), or a refusal: covering every argument must be said explicitly."""
    if when is not None and not when.strip():
        when = None
    if when is not None and any_arguments:
        raise InvalidArguments("when: give a `when` or --any-arguments, not both")
    if when is None:
        if any_arguments:
            return None
        raise InvalidArguments(
            "when: a grant needs a `when` over the call's arguments (e.g. \"symbol = 'GOOGL' AND quantity <= "
            '10"); to cover every argument, say --any-arguments'
        )
    _check_printable(when, "when")
    try:
        node = expr.parse(when)
    except expr.ExpressionError as error:
        raise InvalidArguments(f"when: {error}") from None
    unknown = sorted(expr.names(node) - names) if names is not None else []
    if unknown:
        raise InvalidArguments(
            f"when: unknown name {unknown[0]!r} in {when!r}; a grant's `when` can use: "
            f"{', '.join(sorted(names or ()))}"
        )
    return when.strip()


def check_expiry(seconds: float, cap: int) -> float:
    """The grant's lifetime, or a refusal that says the cap: a longer one is never cut short quietly."""
    if not seconds > 0:
        raise InvalidArguments("expires: a grant must expire; give a lifetime such as 2h or 1d")
    if seconds > cap:
        raise InvalidArguments(
            f"expires: {describe_seconds(seconds)} is above the cap of {describe_seconds(cap)} "
            f"([grants] max_seconds = {cap}); nothing was granted"
        )
    return seconds


def parse_lifetime(text: str, field: str = "expires") -> float:
    """Seconds from `90m`, `2h`, `7d` (or `45s`): a grant's lifetime, which is never `never`."""
    matched = LIFETIME.fullmatch(text.strip().lower())
    if matched is None:
        raise InvalidArguments(
            f"{field}: {text[:40]!r} is not a lifetime: a number of days, hours, minutes or seconds such as "
            "7d, 2h, 30m; a grant must expire"
        )
    return float(int(matched[1]) * LIFETIME_UNITS[matched[2]])


def check_uses(uses: int | None) -> int | None:
    if uses is not None and uses < 1:
        raise InvalidArguments("uses: a grant covers at least 1 call; leave --uses out for any number")
    return uses


def check_reason(reason: str | None) -> str | None:
    if reason is None or not reason.strip():
        return None
    if len(reason) > REASON_MAX:
        raise InvalidArguments(f"reason: at most {REASON_MAX} characters")
    _check_printable(reason, "reason")
    return reason.strip()


def _check_printable(text: str, field: str) -> None:
    # Shown in terminals and pages, and kept as plain text by both stores: no control characters at all.
    if any(unicodedata.category(char) == "Cc" for char in text):
        raise InvalidArguments(f"{field}: control characters (newlines, tabs, escapes) are not allowed")


def check_requester(requester: str, by: str) -> str:
    from hitl_mcp.config import PRINCIPAL_PATTERN

    if not PRINCIPAL_PATTERN.fullmatch(requester):
        raise InvalidArguments(
            f"requester: {requester[:80]!r} is not a principal name (letters, digits and . _ @ + -, at most "
            f"{REQUESTER_MAX} characters)"
        )
    if fold_principal(requester) == fold_principal(by):
        raise NotAllowed(f"{by} would grant itself: the requester can never grant its own calls")
    return fold_principal(requester)


def describe_seconds(seconds: float) -> str:
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def needs(policy: ActionPolicy | None) -> tuple[Need, ...]:
    """The approvals of every rule a call of the tool can reach that needs one: the rules up to the first
    without a `when`, and the default when every rule has one. Rules that need none or deny are skipped
    (deny beats every grant at each call).

    Every reachable rule counts, not only those the grant's `when` can meet: whether two expressions can
    both hold is not decided here, so the grant is held to the strictest reading."""
    rules = policy.rules if policy is not None else ()
    found: list[Need] = []
    for index, rule in enumerate(rules):
        if rule.approval in ("required", "confirm"):
            # A confirm rule's call waits, unconfirmed, on the default level (`policy.select`).
            levels = DEFAULT_RULE.levels if rule.approval == "confirm" else rule.levels
            condition = f" (when {rule.when})" if rule.when else ""
            found.append(Need(f"rule {index + 1}{condition}", levels))
        if rule.when is None:
            return tuple(found)
    return (*found, Need("the default policy", DEFAULT_RULE.levels))


def plan_creation(
    *, needs_found: Sequence[Need], by: str, roles: Sequence[str], tool: str
) -> tuple[tuple[Approver, ...], State]:
    """The creator counts as the first approver; it must be eligible for the first level of every rule
    the grant can reach. The grant waits while any rule needs more levels."""
    if not needs_found:
        raise InvalidArguments(
            f"tool: every rule of {tool}'s policy a call can reach needs no approval or is denied; a grant "
            "would cover nothing"
        )
    for need in needs_found:
        first = need.levels[0]
        if not first.admits(roles):
            held = ", ".join(roles) if roles else "no roles"
            raise NotAllowed(
                f"{need.rule} needs {first.describe()} at its first level; {by} holds {held}, so {by} cannot "
                "grant what it could not approve"
            )
    approvers = (Approver(by, tuple(roles)),)
    return approvers, state_of(needs_found, approvers)


def state_of(needs_found: Sequence[Need], approvers: Sequence[Approver]) -> State:
    complete = all(progress(need.levels, approvers).complete for need in needs_found)
    return "active" if complete else "waiting"


def plan_approval(grant: Grant, *, by: str, roles: Sequence[str], now: float) -> Grant:
    """A further level's approval of a waiting grant, judged on the grant as it stands in the transaction."""
    me = fold_principal(by)
    if fold_principal(grant.requester) == me:
        raise NotAllowed(f"{by} is the grant's requester: the requester can never grant its own calls")
    current = grant.at(now)
    if current.status != "waiting":
        raise NotPending(
            f"grant {grant.id} is {current.status}, not waiting on approvals; nothing was changed"
        )
    if any(fold_principal(approver.principal) == me for approver in grant.approvers):
        raise NotAllowed(f"{by} has already approved grant {grant.id}; a principal counts once")
    approvers = (*grant.approvers, Approver(by, tuple(roles)))
    before = [progress(need.levels, grant.approvers).counted for need in grant.needs]
    after = [progress(need.levels, approvers).counted for need in grant.needs]
    if before == after:
        held = ", ".join(roles) if roles else "no roles"
        waiting = "; ".join(grant.levels_needed)
        raise NotAllowed(f"grant {grant.id} waits on {waiting}; {by} holds {held}")
    return replace(grant, approvers=approvers, state=state_of(grant.needs, approvers))


def plan_revocation(grant: Grant, *, by: str, roles: Sequence[str], now: float) -> Grant:
    """Its creator, anyone who approved it, or anyone who could have made it may revoke it, while it is
    waiting or active: a revoked grant covers nothing from the next call on."""
    current = grant.at(now)
    if current.status in FINISHED:
        raise NotPending(f"grant {grant.id} is {current.status} already; nothing was changed")
    me = fold_principal(by)
    involved = any(fold_principal(approver.principal) == me for approver in grant.approvers)
    eligible = any(need.levels[0].admits(roles) for need in grant.needs)
    if not involved and not eligible:
        held = ", ".join(roles) if roles else "no roles"
        raise NotAllowed(
            f"{by} holds {held}: only the grant's approvers or someone who could have made it may revoke it"
        )
    return replace(grant, state="revoked", revoked_by=by, revoked_at=now)


def covers(
    grant: Grant, *, tool: str, requester: str, values: Mapping[str, object], snapshot: Snapshot, now: float
) -> bool:
    """Whether the grant covers one call that `snapshot` (the rule the call selects now) would have made
    wait: the same tool and requester, its `when` holds, and its approvers complete that rule's levels —
    so a policy made stricter after the grant was approved is not bypassed by it."""
    current = grant.at(now)
    if current.status != "active" or grant.tool != tool:
        return False
    if fold_principal(grant.requester) != fold_principal(requester):
        return False
    if not snapshot.needs_decision or not progress(snapshot.levels, grant.approvers).complete:
        return False
    if grant.any_arguments:
        return True
    if grant.when is None:
        return False
    try:
        return expr.holds(expr.parse(grant.when), values)
    except expr.ExpressionError:
        # A `when` that cannot be judged on this call (a value of another type) covers nothing.
        return False


def granted_snapshot(snapshot: Snapshot, grant_id: str) -> Snapshot:
    """The rule a covered call selected, approved by the grant: it runs at once and its record names it."""
    return snapshot.model_copy(update={"approval": "none", "levels": (), "grant": grant_id})
