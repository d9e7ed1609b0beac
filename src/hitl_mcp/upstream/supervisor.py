"""`Upstreams`: a live session to every configured upstream, kept alive for as long as hitl serves.

```python
upstreams = Upstreams(settings.upstreams.values())
async with upstreams:                       # or: tasks.start_soon(upstreams.run), and cancel to stop
    seen = 0
    while True:
        seen = await upstreams.wait_for_change(seen)   # a status or a tool listing changed
        for state in upstreams.states(): ...
        result = await upstreams.call("fs", "write_file", {...})   # NotSent / LostAfterSend
```

Every upstream starts at once and on its own: a slow one does not hold up the others, and its tools
appear when it is ready. One that dies or fails to start is `failed` (with the reason) until it is tried
again after a backoff that doubles up to `restart.max_delay_seconds`, with jitter; the backoff starts
over once a session has stayed up for `STABLE_SECONDS`. Leaving `run` (cancelled, or the `async with`)
closes every session and stops every process.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Self

import anyio
import anyio.abc
from mcp_types import CallToolResult, Tool

from hitl_mcp import logs
from hitl_mcp.upstream.baseline import Baseline, ToolChange
from hitl_mcp.upstream.delivery import LostAfterSend, NotSent
from hitl_mcp.upstream.reasons import describe
from hitl_mcp.upstream.rules import Exposure, Refusal, classify, preview_for
from hitl_mcp.upstream.session import Session, SessionFailed, open_session
from hitl_mcp.upstream.settings import UpstreamSettings
from hitl_mcp.upstream.state import ListedTool, Status, UpstreamState

__all__ = ["LostAfterSend", "NotSent", "Upstreams", "probe"]

logger = logging.getLogger(__name__)

STABLE_SECONDS = 30.0
"""A session that stayed up this long was not a failed start: the next failure waits the initial delay."""

Log = Callable[[str], None]


def log_to_stderr(line: str) -> None:
    # Looked up at each line, not bound at start, so a test's captured stderr (or a redirect) gets it; in
    # `hitl serve`'s log once it is set up, where a JSON line carries the upstream's name as a field.
    logs.upstream_line(line)


class Upstreams:
    """The live sessions to the configured upstreams, by name."""

    def __init__(self, upstreams: Iterable[UpstreamSettings], *, log: Log = log_to_stderr) -> None:
        self._settings = {upstream.name: upstream for upstream in upstreams}
        self._log = log
        self._states = {name: _stopped(upstream) for name, upstream in self._settings.items()}
        self.baseline = Baseline()
        self._changes: dict[str, dict[str, ToolChange]] = {name: {} for name in self._settings}
        self._untold: list[ToolChange] = []
        self._been_ready: set[str] = set()
        self._sessions: dict[str, Session] = {}
        self._generation = 0
        self._changed: anyio.Event | None = None
        self._tasks: anyio.abc.TaskGroup | None = None

    def settings(self, name: str) -> UpstreamSettings:
        return self._settings[name]

    def states(self) -> tuple[UpstreamState, ...]:
        return tuple(self._states.values())

    def state(self, name: str) -> UpstreamState:
        """Raises KeyError for a name that is not configured."""
        return self._states[name]

    def first_start(self, name: str) -> bool:
        """Whether `name` has not been ready yet: its tools are still to come (or it cannot start)."""
        return name not in self._been_ready and self._states[name].status in (Status.STOPPED, Status.STARTING)

    def live(self, upstream: str, tool: str) -> bool:
        """Whether a live session to `upstream` offers `tool` now."""
        return self._offered(upstream, tool) is not None

    def passes(self, upstream: str, tool: str) -> bool:
        """Whether `tool` is offered now and the rules forward it at once."""
        listed = self._offered(upstream, tool)
        return listed is not None and not listed.exposure.gated

    def _offered(self, upstream: str, tool: str) -> ListedTool | None:
        session = self._sessions.get(upstream)
        state = self._states.get(upstream)
        if session is None or not session.alive or state is None or state.status is not Status.READY:
            return None
        return state.tool(tool)

    def take_changes(self) -> list[ToolChange]:
        """The tool changes found since the last call, oldest first: for the gateway to record."""
        untold, self._untold = self._untold, []
        return untold

    @property
    def generation(self) -> int:
        """Counts changes: of any upstream's status, reason or tools."""
        return self._generation

    async def wait_for_change(self, seen: int) -> int:
        """Return the generation as soon as it differs from `seen` (at once if it already does)."""
        while self._generation == seen:
            await self._change_event().wait()
        return self._generation

    async def call(
        self, upstream: str, tool: str, arguments: dict[str, Any], *, timeout: float | None = None
    ) -> CallToolResult:
        """Call `tool` of `upstream` once, on its live session, within `timeout` (default: its
        `call_timeout_seconds`). An error the upstream answers is returned as an `isError` result.

        Raises:
            NotSent: no live session (unknown, starting, failed, stopped), or the request was never
                written: certainly no effect.
            LostAfterSend: the session died, or no answer came in time, after the request was written:
                whether it ran is unknown.
        """
        settings = self._settings.get(upstream)
        if settings is None:
            raise NotSent(f"no upstream is named {upstream!r}; {tool} was not sent")
        session = self._sessions.get(upstream)
        state = self._states[upstream]
        if session is None or not session.alive or state.status is not Status.READY:
            if state.status is Status.READY:
                why = "its session just ended"
            else:
                why = f"{state.status.value}: {state.reason}" if state.reason else state.status.value
            raise NotSent(f"{upstream} is not ready ({why}); {tool} was not sent")
        return await session.call(
            tool, arguments, settings.call_timeout_seconds if timeout is None else timeout
        )

    def raw_version(self, upstream: str) -> str | None:
        """The protocol version `call_raw` would answer in for `upstream` now; None when it cannot."""
        session = self._sessions.get(upstream)
        state = self._states.get(upstream)
        if session is None or state is None or state.status is not Status.READY:
            return None
        return session.answers_raw

    async def call_raw(self, upstream: str, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """As `call`, past the SDK's session (`Session.call_raw`), within its `call_timeout_seconds`; the
        result in its wire form. Only for an upstream `raw_version` names a version for."""
        session = self._sessions.get(upstream)
        if (
            session is None
            or session.answers_raw is None
            or self._states[upstream].status is not Status.READY
        ):
            raise NotSent(f"{upstream} is not ready (its session just ended); {tool} was not sent")
        return await session.call_raw(tool, arguments, self._settings[upstream].call_timeout_seconds)

    async def run(self) -> None:
        """Keep every upstream's session alive until cancelled; then close them all."""
        try:
            async with anyio.create_task_group() as tasks:
                for upstream in self._settings.values():
                    tasks.start_soon(self._keep, upstream)
        finally:
            for upstream in self._settings.values():
                self._set(_stopped(upstream))

    async def __aenter__(self) -> Self:
        self._tasks = anyio.create_task_group()
        await self._tasks.__aenter__()
        self._tasks.start_soon(self.run)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        assert self._tasks is not None
        self._tasks.cancel_scope.cancel()
        return await self._tasks.__aexit__(exc_type, exc, tb)

    async def _keep(self, upstream: UpstreamSettings) -> None:
        failures = 0
        while True:
            self._set(_state(upstream, Status.STARTING))
            started_at: float | None = None
            reason = ""
            try:
                async with open_session(upstream, log=self._log) as session:
                    started_at = anyio.current_time()
                    session.on_listed = self._relisted
                    self._sessions[upstream.name] = session
                    self._been_ready.add(upstream.name)
                    self._set(self._ready(upstream, session))
                    await session.lost.wait()
                    reason = session.lost_reason
                    # Failed from this moment, not once its process has stopped: no call is sent meanwhile.
                    self._sessions.pop(upstream.name, None)
                    self._set(_state(upstream, Status.FAILED, reason=reason))
            except SessionFailed as failure:
                reason = str(failure)
            except Exception as error:  # a bug of ours must not stop the other upstreams
                reason = f"unexpected error: {describe(error)}"
                logger.exception("upstream %s failed unexpectedly", upstream.name)
            finally:
                self._sessions.pop(upstream.name, None)
            if started_at is not None and anyio.current_time() - started_at >= STABLE_SECONDS:
                failures = 0
            delay = upstream.restart.delay(failures, random.random())  # noqa: S311 - jitter, not secrecy
            failures += 1
            retry_at = datetime.now(UTC) + timedelta(seconds=delay)
            self._set(_state(upstream, Status.FAILED, reason=reason, retry_at=retry_at))
            self._log(f"{upstream.name}: {reason}; trying again in {delay:.1f} s")
            await anyio.sleep(delay)

    def _ready(self, upstream: UpstreamSettings, session: Session) -> UpstreamState:
        """Its state once listed, no tool loosened against the baseline; each change logged and kept."""
        state, changes = _ready(upstream, session, self.baseline)
        for change in changes:
            self._log(f"{upstream.name}: {change.line()}")
            logger.warning("upstream %s: %s", upstream.name, change.line())
            self._changes[upstream.name][change.tool] = change
        self._untold.extend(changes)
        return replace(state, changes=tuple(self._changes[upstream.name].values()))

    def _relisted(self, session: Session) -> None:
        ready = self._ready(session.upstream, session)
        current = self._states[ready.name]
        if current.status is Status.READY:
            ready = replace(ready, since=current.since)  # ready since it connected, not since it re-listed
        self._set(ready)

    def _set(self, state: UpstreamState) -> None:
        self._states[state.name] = state
        self._generation += 1
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def _change_event(self) -> anyio.Event:
        # Made on first wait, inside the event loop: `Upstreams` itself may be built outside one.
        if self._changed is None:
            self._changed = anyio.Event()
        return self._changed


async def probe(
    upstream: UpstreamSettings,
    timeout: float | None = None,
    *,
    log: Log = log_to_stderr,
    baseline: Baseline | None = None,
) -> UpstreamState:
    """Connect to `upstream`, list its tools and close: its state as `Upstreams` would report it once
    ready (against `baseline`, what a server would hold gated), or failed with the reason. For commands
    (`hitl upstreams`, `hitl policy check`)."""
    try:
        async with open_session(upstream, log=log, start_timeout=timeout) as session:
            return _ready(upstream, session, baseline)[0]
    except SessionFailed as failure:
        return _state(upstream, Status.FAILED, reason=str(failure))


def expose(
    upstream: UpstreamSettings, tools: Iterable[Tool], baseline: Baseline | None = None
) -> tuple[tuple[ListedTool, ...], tuple[Refusal, ...], tuple[str, ...], list[ToolChange]]:
    """Each tool as the rules expose it (with its usable preview), the refused ones, warnings, and — with
    a `baseline` — the tools whose definition changed since it last saw them. Against a baseline no tool
    is passed that was once gated; a preview can then be served only by a tool that really passes."""
    exposures: list[tuple[Tool, Exposure]] = []
    refused: list[Refusal] = []
    seen: set[str] = set()
    for tool in tools:
        if tool.name in seen:
            refused.append(Refusal(tool.name, "listed twice by the upstream; the first is kept"))
            continue
        seen.add(tool.name)
        decided = classify(tool, upstream)
        if isinstance(decided, Refusal):
            refused.append(decided)
        else:
            exposures.append((tool, decided))
    changes: list[ToolChange] = []
    if baseline is not None:
        reviewed, changes = baseline.review(upstream.name, exposures)
        exposures = [(tool, exposure) for (tool, _), exposure in zip(exposures, reviewed, strict=True)]
    warnings: list[str] = []
    listed: list[ListedTool] = []
    for tool, exposure in exposures:
        preview, problem = preview_for(tool.name, upstream, (exposure for _, exposure in exposures))
        if problem:
            warnings.append(problem)
        listed.append(ListedTool(tool, exposure, preview))
    unknown = sorted(set(upstream.previews) - seen)
    warnings.extend(
        f"a preview is configured for {name}, which {upstream.name} does not offer" for name in unknown
    )
    return tuple(listed), tuple(refused), tuple(warnings), changes


def _ready(
    upstream: UpstreamSettings, session: Session, baseline: Baseline | None = None
) -> tuple[UpstreamState, list[ToolChange]]:
    tools, refused, warnings, changes = expose(upstream, session.tools, baseline)
    state = _state(
        upstream,
        Status.READY,
        tools=tools,
        refused=refused,
        warnings=warnings,
        server=session.server,
        protocol_version=session.protocol_version,
    )
    return state, changes


def _state(upstream: UpstreamSettings, status: Status, **details: Any) -> UpstreamState:
    return UpstreamState(
        name=upstream.name,
        kind=upstream.kind,
        status=status,
        since=datetime.now(UTC),
        target=upstream.target(),
        **details,
    )


def _stopped(upstream: UpstreamSettings) -> UpstreamState:
    return _state(upstream, Status.STOPPED)
