"""Live updates: which requests changed — in this process or any other on the same store — and who to tell.

Every change of a request writes an audit record, so the audit sequence is a change log: the feed wakes
on the store's change counter (cheap, cross-process) and asks which requests have records past the last
one it saw. Subscribers hear of `hitl://requests/{id}` and of the pending queue, `hitl://requests/pending`:
clients of the current protocol through the SDK's subscription bus (`subscriptions/listen`), older
clients through the `resources/subscribe` handshake they used.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import anyio
from mcp.server.context import ServerRequestContext
from mcp.server.session import ServerSession
from mcp.server.subscriptions import InMemorySubscriptionBus, ResourceUpdated, ServerEvent, SubscriptionBus
from mcp_types import EmptyResult, SubscribeRequestParams, UnsubscribeRequestParams

from hitl_mcp.client_log import LogListeners, level_of, message, status_after
from hitl_mcp.errors import StoreUnavailable
from hitl_mcp.store import Store, wait_for_change
from hitl_mcp.store.outage import outage_of

logger = logging.getLogger(__name__)

PENDING_URI = "hitl://requests/pending"
REQUEST_URI = "hitl://requests/{request_id}"
# The feed wakes on every change; with none it looks again this often anyway.
IDLE_SECONDS = 1.0


def request_uri(request_id: str) -> str:
    return REQUEST_URI.format(request_id=request_id)


class ListenedBus(InMemorySubscriptionBus):
    """The SDK's in-process bus, counting its listeners: with none, the feed need not read the store."""

    def __init__(self) -> None:
        super().__init__()
        self.listening = 0
        self.on_listen: Callable[[], None] | None = None

    def subscribe(self, listener: Callable[[ServerEvent], None]) -> Callable[[], None]:
        unsubscribe = super().subscribe(listener)
        self.listening += 1
        if self.on_listen is not None:
            self.on_listen()
        gone = False

        def stop() -> None:
            nonlocal gone
            if not gone:
                gone = True
                self.listening -= 1
            unsubscribe()

        return stop


class LegacySubscribers:
    """Sessions that subscribed with `resources/subscribe`, by URI."""

    def __init__(self) -> None:
        self._sessions: dict[str, set[ServerSession]] = {}
        self.on_listen: Callable[[], None] | None = None

    def __bool__(self) -> bool:
        return any(self._sessions.values())

    async def subscribe(
        self, ctx: ServerRequestContext[Any, Any], params: SubscribeRequestParams
    ) -> EmptyResult:
        self._sessions.setdefault(str(params.uri), set()).add(ctx.session)
        if self.on_listen is not None:
            self.on_listen()
        return EmptyResult()

    async def unsubscribe(
        self, ctx: ServerRequestContext[Any, Any], params: UnsubscribeRequestParams
    ) -> EmptyResult:
        self._sessions.get(str(params.uri), set()).discard(ctx.session)
        return EmptyResult()

    async def notify(self, uri: str) -> None:
        for session in list(self._sessions.get(uri, ())):
            try:
                await session.send_resource_updated(uri)
            except Exception:  # the client went away: forget it rather than fail the others
                logger.debug("dropping a closed subscriber of %s", uri)
                self._sessions[uri].discard(session)


class ChangeFeed:
    """Publishes an update for every request that changed, and for the pending queue."""

    def __init__(
        self,
        store: Store,
        bus: SubscriptionBus,
        legacy: LegacySubscribers,
        logs: LogListeners | None = None,
    ) -> None:
        self.store = store
        self.bus = bus
        self.legacy = legacy
        self.logs = logs
        # Set when a listener comes while the feed sleeps for want of one (see `_until_listened`).
        self._arrived: anyio.Event | None = None
        for registry in (bus, legacy, logs):
            if isinstance(registry, ListenedBus | LegacySubscribers | LogListeners):
                registry.on_listen = self._listener_came

    def _listener_came(self) -> None:
        if self._arrived is not None:
            self._arrived.set()

    async def _until_listened(self) -> None:
        """Sleep while nobody listens, however much changes meanwhile: waking on every change with no one
        to tell cost a filing a fifth of its time. The one who comes hears at once of everything since
        the feed last published (`seen`)."""
        while not self.listened():
            self._arrived = anyio.Event()
            try:
                # A registry that gained a listener without saying so is still noticed this often.
                with anyio.move_on_after(IDLE_SECONDS):
                    await self._arrived.wait()
            finally:
                self._arrived = None

    def listened(self) -> bool:
        """Whether anyone would hear of a change: a subscription, an older client's subscribe, a log."""
        bus_listens = not isinstance(self.bus, ListenedBus) or self.bus.listening > 0
        return bus_listens or bool(self.legacy) or bool(self.logs)

    async def log(self, changed: list[str], *, after: int) -> None:
        """Each new event of each changed request, as a log message to the sessions that asked."""
        assert self.logs is not None
        for request_id in changed:
            request = await self.store.get(request_id)
            for event in await self.store.audit_trail(request_id):
                if event.seq > after:
                    tool = request.tool if request else None
                    # The status this event left it in, where the event says; else the one read now.
                    now = request.status.value if request else None
                    await self.logs.emit(
                        level_of(event.event), message(event, tool, status_after(event, now))
                    )

    async def publish(self, uri: str) -> None:
        await self.bus.publish(ResourceUpdated(uri=uri))
        await self.legacy.notify(uri)

    async def _starting_point(self) -> int:
        """The newest audit seq, once the store answers: a store that is down as the server starts must
        not end the server (this task's failure would end its task group)."""
        while True:
            try:
                _, seen = await self.store.changed_since(None)
            except StoreUnavailable as fault:
                outage_of(self.store).failed(fault)
                await anyio.sleep(IDLE_SECONDS)
                continue
            return seen

    async def run(self, local_change: Callable[[], anyio.Event] | None = None) -> None:
        """Forever: wait for a change, publish what changed. Cancel it to stop.

        `local_change` gives the event this process sets at its next change, heard without polling."""
        seen = await self._starting_point()
        version = await self.store.change_counter()
        while True:
            if self.listened():
                local = local_change() if local_change is not None else None
                await wait_for_change(self.store, version, IDLE_SECONDS, local=local)
                current = await self.store.change_counter()
                if current == version:
                    continue
                version = current
                if not self.listened():
                    continue  # the last listener left meanwhile
            else:
                await self._until_listened()
                # The newcomer hears at once of what changed while nobody listened (since `seen`): a
                # change committed while it subscribed is among them.
                version = await self.store.change_counter()
            try:
                before = seen
                changed, seen = await self.store.changed_since(seen)
                for request_id in changed:
                    await self.publish(request_uri(request_id))
                if changed:
                    await self.publish(PENDING_URI)
                if self.logs:
                    await self.log(changed, after=before)
            except StoreUnavailable as fault:
                outage_of(self.store).failed(fault)  # logged once per outage, not once per pass
            except Exception:
                logger.exception("publishing request changes failed; carrying on")
