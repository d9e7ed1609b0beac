"""Group commit: transitions arriving together share one durable commit, each in its own savepoint, and
nothing acknowledged is lost when the process is killed mid-batch."""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import anyio
import pytest

from hitl_mcp.audit import read_records, verify
from hitl_mcp.errors import NotFound, NotPending
from hitl_mcp.gate import Gate
from hitl_mcp.models import Status
from hitl_mcp.store.sqlite import SQLiteStore

DRIVER = Path(__file__).with_name("filing_driver.py")


def order(quantity: int) -> dict[str, object]:
    return {"symbol": "GOOGL", "quantity": quantity, "price": 1.0}


async def test_concurrent_filings_share_commits_and_all_land(gate: Gate) -> None:
    store = gate.store
    assert isinstance(store, SQLiteStore)
    before = store.commit_counts.commits
    ids: list[str] = []

    async def file(quantity: int) -> None:
        ids.append((await gate.file("buy_stock", order(quantity), "agent")).request_id)

    async with anyio.create_task_group() as tasks:
        for quantity in range(1, 41):
            tasks.start_soon(file, quantity)

    counts = store.commit_counts
    assert len(set(ids)) == 40
    assert counts.commits - before < 40  # shared: fewer durable commits than transitions
    assert max(counts.batches) > 1
    page = await gate.list(limit=100)
    assert {request.request_id for request in page.requests} == set(ids)


async def test_a_refused_transition_in_a_batch_undoes_only_itself(gate: Gate) -> None:
    target = await gate.file("buy_stock", order(5), "agent")
    outcomes: dict[str, str] = {}

    async def approve(principal: str) -> None:
        try:
            await gate.decide(target.request_id, principal, "approve")
            outcomes[principal] = "approved"
        except NotPending:
            outcomes[principal] = "refused"

    async def unknown() -> None:
        try:
            await gate.decide("f" * 20, "zed", "approve")
        except NotFound:
            outcomes["zed"] = "not found"

    async def file_one() -> None:
        await gate.file("buy_stock", order(6), "agent")
        outcomes["filed"] = "yes"

    async with anyio.create_task_group() as tasks:
        for number in range(8):
            tasks.start_soon(approve, f"approver{number}")
        tasks.start_soon(unknown)
        tasks.start_soon(file_one)

    assert sorted(outcomes.values()).count("approved") == 1
    assert outcomes["zed"] == "not found" and outcomes["filed"] == "yes"
    request = await gate.get(target.request_id)
    assert request.status is Status.APPROVED and len(request.decisions) == 1
    with closing(sqlite3.connect(gate.settings.db_path)) as conn:
        assert verify(conn).broken is None
        events = [record.event for record in read_records(conn) if record.request_id == target.request_id]
    assert events == ["filed", "approved"]


@pytest.mark.parametrize("trial", range(3))
def test_a_kill_during_batched_commits_loses_nothing_acknowledged(
    env: dict[str, str], tmp_path: Path, trial: int
) -> None:
    driver = subprocess.Popen(
        [sys.executable, str(DRIVER), "16"],
        env={**env, "PYTHONPATH": str(DRIVER.parent.parent)},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert driver.stdout is not None
    assert driver.stdout.readline() == "READY\n"
    acknowledged: list[str] = []
    wanted = random.Random(trial).randint(50, 400)
    deadline = time.monotonic() + 60
    while len(acknowledged) < wanted and time.monotonic() < deadline:
        acknowledged.append(driver.stdout.readline().strip())
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=10)
    # Whatever it printed before dying was acknowledged to a caller: it must all be there.
    acknowledged += [line.strip() for line in driver.stdout.read().splitlines() if line.strip()]

    with closing(sqlite3.connect(Path(env["HITL_DB"]))) as conn:
        stored = {row[0] for row in conn.execute("SELECT id FROM requests")}
        assert verify(conn).broken is None
    assert len(acknowledged) >= wanted
    assert set(acknowledged) <= stored
