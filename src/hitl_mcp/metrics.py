"""What `/metrics` tells Prometheus: the queue as the store holds it, and what only this process saw.

Two kinds, kept apart on purpose:

- **Read from the store at scrape time** (`scrape`): the pending queue, its oldest request, requests by
  their final status. Every server on a shared PostgreSQL store answers the same numbers, so a dashboard
  may scrape any of them (take `max`, not `sum`, across servers). Two aggregate queries, however large the
  store: one `GROUP BY tool, status` over the requests, read in one snapshot.
- **Counted in this process** (`PROCESS`): decisions it made, actions it ran,
  notifications it failed to send, its store commits, its upstream sessions. Each server counts its own;
  `sum` them across servers. They start at zero when the process starts, as Prometheus counters do.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from hitl_mcp.models import Status

if TYPE_CHECKING:
    from prometheus_client.core import Metric

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Statuses a request leaves no more (but for `hitl retry` of a failure without effect): their counts only
# grow, until an archive moves requests out, which Prometheus reads as a counter reset.
FINAL = (Status.EXECUTED, Status.FAILED, Status.REJECTED, Status.EXPIRED, Status.CANCELLED)
OPEN = (Status.PENDING, Status.APPROVED, Status.EXECUTING)
FINISHED_EVERY_SECONDS = 60.0
# People answer in seconds to days.
DECISION_BUCKETS = (1, 5, 15, 30, 60, 300, 900, 1800, 3600, 4 * 3600, 12 * 3600, 86400, 3 * 86400, 7 * 86400)
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


# Counted here rather than in prometheus_client's own metric objects: importing prometheus_client takes
# ~150 ms, which every `hitl` command would pay through the store. It is imported only to render a scrape.
@dataclass
class _Histogram:
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def observe(self, value: float) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.buckets) + 1)
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value


class ProcessMetrics:
    """What this process saw: counters and histograms by label values, safe to update from any thread
    (the SQLite store commits in a thread of its own)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.decisions: dict[str, _Histogram] = {}
        self.executions: dict[tuple[str, str], int] = {}
        self.notifications_failed: dict[str, int] = {}
        self.commits: dict[str, _Histogram] = {}

    def decision(self, tool: str, seconds: float) -> None:
        with self._lock:
            self.decisions.setdefault(tool, _Histogram(DECISION_BUCKETS)).observe(max(0.0, seconds))

    def execution(self, tool: str, outcome: str) -> None:
        with self._lock:
            self.executions[tool, outcome] = self.executions.get((tool, outcome), 0) + 1

    def notification_failed(self, channel: str) -> None:
        with self._lock:
            self.notifications_failed[channel] = self.notifications_failed.get(channel, 0) + 1

    def commit(self, backend: str, seconds: float) -> None:
        with self._lock:
            self.commits.setdefault(backend, _Histogram(COMMIT_BUCKETS)).observe(seconds)

    def families(self) -> list[Metric]:
        from prometheus_client.core import CounterMetricFamily

        with self._lock:
            decisions = _histogram_family(
                "hitl_decision_seconds",
                "From filing to the final decision (approved or rejected), for decisions this process made.",
                "tool",
                self.decisions,
            )
            executions = CounterMetricFamily(
                "hitl_executions",
                "Actions this process ran, by how they ended: executed, failed, or unknown (handed over, "
                "then lost).",
                labels=["tool", "outcome"],
            )
            for (tool, outcome), count in sorted(self.executions.items()):
                executions.add_metric([tool, outcome], count)
            failed = CounterMetricFamily(
                "hitl_notifications_failed",
                "Notification attempts this process made that failed (each retry counts), by channel.",
                labels=["channel"],
            )
            for channel, count in sorted(self.notifications_failed.items()):
                failed.add_metric([channel], count)
            commits = _histogram_family(
                "hitl_store_commit_seconds",
                "How long this process's write transactions took, from their start to a durable commit.",
                "backend",
                self.commits,
            )
        return [decisions, executions, failed, commits]


def _histogram_family(name: str, documentation: str, label: str, by: dict[str, _Histogram]) -> Metric:
    from prometheus_client.core import HistogramMetricFamily

    family = HistogramMetricFamily(name, documentation, labels=[label])
    for value, histogram in sorted(by.items()):
        running, buckets = 0, []
        for bound, count in zip((*histogram.buckets, float("inf")), histogram.counts, strict=True):
            running += count
            buckets.append((_bound(bound), running))
        family.add_metric([value], buckets, histogram.total)
    return family


def _bound(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(float(value))


PROCESS = ProcessMetrics()


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


def store_families(tallies: Sequence[Tally], now: float) -> list[Metric]:
    """The store-read metrics, from one `tally` of the store."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

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
    from prometheus_client.core import GaugeMetricFamily

    family = GaugeMetricFamily(
        "hitl_upstream_up",
        "1 while this process holds a live session with the upstream MCP server, else 0.",
        labels=["upstream"],
    )
    for upstream in upstreams:
        family.add_metric([upstream.name], 1.0 if upstream.up else 0.0)
    return family


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
        families += PROCESS.families()
        return render(families)


def render(families: Iterable[Metric]) -> bytes:
    """Families in Prometheus's text format, by prometheus_client. They are gathered before rendering (a
    Collector's `collect` cannot await the store), and handed over as one collector."""
    from prometheus_client import CollectorRegistry, generate_latest

    gathered = list(families)

    class Gathered:
        def collect(self) -> Iterable[Metric]:
            return gathered

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Gathered())
    return generate_latest(registry)
