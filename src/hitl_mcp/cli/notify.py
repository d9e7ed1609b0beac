"""`hitl notify status|retry`: how the notification outbox stands, and a second chance for dead deliveries.

The server's delivery worker sends what the outbox holds; these commands only read the outbox or put dead
rows back in line for it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, replace
from typing import TypeVar

import anyio
import click

from hitl_mcp.cli.app import main
from hitl_mcp.cli.common import load, refusals, table, truncate
from hitl_mcp.errors import ConfigError, NotPending
from hitl_mcp.models import utc
from hitl_mcp.notify.outbox import Delivery, OutboxStore, OutboxSummary
from hitl_mcp.store import open_store

T = TypeVar("T")


def _with_store(work: Callable[[OutboxStore], Awaitable[T]], *, readonly: bool = False) -> T:
    settings = load()
    path = settings.store.path
    if path is not None and not path.is_file():
        raise ConfigError(f"no store at {path}; HITL_DB names the store file (the one `hitl serve` uses)")

    async def run() -> T:
        # Without the notifiers: these commands move outbox rows, they never route new ones.
        store = await open_store(replace(settings, notifiers=()), readonly=readonly)
        try:
            return await work(store)
        finally:
            await store.close()

    return anyio.run(run)


@main.group("notify")
def notify_group() -> None:
    """Notifications for humans ([[notify]] in the config): what is waiting, delivered or dead."""


@notify_group.command("status")
@click.option(
    "--limit", default=50, show_default=True, type=click.IntRange(1), help="List at most this many."
)
@click.option("--json", "as_json", is_flag=True, help="Print counts and deliveries as JSON.")
@refusals
def status(limit: int, as_json: bool) -> None:
    """Count deliveries per state (pending, delivered, dead) and list the dead ones with their last error,
    and those still retrying after a failure."""
    summary: OutboxSummary = _with_store(lambda store: store.outbox_summary(limit), readonly=True)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "counts": summary.counts,
                    "dead": [_record(d) for d in summary.dead],
                    "failing": [_record(d) for d in summary.failing],
                },
                indent=2,
                ensure_ascii=False,
            )
        )
        return
    counts = summary.counts
    click.echo(f"pending {counts['pending']}  delivered {counts['delivered']}  dead {counts['dead']}")
    if summary.dead:
        click.echo("\nDead (`hitl notify retry ID` sends one again):")
        click.echo(_table(summary.dead))
    if summary.failing:
        click.echo("\nFailing, to be retried:")
        click.echo(_table(summary.failing, next_attempt=True))


def _record(delivery: Delivery) -> dict[str, object]:
    found = asdict(delivery)
    found["created_at"] = utc(delivery.created_at).isoformat()
    found["next_attempt_at"] = utc(delivery.next_attempt_at).isoformat()
    return found


def _table(deliveries: list[Delivery], next_attempt: bool = False) -> str:
    now = time.time()
    header = (
        "ID",
        "EVENT",
        "REQUEST",
        "TARGET",
        "ATTEMPTS",
        "NEXT" if next_attempt else "FILED",
        "LAST ERROR",
    )
    rows = [
        (
            str(d.row_id),
            d.event,
            d.request_id[:10],
            d.label,
            str(d.attempts),
            f"in {max(0, int(d.next_attempt_at - now))}s"
            if next_attempt
            else utc(d.created_at).isoformat(timespec="seconds"),
            truncate(d.last_error or "-", 100),
        )
        for d in deliveries
    ]
    return table(header, rows)


@notify_group.command("retry")
@click.argument("delivery_ids", metavar="[ID]...", nargs=-1, type=click.IntRange(1))
@click.option("--all", "all_dead", is_flag=True, help="Every dead delivery.")
@refusals
def retry(delivery_ids: tuple[int, ...], all_dead: bool) -> None:
    """Put dead deliveries (IDs from `hitl notify status`) back in line, with a fresh count of attempts;
    a running server sends them at once."""
    if bool(delivery_ids) == all_dead:
        raise click.UsageError("give the IDs of dead deliveries, or --all")
    wanted = None if all_dead else sorted(set(delivery_ids))
    requeued = _with_store(lambda store: store.outbox_retry(wanted, time.time()))
    if wanted is not None and requeued != wanted:
        missing = ", ".join(str(i) for i in wanted if i not in requeued)
        done = f"; requeued {', '.join(map(str, requeued))}" if requeued else ""
        raise NotPending(f"not dead (or no such delivery): {missing}{done}")
    noun = "delivery" if len(requeued) == 1 else "deliveries"
    click.echo(
        f"requeued {len(requeued)} {noun}" + (f": {', '.join(map(str, requeued))}" if requeued else "")
    )
