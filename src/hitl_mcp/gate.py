"""The request lifecycle: file, decide, claim, execute, expire, cancel — the only writer of a status."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import hashlib
import json
import logging
import math
import os
import random
import re
import secrets
import socket
import sys
import time
import unicodedata
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import anyio

from hitl_mcp import decisions, logs, policy, queue_rows, tracing
from hitl_mcp.actions import Action, Execution, find
from hitl_mcp.actions.base import describe_target
from hitl_mcp.config import Settings
from hitl_mcp.decisions import escalation_time
from hitl_mcp.errors import (
    ActionFailed,
    AmbiguousId,
    Effect,
    Expired,
    HitlError,
    InvalidArguments,
    NotAllowed,
    NotFound,
    NotPending,
    OutcomeUnknown,
    StoreUnavailable,
)
from hitl_mcp.grants import Grant
from hitl_mcp.grants_gate import GateGrants
from hitl_mcp.metrics import PROCESS
from hitl_mcp.models import Change, Request, RequestPage, Status
from hitl_mcp.store import (
    ClaimFor,
    DenialPage,
    Edit,
    NewRequest,
    Planner,
    Store,
    SummaryRows,
    wait_for_change,
)
from hitl_mcp.store.outage import outage_of

logger = logging.getLogger(__name__)

ID_BYTES = 10
ID_PATTERN = re.compile(rf"^[0-9a-f]{{1,{ID_BYTES * 2}}}$")
UNDECIDED = frozenset({Status.PENDING, Status.APPROVED, Status.EXECUTING})
OPEN_STATUSES = (Status.PENDING,)
MAX_PAGE = queue_rows.MAX_PAGE
# Cursors are row numbers this server handed out; anything else (or anything SQLite's integers can't hold)
# is refused before it reaches SQL.
CURSOR_PATTERN = re.compile(r"[0-9]{1,18}")

ProgressFn = Callable[[float, float], Awaitable[None]]
IDEMPOTENCY_KEY_MAX = 200
# With no change to wake it, the runner of approved requests looks again this often anyway.
RUNNER_IDLE_SECONDS = 5.0
RUNNER_COALESCE_SECONDS = 0.02
RUNNER_BATCH = 100
# A call approved at filing (a grant, `approval = "none"`) that another server's runner claimed first: the
# call waits this long for that run's outcome before it answers with the request as it stands.
AT_ONCE_WAIT_SECONDS = 30.0
# An outcome the store would not take is tried again after this, doubling up to the cap; each wait is
# jittered so that servers sharing a store that comes back do not all write in the same instant.
RECORD_RETRY_FIRST_SECONDS = 0.1
RECORD_RETRY_MAX_SECONDS = 2.0
# How long a stopping process gives its last try at each outcome it still holds.
RECORD_LAST_TRY_SECONDS = 10.0

# A test seam, inert unless this variable is set: the crash suite (tests/test_crash.py) names a point of
# `Gate.execute` — before-claim, after-claim or after-action (before the outcome is recorded) — and a process
# that reaches it says so on stderr and stops there to be killed. It never resumes: left alone, it exits as
# if it had crashed.
TEST_PAUSE_AT = "HITL_TEST_PAUSE_AT"
TEST_PAUSE_SECONDS = 60.0


def _test_pause(point: str, request_id: str) -> None:
    if os.environ.get(TEST_PAUSE_AT) != point:
        return
    sys.stderr.write(f"hitl-test-pause: {point} {request_id} {os.getpid()}\n")
    sys.stderr.flush()
    time.sleep(TEST_PAUSE_SECONDS)
    os._exit(70)


def new_request_id() -> str:
    return secrets.token_hex(ID_BYTES)


def arguments_digest(tool: str, arguments: Mapping[str, Any]) -> str:
    canonical = json.dumps({"tool": tool, "arguments": arguments}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def canonical_json(value: Any) -> str:
    """The one text a value is stored and compared as (a target, say)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class Outcome:
    """How one run of an action ended: `status` None when it was handed over and then lost."""

    status: Status | None
    result: dict[str, Any] | None
    error: str | None
    effect: Effect | None


@dataclass(frozen=True)
class Held:
    """An outcome this process knows and the store has not taken yet: the record as claimed, how the run
    ended, why the store refused it last, and since when (epoch seconds)."""

    claimed: Request
    outcome: Outcome
    reason: str
    since: float

    def describe(self, worker: str) -> str:
        """Who is recording what, for every face: "executed; recording the outcome: <why> — …"."""
        if self.outcome.status is Status.EXECUTED:
            what = "executed"
        elif self.outcome.status is Status.FAILED:
            what = f"failed ({self.outcome.error})"
        else:
            what = "handed over, then lost (outcome unknown)"
        since = datetime.fromtimestamp(self.since, UTC).isoformat(timespec="seconds")
        return f"{what}; recording the outcome: {self.reason} — {worker} keeps trying (since {since})"

    def shown(self, request: Request, worker: str) -> Request:
        """`request` (executing, as stored) with what this process knows of it."""
        lost = self.outcome.status is None
        return request.model_copy(
            update={
                "recording": self.describe(worker),
                "result": self.outcome.result,
                "error": self.outcome.error,
                "effect": self.outcome.effect,
                # A lost hand-over is of unknown outcome now: a person may settle it meanwhile.
                "outcome_unknown": lost or request.outcome_unknown,
            }
        )


@dataclass(frozen=True)
class Filing:
    """What one gated call did: filed `request`, or — `repeated` — found the earlier request it repeats
    and filed nothing (`by_key`: its idempotency key; else the same call while that one is pending)."""

    request: Request
    repeated: bool = False
    by_key: bool = False


@contextmanager
def _unless_stored(what: str) -> Iterator[None]:
    """A store fault says what did not happen because of it: "the disk is full; nothing was filed"."""
    try:
        yield
    except StoreUnavailable as fault:
        raise fault.nothing(what) from None


class Gate:
    def __init__(
        self,
        store: Store,
        actions: Mapping[str, Action],  # type: ignore[type-arg]
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.actions = actions
        self.settings = settings
        self.clock = clock
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self._changed = anyio.Event()
        self.targets: dict[str, dict[str, str]] = {}
        self._stored_targets: dict[str, str] = {}
        self.actions_changed()
        # Requests this gate is deciding and will run itself: its runner leaves them alone.
        self._running_here: set[str] = set()
        # Outcomes of actions this process ran that the store has not taken yet (see `_record`).
        self._held: dict[str, Held] = {}
        # The tasks recording them, while `recording` runs; None otherwise (the runner then waits for it).
        self._recorder: set[asyncio.Task[None]] | None = None
        self.outage = outage_of(store)
        self._grants = GateGrants(store, settings, clock, self.roles_of)

    def actions_changed(self) -> None:
        """Take in actions added, replaced or removed since (an upstream's tools come and go) and wake
        whatever waits for approved requests this process may now run."""
        self.targets = {name: action.target() for name, action in self.actions.items()}
        self._stored_targets = {name: canonical_json(target) for name, target in self.targets.items()}
        self._signal()

    def _runnable_targets(self) -> str:
        """What `claim` compares a request's stored target with, for every tool this process can run now."""
        return canonical_json(
            {
                name: target
                for name, target in self._stored_targets.items()
                if (action := self.actions.get(name)) is not None and action.ready()
            }
        )

    # -- filing ----------------------------------------------------------------------------------

    async def file(self, tool: str, arguments: Mapping[str, Any], principal: str) -> Request:
        """Validate, preview and store a request. Runs nothing unless the policy needs no approval.

        Bad input raises `InvalidArguments` and writes nothing; a policy denial is audited and refused."""
        return (await self.file_call(tool, arguments, principal)).request

    async def file_call(
        self,
        tool: str,
        arguments: Mapping[str, Any],
        principal: str,
        *,
        idempotency_key: object = None,
    ) -> Filing:
        """`file`, saying whether the call repeats an earlier one, which is then returned instead: the same
        `idempotency_key` from the same principal, or the same tool and arguments while that request is
        pending and younger than `[gate] dedup_seconds`. An agent whose call timed out retries it."""
        started = tracing.now_ns()
        action = self._action(tool)
        key = _checked_idempotency_key(idempotency_key)
        args = action.parse(arguments)
        preview = await action.preview(args)
        values = action.policy_values(args, preview)
        snapshot = policy.select(self.settings.policies.get(tool), values)
        normalised = args.model_dump(mode="json")
        digest = arguments_digest(tool, normalised)
        now = self.clock()
        request_id = new_request_id()
        if snapshot.approval == "deny":
            details = {"arguments_digest": digest, "policy": snapshot.describe()}
            with _unless_stored("nothing was filed"):
                await self.store.record_event(request_id, "denied", principal, {"tool": tool, **details}, now)
            raise NotAllowed(
                f"the policy for {tool} refuses this request ({snapshot.describe()}); nothing was filed"
            )
        window = self.settings.gate.dedup_seconds
        new = NewRequest(
            request_id=request_id,
            tool=tool,
            arguments=normalised,
            arguments_digest=digest,
            summary=action.summary(args),
            preview=preview,
            requested_by=principal,
            created_at=now,
            expires_at=now + self.settings.ttl_for(tool),
            policy=snapshot,
            escalate_at=escalation_time(snapshot, 0 if snapshot.levels else None, now),
            target=self._stored_targets[tool],
            idempotency_key=key,
            dedup_since=now - window if window > 0 else None,
            traceparent=tracing.traceparent(),
        )
        # A call the policy approves at once is run by this call, not by this gate's runner, which the
        # insert wakes: otherwise the runner may claim it first and the agent hear "executing" instead of
        # the outcome.
        self._running_here.add(request_id)
        try:
            with _unless_stored("nothing was filed"):
                # Deny rules were refused above: no grant covers what the policy denies.
                covering = await self._grants.covering(tool, principal, values, snapshot, now)
                filed = await self._grants.file(new, covering)
            tracing.filed(filed, started)
            if filed.request_id != request_id:
                return Filing(self._observed(filed), repeated=True, by_key=key is not None)
            self._signal()
            logs.request_event(logger, filed, "filed", principal)
            if filed.status is Status.APPROVED:
                ran = await self.execute(request_id)
                if ran.status is Status.EXECUTING and request_id not in self._held:
                    # Another server's runner, woken by the insert, won the claim (an outcome this gate
                    # ran and holds is the other case): the agent still hears the outcome, not
                    # "executing", unless that run outlasts the wait.
                    ran = await self.wait(request_id, AT_ONCE_WAIT_SECONDS)
                return Filing(ran)
            return Filing(filed)
        finally:
            self._running_here.discard(request_id)

    async def record_pass(self, tool: str, arguments: Mapping[str, Any], principal: str) -> str:
        """Audit a call forwarded at once to an upstream (no request): who and what. Written while the
        call is on its way, so it cannot say how it went (`record_pass_outcome` adds a bad outcome).
        Returns the record's id."""
        pass_id = new_request_id()
        digest = arguments_digest(tool, arguments)
        details = {"tool": tool, "arguments_digest": digest, "outcome": "forwarded"}
        await self.store.record_event(pass_id, "passed", principal, details, self.clock())
        return pass_id

    async def record_pass_outcome(self, pass_id: str, tool: str, principal: str, outcome: str) -> None:
        """Audit how a passed call went wrong (an error answer, or none), on its `passed` record's id: only
        the error paths pay this second commit; a pass without it was answered."""
        details = {"tool": tool, "outcome": outcome}
        await self.store.record_event(pass_id, "pass-outcome", principal, details, self.clock())

    # -- grants: standing approvals (hitl_mcp.grants) -------------------------------------------------

    async def add_grant(
        self,
        tool: str,
        requester: str,
        when: str | None,
        any_arguments: bool,
        expires_in: timedelta,
        uses: int | None,
        reason: str | None,
        by: str,
        roles: Sequence[str] = (),
    ) -> Grant:
        """Grant `requester` calls of `tool` whose arguments meet `when` (or any, said explicitly) until it
        expires: they then run at once. `by` must be eligible for the first level of every rule the scope
        can reach; the grant waits on any further levels (`approve_grant`). Audited `grant-created`."""
        action = self._action(tool)
        with _unless_stored("nothing was granted"):
            grant = await self._grants.add(
                action, tool, requester, when, any_arguments, expires_in, uses, reason, by, roles
            )
        self._signal()
        return grant

    async def approve_grant(self, grant_id: str, by: str, roles: Sequence[str] = ()) -> Grant:
        """A further level's approval of a waiting grant; it covers calls once every level is in."""
        with _unless_stored("nothing was changed"):
            grant = await self._grants.approve(grant_id, by, roles)
        self._signal()
        return grant

    async def revoke_grant(self, grant_id: str, by: str, roles: Sequence[str] = ()) -> Grant:
        """End a grant: from the next call on, on every server of the store, it covers nothing."""
        with _unless_stored("nothing was changed"):
            grant = await self._grants.revoke(grant_id, by, roles)
        self._signal()
        return grant

    async def grants(self, include_finished: bool = False) -> builtins.list[Grant]:
        """Grants waiting or active, oldest first; with `include_finished` expired, revoked, used-up too."""
        return await self._grants.listed(include_finished)

    async def grant(self, grant_id: str) -> Grant:
        return await self._grants.get(grant_id)

    # -- deciding --------------------------------------------------------------------------------

    async def approve(
        self,
        ref: str,
        principal: str,
        reason: str | None = None,
        arguments: Mapping[str, Any] | None = None,
        *,
        roles: Sequence[str] = (),
        shown: str | None = None,
    ) -> Request:
        """Record an approval — with edited arguments if given — and, once the policy's levels are all
        satisfied, claim and run the action at once. Returns the record afterwards. `roles`: what the
        principal's verified credential grants beyond the config (`roles_of`); `shown`: the digest of the
        arguments the approver was shown, when the face knows it (refused if they changed since)."""
        request_id = await self._decidable_id(ref)
        self._running_here.add(request_id)
        try:
            # The approval that completes the policy claims the request in its own commit (one durable
            # commit fewer; see Store.decide), so the claim is made before anything is decided.
            _test_pause("before-claim", request_id)
            request = await self.decide(
                request_id, principal, "approve", reason, arguments, claim=True, roles=roles, shown=shown
            )
            return await self._run_decided(request)
        finally:
            self._running_here.discard(request_id)

    async def confirm(
        self,
        ref: str,
        principal: str,
        accepted: bool,
        reason: str | None = None,
        *,
        digest: str | None = None,
    ) -> Request:
        """The requester's person says yes or no through their client to a request whose rule says
        `approval = "confirm"`. Yes approves it and runs it here, once (the claim is in the same commit); no
        rejects it, with the person's reason if given. Audited as `confirmed` or as a rejection marked a
        confirmation; refused for anyone but the requester and for any other rule. `digest`: the arguments
        the person was shown, refused if the request was edited since."""
        request_id = await self._decidable_id(ref)
        now = self.clock()
        claim_for = ClaimFor(self.worker, self._runnable_targets()) if accepted else None
        self._running_here.add(request_id)
        try:
            request = await self._apply(
                request_id,
                lambda current: decisions.plan_confirmation(
                    current, principal=principal, accepted=accepted, reason=reason, now=now, digest=digest
                ),
                now,
                claim_for,
            )
            return await self._run_decided(request)
        finally:
            self._running_here.discard(request_id)

    async def reject(
        self,
        ref: str,
        principal: str,
        reason: str,
        *,
        roles: Sequence[str] = (),
        shown: str | None = None,
    ) -> Request:
        if not reason.strip():
            raise InvalidArguments("reason: a rejection needs a reason")
        return await self.decide(ref, principal, "reject", reason, roles=roles, shown=shown)

    async def decide(
        self,
        ref: str,
        principal: str,
        verdict: Literal["approve", "reject"],
        reason: str | None = None,
        arguments: Mapping[str, Any] | None = None,
        *,
        claim: bool = False,
        roles: Sequence[str] = (),
        shown: str | None = None,
    ) -> Request:
        """Record one decision under the request's policy, and nothing more: `approve` also runs it.

        `claim`: an approval that completes the policy also claims the request for this process, if its
        target is here (the request is then executing, `claimed_by` this worker, for the caller to run)."""
        request_id = await self._decidable_id(ref)
        edit = None if arguments is None else await self._prepare_edit(await self.get(request_id), arguments)
        now = self.clock()
        held = self.roles_of(principal, roles)
        claiming = claim and verdict == "approve"
        claim_for = ClaimFor(self.worker, self._runnable_targets()) if claiming else None
        return await self._apply(
            request_id,
            lambda current: decisions.plan(
                current,
                principal=principal,
                roles=held,
                verdict=verdict,
                reason=reason,
                edit=edit,
                now=now,
                shown=shown,
            ),
            now,
            claim_for,
        )

    async def _apply(
        self,
        request_id: str,
        plan: Planner,
        now: float,
        claim_for: ClaimFor | None,
    ) -> Request:
        """One decision's transaction: `plan` judges the request as it stands inside it."""
        started = tracing.now_ns()
        try:
            with _unless_stored("nothing was changed"):
                request = await self.store.decide(request_id, plan, now, claim_for)
        except Expired:
            await self.sweep()
            raise
        self._signal()
        tracing.decided(request, started)
        logs.request_event(logger, request, "decided", logs.last_decider(request))
        if request.status is not Status.PENDING:  # the final decision, not one level's
            PROCESS.decision(request.tool, now - request.created_at.timestamp())
        return request

    async def _run_decided(self, request: Request) -> Request:
        """Run what a decision made by this process left to run: claimed here in the decision's own commit,
        or approved for whichever process has its target."""
        if request.status is Status.EXECUTING and request.claimed_by == self.worker:
            return await self._run_claimed(request)
        if request.status is Status.APPROVED:
            return await self.execute(request.request_id)
        return request

    def roles_of(self, principal: str, granted: Sequence[str] = ()) -> tuple[str, ...]:
        """The roles `principal` holds: the config's, and those its verified credential grants (the
        claim an OpenID Provider signed it in with)."""
        configured = self.settings.roles_of(principal)
        if not granted:
            return configured
        return tuple(sorted({*configured, *granted}))

    async def preview_edit(self, ref: str, changes: Mapping[str, Any]) -> Edit:
        """What approving with `changes` would approve — validated, re-previewed, the policy it selects —
        changing nothing: what a person confirms before `approve(..., arguments=changes)`."""
        return await self._prepare_edit(await self.get(ref), changes)

    async def _prepare_edit(self, request: Request, changes: Mapping[str, Any]) -> Edit:
        """Validate an approver's changes like the original arguments, re-preview and re-select policy."""
        if request.status is not Status.PENDING:
            raise NotPending(
                f"request {request.request_id} is {request.status}, not pending; nothing was changed"
            )
        elsewhere = self.elsewhere(request)
        if elsewhere is not None:
            # The edit is previewed here, so it would show the approver another target's state.
            raise NotAllowed(f"{elsewhere}; edit it from a process configured for that; nothing was changed")
        action = self._action(request.tool)
        unknown = sorted(set(changes) - action.argument_names())
        if unknown:
            raise InvalidArguments(f"{unknown[0]}: {request.tool} has no such argument")
        args = action.parse({**request.arguments, **changes})
        preview = await action.preview(args)
        snapshot = policy.select(
            self.settings.policies.get(request.tool), action.policy_values(args, preview)
        )
        if snapshot.approval == "deny":
            raise NotAllowed(
                f"the policy refuses the edited arguments ({snapshot.describe()}); nothing was changed"
            )
        normalised = args.model_dump(mode="json")
        diff = {
            name: Change(before=request.arguments.get(name), after=value)
            for name, value in normalised.items()
            if request.arguments.get(name) != value
        }
        if not diff:
            raise InvalidArguments("arguments: the edit changes nothing; approve without it")
        return Edit(
            based_on_digest=request.arguments_digest,
            arguments=normalised,
            arguments_digest=arguments_digest(request.tool, normalised),
            summary=action.summary(args),
            preview=preview,
            policy=snapshot,
            changes=diff,
        )

    async def cancel(self, ref: str, principal: str) -> Request:
        """The requester withdraws its own pending request."""
        request_id = await self.resolve(ref)
        with _unless_stored("nothing was changed"):
            cancelled = await self.store.cancel(request_id, principal, self.clock())
        if not cancelled:
            request = await self.get(request_id)
            if request.requested_by.casefold() != principal.casefold():
                raise NotAllowed(
                    f"request {request_id} was filed by {request.requested_by}; only its requester may "
                    "cancel it (an approver rejects instead)"
                )
            raise NotPending(f"request {request_id} is {request.status}, not pending; nothing was changed")
        self._signal()
        return await self.get(request_id)

    # -- executing -------------------------------------------------------------------------------

    async def execute(self, request_id: str) -> Request:
        """Claim an approved request and run it. Only the one claimer runs it; others just read it, and so
        does a process not configured for the request's target (see `elsewhere`)."""
        _test_pause("before-claim", request_id)
        with _unless_stored("the request stays approved, for this or another process to run"):
            claimed = await self.store.claim(request_id, self.worker, self.clock(), self._runnable_targets())
        if claimed is None:
            request = await self.get(request_id)
            if request.status is Status.APPROVED and request.expires_at.timestamp() <= self.clock():
                await self.sweep()
                return await self.get(request_id)
            if request.status is Status.APPROVED and (elsewhere := self.elsewhere(request)):
                logger.info("not running %s here: %s", request_id, elsewhere)
            return request
        self._signal()
        return await self._run_claimed(claimed)

    async def _run_claimed(self, claimed: Request) -> Request:
        """Run a request this process has just claimed, and record how it ended."""
        request_id = claimed.request_id
        _test_pause("after-claim", request_id)
        carrier = tracing.carried(request_id) or await self._stored_trace(request_id)
        with logs.about(claimed), tracing.executing(claimed, carrier) as span:
            outcome = await self._run(claimed)
            span.set_attribute(tracing.OUTCOME, tracing.outcome_of(outcome.status))
        PROCESS.execution(claimed.tool, tracing.outcome_of(outcome.status))
        _test_pause("after-action", request_id)
        finished = await self._record(claimed, outcome)
        logs.request_event(logger, finished, "ran", None)
        return finished

    async def _stored_trace(self, request_id: str) -> dict[str, str] | None:
        """The filing's trace context from its audit record: read only while spans are recorded."""
        if not tracing.active():
            return None
        try:
            return tracing.from_trail(await self.store.audit_trail(request_id))
        except HitlError:
            return None

    async def _record(self, claimed: Request, outcome: Outcome) -> Request:
        """Record how a run ended. A store that will not take it now does not lose it: the outcome is held
        here and written by a task of this gate's, trying until the store takes it, while the caller gets
        the record as this process knows it (executing, `recording` saying what waits and why)."""
        request_id = claimed.request_id
        try:
            finished = await self._write_outcome(request_id, outcome)
        except StoreUnavailable as fault:
            held = Held(claimed, outcome, fault.reason, self.clock())
            self._held[request_id] = held
            self.outage.failed(fault, "outcomes of actions that ran are held until it takes them")
            self._signal()  # what this process shows of the request changed, if not what is stored
            if self._recorder is None:
                # No gate task outlives this call: the caller waits until the store takes it.
                return await self._keep_recording(request_id)
            # A task of the loop's own, not of a task group: the gate is entered and left by different
            # tasks (a test's fixture), and a task group's scope must be left by the task that entered it.
            task = asyncio.get_running_loop().create_task(self._recording_task(request_id))
            self._recorder.add(task)
            task.add_done_callback(self._recorder_done)
            return self._observed(claimed)
        self.outage.ok()
        self._signal()
        return self._observed(finished) if finished is not None else await self.get(request_id)

    async def _write_outcome(self, request_id: str, outcome: Outcome) -> Request | None:
        if outcome.status is None:
            # Handed over, then lost: recorded as such and left executing, never run again by itself.
            reason = outcome.error or "outcome unknown"
            return await self.store.mark_unknown(request_id, self.worker, reason, self.clock())
        return await self.store.finish(
            request_id,
            outcome.status,
            self.worker,
            outcome.result,
            outcome.error,
            self.clock(),
            effect=outcome.effect,
        )

    async def _keep_recording(self, request_id: str) -> Request:
        """Write a held outcome, backing off between tries, until the store takes it. There is no deadline:
        an executing request never expires, and only this process knows how it ended, so giving up would
        turn a known outcome into an unknown one. It ends with the process (`recording`: one last try)."""
        delay = RECORD_RETRY_FIRST_SECONDS
        while True:
            held = self._held[request_id]
            await anyio.sleep(delay * random.uniform(0.5, 1.0))  # noqa: S311 (jitter, not a secret)
            delay = min(delay * 2, RECORD_RETRY_MAX_SECONDS)
            try:
                finished = await self._write_outcome(request_id, held.outcome)
            except StoreUnavailable as fault:
                self.outage.failed(fault, "outcomes of actions that ran are held until it takes them")
                self._held[request_id] = replace(held, reason=fault.reason)
                continue
            self.outage.ok()
            return await self._recorded(request_id, held, finished)

    def _recorder_done(self, task: asyncio.Task[None]) -> None:
        if self._recorder is not None:
            self._recorder.discard(task)

    async def _recording_task(self, request_id: str) -> None:
        try:
            await self._keep_recording(request_id)
        except Exception:
            # A bug, not a fault of the store: it must not take the server's other tasks down with it.
            logger.exception("recording the outcome of request %s failed", request_id)

    async def _recorded(self, request_id: str, held: Held, finished: Request | None) -> Request:
        del self._held[request_id]
        self._signal()
        if finished is not None:
            logger.info("request %s: its outcome is recorded (%s)", request_id, finished.status.value)
            return self._observed(finished)
        # Not executing any more: an earlier try whose commit was lost on the way did land, or a person
        # settled it (it looked overdue elsewhere). The store's record stands either way.
        try:
            request = await self.get(request_id)
        except StoreUnavailable:
            return held.claimed
        if request.status is not held.outcome.status:
            logger.warning(
                "request %s was %s meanwhile; this process's outcome was not recorded over it: %s",
                request_id,
                request.status.value,
                held.describe(self.worker).partition(";")[0],
            )
        return request

    @asynccontextmanager
    async def recording(self) -> AsyncIterator[None]:
        """Keep recording held outcomes while the block runs: the tasks that do so outlive the call that
        ran the action (its approver is answered at once). On the way out each held outcome gets one last
        try; one the store still refuses is logged, and shows as outcome unknown once this process is gone."""
        self._recorder = set()
        try:
            yield
        finally:
            with anyio.CancelScope(shield=True):
                await self.stop_recording()

    async def stop_recording(self) -> None:
        tasks, self._recorder = self._recorder or set(), None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._last_try()

    async def _last_try(self) -> None:
        for request_id, held in list(self._held.items()):
            try:
                with anyio.fail_after(RECORD_LAST_TRY_SECONDS):
                    finished = await self._write_outcome(request_id, held.outcome)
            except (StoreUnavailable, TimeoutError) as fault:
                reason = fault.reason if isinstance(fault, StoreUnavailable) else "the store did not answer"
                logger.error(
                    "request %s: %s, but the store would not take its outcome before this process stopped "
                    "(%s); it shows as outcome unknown: check the target and record it with `hitl settle`",
                    request_id,
                    held.describe(self.worker).partition(";")[0],
                    reason,
                )
                continue
            with contextlib.suppress(StoreUnavailable):
                await self._recorded(request_id, held, finished)
        self._held.clear()

    def elsewhere(self, request: Request) -> str | None:
        """Why this process must not run `request`: it was filed against another target than the one this
        process is configured for. None when it may."""
        if request.target is None:
            return None
        ours = self.targets.get(request.tool)
        if ours is None:
            return f"request {request.request_id} is for {request.tool}, which this process does not have"
        if ours == request.target:
            return None
        return (
            f"request {request.request_id} was filed against {describe_target(request.target)}; this "
            f"process is configured for {describe_target(ours)}"
        )

    async def retry(self, ref: str, principal: str, *, roles: Sequence[str] = ()) -> Request:
        """Run again a failed request whose failure certainly had no effect, with the same approved
        arguments, before it expires. Audited; only someone who may approve it, never its requester."""
        request = await self.get(ref)
        request_id = request.request_id
        if request.status is not Status.FAILED or request.effect != "none":
            why = (
                "failed with an effect that is unknown: it is never run again"
                if request.status is Status.FAILED
                else f"{request.status}, not failed"
            )
            raise NotPending(f"request {request_id} is {why}; nothing was changed")
        if request.expires_at.timestamp() <= self.clock():
            raise Expired(
                f"request {request_id} expired at {request.expires_at.isoformat()}; it will never run"
            )
        if request.requested_by.casefold() == principal.casefold():
            raise NotAllowed(
                f"{principal} filed request {request_id}; an approver retries it, not its requester"
            )
        roles = self.roles_of(principal, roles)
        snapshot = request.approval.policy
        if snapshot.levels and not any(level.admits(roles) for level in snapshot.levels):
            held = ", ".join(roles) if roles else "no roles"
            raise NotAllowed(
                f"request {request_id} is approved by {snapshot.describe()}; {principal} holds {held}"
            )
        with _unless_stored("nothing was changed"):
            retried = await self.store.retry(request_id, principal, self.clock())
        if retried is None:
            raise NotPending(f"request {request_id} changed meanwhile; read it again")
        self._signal()
        self._running_here.add(request_id)
        try:
            return await self.execute(request_id)
        finally:
            self._running_here.discard(request_id)

    async def settle(
        self, ref: str, principal: str, outcome: Literal["executed", "failed"], note: str
    ) -> Request:
        """Record what a person found for a request whose outcome is unknown (its executor died mid-run).

        Only such a request: one whose executor is still alive will record its own outcome."""
        if not note.strip():
            raise InvalidArguments("note: say what you checked and found; it goes into the audit trail")
        request = await self.get(ref)
        if not request.outcome_unknown:
            raise NotPending(f"{self._unsettled(request)}; nothing was changed")
        status = Status.EXECUTED if outcome == "executed" else Status.FAILED
        settled = await self.store.finish(
            request.request_id,
            status,
            principal,
            {"settled_by": principal, "note": note} if status is Status.EXECUTED else None,
            None if status is Status.EXECUTED else f"settled by {principal}: {note}",
            self.clock(),
            {"settled": True, "note": note, "claimed_by": request.claimed_by},
            # A person who checked and found it did not take effect knows there was none: it may be retried.
            effect=None if status is Status.EXECUTED else "none",
        )
        if settled is None:
            raise NotPending(f"request {request.request_id} changed meanwhile; read it again")
        self._signal()
        return settled

    def _unsettled(self, request: Request) -> str:
        """Why a request whose outcome is not unknown cannot be settled, and when it could be."""
        request_id = request.request_id
        if request.status is not Status.EXECUTING:
            return f"request {request_id} is {request.status}, not of unknown outcome"
        if request.recording is not None:
            return f"request {request_id}: {request.recording}; there is nothing to settle"
        claimed_at = request.claimed_at.timestamp() if request.claimed_at else self.clock()
        overdue = datetime.fromtimestamp(
            claimed_at + self.settings.gate.executing_timeout_seconds, UTC
        ).isoformat(timespec="seconds")
        return (
            f"request {request_id} is executing, still being run by {request.claimed_by}, which records "
            "its outcome itself (if the store would not take it, that process keeps trying until it does); "
            f"it can be settled once that process has stopped, or from {overdue} when it is overdue"
        )

    async def _run(self, request: Request) -> Outcome:
        if arguments_digest(request.tool, request.arguments) != request.arguments_digest:
            error = "the stored arguments no longer match what was approved; not run"
            return Outcome(Status.FAILED, None, error, "none")
        action = self.actions.get(request.tool)
        if action is None:
            gone = f"{request.tool} is no longer an action here; not run"
            return Outcome(Status.FAILED, None, gone, "none")
        try:
            args = action.parse(request.arguments)
        except HitlError as error:
            return Outcome(Status.FAILED, None, f"{error}; not run", "none")
        try:
            result = await action.execute(args, Execution(request.request_id, request.preview))
        except ActionFailed as error:
            return Outcome(Status.FAILED, error.result, str(error), error.effect)
        except OutcomeUnknown as error:
            return Outcome(None, None, str(error), "unknown")
        except HitlError as error:
            return Outcome(Status.FAILED, None, str(error), "unknown")
        except Exception as error:
            logger.exception("action %s crashed on request %s", request.tool, request.request_id)
            error_text = f"the action crashed ({type(error).__name__}: {error})"
            return Outcome(Status.FAILED, None, error_text, "unknown")
        return Outcome(Status.EXECUTED, result, None, None)

    # -- housekeeping ----------------------------------------------------------------------------

    async def sweep(self) -> int:
        """Mark every overdue pending or approved request expired."""
        expired = 0
        while batch := await self.store.expire_overdue(self.clock()):
            expired += len(batch)
            self._signal()
        return expired

    async def escalate(self) -> int:
        """Mark requests whose level waited past `escalate_after_seconds`, with an audit event."""
        escalated = await self.store.escalate_due(self.clock())
        if escalated:
            self._signal()
        return len(escalated)

    async def release_orphans(self) -> int:
        """Run approved requests nobody claimed for a while (their approver died, or approved them from a
        process without their target): the safety net under `run_approved_forever`."""
        grace = self.settings.gate.orphan_grace_seconds
        return await self._run_approved(self.clock() - grace)

    async def _run_approved(self, decided_before: float) -> int:
        ids = await self.store.approved_unclaimed(decided_before, RUNNER_BATCH, self._runnable_targets())
        released = 0
        for request_id in ids:
            if request_id in self._running_here:
                continue
            request = await self.execute(request_id)
            released += request.status in (Status.EXECUTED, Status.FAILED)
        return released

    async def run_approved_forever(self) -> None:
        """Run every approved request this process has the target for as soon as it is approved, by
        whichever process: `hitl approve` in a terminal without this configuration leaves it here.
        Cancel it to stop."""
        while True:
            changed, before = self._changed, None
            try:
                before = await self.store.change_counter()
                await self._run_approved(math.inf)
            except StoreUnavailable as fault:
                self.outage.failed(fault)
            except Exception:
                logger.exception("running approved requests failed; trying again at the next change")
            if before is None:
                # The store could not even say where it stands: look again in a while, as housekeeping does.
                await anyio.sleep(self.settings.gate.sweep_interval_seconds)
                continue
            await wait_for_change(self.store, before, RUNNER_IDLE_SECONDS, local=changed)
            # A request is several commits (filed, decided, claimed, finished): look once for them all,
            # not once each. This process runs what it approves itself; this is for the others.
            await anyio.sleep(RUNNER_COALESCE_SECONDS)

    async def maintain(self) -> None:
        """Sweep and release orphans forever, and archive daily if `[store] archive_after_days` says so;
        run it in a task group and cancel it to stop."""
        from hitl_mcp.store.archive import DailyArchive

        options = self.settings.store_options
        archiving = DailyArchive(self.store, options.archive_after_days, options.archive_dir)
        while True:
            try:
                await self.sweep()
                await self.escalate()
                await self.release_orphans()
                await archiving.run_if_due(self.clock())
                self.outage.ok()
            except StoreUnavailable as fault:
                self.outage.failed(fault)
            except Exception:
                logger.exception(
                    "housekeeping failed; trying again in %ss", self.settings.gate.sweep_interval_seconds
                )
            await anyio.sleep(self.settings.gate.sweep_interval_seconds)

    # -- reading ---------------------------------------------------------------------------------

    async def resolve(self, ref: str) -> str:
        """An id from a full id or any unique prefix of one."""
        ref = ref.strip().lower()
        if not ID_PATTERN.match(ref):
            raise NotFound(f"{ref!r} is not a request id (ids are up to {ID_BYTES * 2} hex digits)")
        matches = await self.store.match_prefix(ref, limit=2)
        if not matches:
            raise NotFound(f"no request has id {ref!r}")
        if len(matches) > 1:
            raise AmbiguousId(f"{ref!r} matches more than one request; give more of the id")
        return matches[0]

    async def _decidable_id(self, ref: str) -> str:
        """`resolve` without its lookup for a whole id: the decision's transaction reads the request anyway
        and refuses an id that does not exist with the same `NotFound`."""
        whole = ref.strip().lower()
        if len(whole) == ID_BYTES * 2 and ID_PATTERN.match(whole):
            return whole
        return await self.resolve(ref)

    async def get(self, ref: str) -> Request:
        try:
            request = await self.store.get(ref)
            if request is None:
                request = await self.store.get(await self.resolve(ref))
        except StoreUnavailable:
            # What this process holds, it can still tell while the store cannot.
            held = self._held.get(ref.strip().lower())
            if held is None:
                raise
            return self._observed(held.claimed)
        if request is None:
            raise NotFound(f"no request has id {ref!r}")
        return self._observed(request)

    def _observed(self, request: Request) -> Request:
        """The record, an executing one marked `outcome_unknown` when its claimant can no longer finish it,
        or showing the outcome this process ran it to and is still recording."""
        if request.status is not Status.EXECUTING:
            return request
        held = self._held.get(request.request_id)
        if held is not None:
            return held.shown(request, self.worker)
        host = self.worker.rpartition(":")[0]
        timeout = self.settings.gate.executing_timeout_seconds
        # `effect` unknown on an executing request: its executor itself lost the target mid-call.
        lost = request.effect == "unknown"
        if not lost and not claimant_gone(request, now=self.clock(), timeout=timeout, host=host):
            return request
        return request.model_copy(update={"outcome_unknown": True})

    async def list(
        self,
        *,
        statuses: tuple[Status, ...] | None = OPEN_STATUSES,
        tool: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> RequestPage:
        self._check_page(tool, limit, cursor)
        page = await self.store.page(statuses, tool, limit, cursor)
        return RequestPage(
            requests=[self._observed(request) for request in page.requests], next_cursor=page.next_cursor
        )

    async def summaries(
        self,
        *,
        statuses: tuple[Status, ...] | None = OPEN_STATUSES,
        tool: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> SummaryRows:
        """Requests as `list` pages them (the pending queue by default), each as its one line
        (`RequestSummary`'s JSON)."""
        self._check_page(tool, limit, cursor)
        return await self.store.summaries(statuses, tool, limit, cursor)

    async def count(
        self,
        *,
        statuses: tuple[Status, ...] | None = OPEN_STATUSES,
        tool: str | None = None,
        cursor: str | None,
    ) -> int:
        """How many requests `list` has left after `cursor`."""
        self._check_page(tool, 1, cursor)
        return await self.store.count(statuses, tool, cursor)

    async def denials(
        self, *, tool: str | None = None, limit: int = 50, cursor: str | None = None
    ) -> DenialPage:
        """Calls the policy refused at filing, oldest first: no request was made, only the audit record."""
        self._check_page(tool, limit, cursor)
        return await self.store.denials(tool, limit, cursor)

    async def count_denials(self, *, tool: str | None = None, cursor: str | None) -> int:
        self._check_page(tool, 1, cursor)
        return await self.store.count_denials(tool, cursor)

    def _check_page(self, tool: str | None, limit: int, cursor: str | None) -> None:
        if tool is not None:
            self._action(tool)
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidArguments(f"limit: must be between 1 and {MAX_PAGE}")
        if cursor is not None and not CURSOR_PATTERN.fullmatch(cursor):
            raise InvalidArguments("cursor: not a cursor this server returned")

    async def wait(self, ref: str, timeout: float, progress: ProgressFn | None = None) -> Request:
        """The record as soon as it is decided for good, or as it stands when `timeout` passes.

        An executing request whose outcome is unknown is returned at once: only a person changes it now."""
        # A whole id is not looked up first: a request whose outcome this process holds is waited on
        # while the store is down (`get` answers for it).
        request_id = await self._decidable_id(ref)
        deadline = time.monotonic() + timeout
        while True:
            # What "changed" means is fixed before the read: a commit landing between the read and the
            # wait would otherwise go unseen until the next change or the timeout.
            changed, before = self._changed, await self.store.change_counter()
            request = await self.get(request_id)
            if request.status is Status.PENDING and request.expires_at.timestamp() <= self.clock():
                await self.sweep()
                continue
            remaining = deadline - time.monotonic()
            if request.status not in UNDECIDED or request.outcome_unknown or remaining <= 0:
                return request
            if progress is not None:
                await progress(timeout - remaining, timeout)
            await wait_for_change(self.store, before, min(remaining, 5.0), local=changed)

    @property
    def change_event(self) -> anyio.Event:
        """Set at the next change this gate makes; other processes' changes show in the store's counter."""
        return self._changed

    def _signal(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def _action(self, tool: str) -> Action:  # type: ignore[type-arg]
        return find(self.actions, tool)


def _checked_idempotency_key(key: object) -> str | None:
    """The key a client sent (from the call's `_meta`, so of any JSON type), or a refusal."""
    if key is None:
        return None
    if not isinstance(key, str) or not 1 <= len(key) <= IDEMPOTENCY_KEY_MAX:
        raise InvalidArguments(
            f"_meta.io.hitl/idempotency-key: must be text of 1 to {IDEMPOTENCY_KEY_MAX} characters; "
            "nothing was filed"
        )
    if any(unicodedata.category(char).startswith(("C", "Z")) and char != " " for char in key):
        raise InvalidArguments(
            "_meta.io.hitl/idempotency-key: must hold printable characters only; nothing was filed"
        )
    return key


def claimant_gone(request: Request, *, now: float, timeout: float, host: str) -> bool:
    """Whether an executing request's claimant can no longer record its outcome: its process, on this host,
    no longer exists, or it claimed the request more than `timeout` seconds ago. Nothing re-runs such a
    request: the action may or may not have taken effect, and only a person can tell."""
    if request.status is not Status.EXECUTING or request.claimed_at is None:
        return False
    if now - request.claimed_at.timestamp() > timeout:
        return True
    claimant_host, _, pid = (request.claimed_by or "").rpartition(":")
    return claimant_host == host and pid.isdigit() and not _process_exists(int(pid))


def _process_exists(pid: int) -> bool:
    if os.name != "posix" or pid <= 0:
        return True  # cannot tell without signalling; the timeout decides
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


@asynccontextmanager
async def open_gate(
    settings: Settings,
    actions: Mapping[str, Action] | None = None,  # type: ignore[type-arg]
    *,
    readonly: bool = False,
) -> AsyncIterator[Gate]:
    """A gate over the configured store (SQLite or PostgreSQL) and actions (built from the settings unless
    given); `readonly` for commands that only read, which then work on a read-only store and take no lock."""
    from hitl_mcp.actions import build_actions
    from hitl_mcp.store import open_store

    store = await open_store(settings, readonly=readonly)
    try:
        gate = Gate(store, build_actions(settings.actions) if actions is None else actions, settings)
        async with gate.recording():
            yield gate
    finally:
        await store.close()
