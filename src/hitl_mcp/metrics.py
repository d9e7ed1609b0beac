"""What `/metrics` tells Prometheus: the queue as the store holds it, and what only this process saw.

Two kinds, kept apart on purpose:

- **Read from the store at scrape time** (`scrape`): the pending queue, its oldest request, requests by
  their final status. Every server on a shared PostgreSQL store answers the same numbers, so a dashboard
  may scrape any of them (take `max`, not `sum`, across servers). Two aggregate queries, however large the
  store: one `GROUP BY tool, status` over the requests, read in one snapshot.
- **Counted in this process** (the module-level `PROCESS` registry): decisions it made, actions it ran,
  notifications it failed to send, its store commits, its upstream sessions. Each server counts its own;
  `sum` them across servers. They start at zero when the process starts, as Prometheus counters do.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hitl_mcp.models import Status

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Statuses a request never leaves: counts of them only grow (until an archive moves requests out, which
# Prometheus reads as a counter reset), so they are counters. The open ones are a gauge.
FINAL = (Status.EXECUTED, Status.FAILED, Status.REJECTED, Status.EXPIRED, Status.CANCELLED)
OPEN = (Status.PENDING, Status.APPROVED, Status.EXECUTING)

FINISHED_EVERY_SECONDS = 60.0

PROCESS = CollectorRegistry(auto_describe=True)

DECISION_SECONDS = Histogram(
    "hitl_decision_seconds",
    "From filing to the final decision (approved or rejected), for decisions made by this process.",
    ["tool"],
    # People answer in seconds to days.
    buckets=(1, 5, 15, 30, 60, 300, 900, 1800, 3600, 4 * 3600, 12 * 3600, 86400, 3 * 86400, 7 * 86400),
    registry=PROCESS,
)
EXECUTIONS = Counter(
    "hitl_executions",
    "Actions this process ran, by how they ended: executed, failed, or unknown (handed over, then lost).",
    ["tool", "outcome"],
    registry=PROCESS,
)
NOTIFICATIONS_FAILED = Counter(
    "hitl_notifications_failed",
    "Notification attempts this process made that failed (each retry counts), by channel.",
    ["channel"],
    registry=PROCESS,
)
COMMIT_SECONDS = Histogram(
    "hitl_store_commit_seconds",
    "How long this process's write transactions took to become durable, from begin to commit.",
    ["backend"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=PROCESS,
)


@dataclass(frozen=True)
class Tally:
    """How many requests of one tool are in one status, and when the oldest of them was filed."""

    tool: str
    status: str
    count: int
    oldest_created_at: float


@runtime_checkable
class Tallied(Protocol):
    """A store that counts its requests in aggregate queries (both of hitl's stores)."""

    async def tally_open(self) -> list[Tally]:
        """Pending, approved and executing requests by tool and status: cheap, read at every scrape."""

    async def tally_finished(self) -> list[Tally]:
        """Finished requests by tool and status: a scan of the requests, read at most once a minute."""


@dataclass(frozen=True)
class UpstreamUp:
    name: str
    up: bool


def observe_decision(tool: str, filed_at: float, now: float) -> None:
    DECISION_SECONDS.labels(tool).observe(max(0.0, now - filed_at))


def observe_execution(tool: str, outcome: str) -> None:
    EXECUTIONS.labels(tool, outcome).inc()


def observe_notification_failed(channel: str) -> None:
    NOTIFICATIONS_FAILED.labels(channel).inc()


def observe_commit(backend: str, seconds: float) -> None:
    COMMIT_SECONDS.labels(backend).observe(seconds)


def store_families(tallies: Sequence[Tally], now: float) -> list[Metric]:
    """The store-read metrics, from one `tally` of the store."""
    pending = GaugeMetricFamily(
        "hitl_requests_pending",
        "Requests waiting for a decision, by tool (read from the store).",
        labels=["tool"],
    )
    oldest = GaugeMetricFamily(
        "hitl_oldest_pending_age_seconds",
        "Age of the oldest request waiting for a decision, by tool (read from the store).",
        labels=["tool"],
    )
    open_requests = GaugeMetricFamily(
        "hitl_requests_open",
        "Requests not yet finished, by tool and status: pending, approved, executing (read from the store).",
        labels=["tool", "status"],
    )
    finished = CounterMetricFamily(
        "hitl_requests",
        "Requests that reached a final status, by tool and that status (read from the store at most once a "
        "minute: every server on a shared store reports the same).",
        labels=["tool", "status"],
    )
    for tally in tallies:
        if tally.status == Status.PENDING.value:
            pending.add_metric([tally.tool], tally.count)
            oldest.add_metric([tally.tool], max(0.0, now - tally.oldest_created_at))
        if tally.status in OPEN:
            open_requests.add_metric([tally.tool, tally.status], tally.count)
        elif tally.status in FINAL:
            finished.add_metric([tally.tool, tally.status], tally.count)
    return [pending, oldest, open_requests, finished]


def upstream_family(upstreams: Iterable[UpstreamUp]) -> Metric:
    family = GaugeMetricFamily(
        "hitl_upstream_up",
        "1 while this process holds a live session with the upstream MCP server, else 0.",
        labels=["upstream"],
    )
    for upstream in upstreams:
        family.add_metric([upstream.name], 1.0 if upstream.up else 0.0)
    return family


class _Families(Collector):
    """Families gathered before the scrape is rendered: the store is read asynchronously, and a
    Collector's `collect` cannot await."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self._families


class Scraper:
    """Renders `/metrics` for one store. Finished requests are counted by scanning the requests, so that
    count is kept for `finished_every` seconds (at 100,000 requests the scan takes ~150 ms on SQLite)."""

    def __init__(
        self,
        store: object,
        upstreams: Callable[[], Iterable[UpstreamUp]] = tuple,
        *,
        finished_every: float = FINISHED_EVERY_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.upstreams = upstreams
        self.finished_every = finished_every
        self.clock = clock
        self._finished: list[Tally] = []
        self._finished_at = float("-inf")

    async def tallies(self) -> list[Tally]:
        if not isinstance(self.store, Tallied):
            return []
        now = self.clock()
        if now - self._finished_at >= self.finished_every:
            self._finished = await self.store.tally_finished()
            self._finished_at = now
        return [*await self.store.tally_open(), *self._finished]

    async def render(self) -> bytes:
        """The whole exposition: the store's tallies, the upstreams, this process's own metrics."""
        families = store_families(await self.tallies(), self.clock())
        families.append(upstream_family(self.upstreams()))
        families += PROCESS.collect()
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Families(families))
        return generate_latest(registry)
