"""A grant's `--uses N` under races from several processes, on SQLite and on PostgreSQL: N racing covered
calls run, the rest file pending requests; and a revocation takes effect for the next call on every server
of a shared PostgreSQL store."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from hitl_mcp.config import load_settings
from hitl_mcp.gate import Gate, open_gate
from tests.inbox import make_site, serve
from tests.test_auth import connect
from tests.test_server import ok

DRIVER = Path(__file__).with_name("grant_race_driver.py")
PROCESSES = 4
CALLS = 6
USES = 7


def race(env: dict[str, str]) -> Counter[str]:
    """Start PROCESSES drivers, release them together, and count the statuses their calls got."""
    drivers = [
        subprocess.Popen(
            [sys.executable, str(DRIVER), str(CALLS)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).parent.parent,
        )
        for _ in range(PROCESSES)
    ]
    try:
        for driver in drivers:
            assert driver.stdout is not None
            ready = driver.stdout.readline().strip()
            assert ready == "READY", driver.stderr.read() if driver.stderr else ready
        for driver in drivers:
            assert driver.stdin is not None
            driver.stdin.write("GO\n")
            driver.stdin.flush()
        outputs = [driver.communicate(timeout=120) for driver in drivers]
    finally:
        for driver in drivers:
            driver.kill()
            driver.wait(timeout=10)
    for driver, (_, stderr) in zip(drivers, outputs, strict=True):
        assert driver.returncode == 0, stderr
    return Counter(line for stdout, _ in outputs for line in stdout.split())


@pytest.fixture(params=["sqlite", "postgres"])
def race_env(request: pytest.FixtureRequest, env: dict[str, str]) -> dict[str, str]:
    if request.param == "sqlite":
        return env
    url: str = request.getfixturevalue("pg_url")
    return env | {"HITL_DB": url}


@pytest.fixture
async def race_gate(race_env: dict[str, str]) -> AsyncIterator[Gate]:
    async with open_gate(load_settings(race_env)) as gate:
        yield gate


async def test_uses_are_spent_exactly_under_a_race_of_several_processes(
    race_env: dict[str, str], race_gate: Gate
) -> None:
    grant = await race_gate.add_grant(
        "buy_stock", "agent", "symbol = 'GOOGL'", False, timedelta(hours=1), USES, None, by="carol"
    )

    statuses = race(race_env)

    assert statuses == Counter({"executed": USES, "pending": PROCESSES * CALLS - USES})
    spent = await race_gate.grant(grant.id)
    assert (spent.status, spent.uses_left, spent.uses_made) == ("used-up", 0, USES)
    granted = [record async for record in race_gate.store.audit_records() if record.event == "granted"]
    assert len(granted) == USES


async def test_revocation_takes_effect_for_the_next_call_on_every_server(pg_url: str, tmp_path: Path) -> None:
    site = make_site(tmp_path, tokens=True)
    env = site.env | {"HITL_DB": pg_url}
    order = {"symbol": "GOOGL", "quantity": 5, "price": 150.0}
    body = {"tool": "buy_stock", "requester": "agent", "when": "quantity <= 10", "expires": "1h"}
    with (
        serve(site, "one.log", env) as one,
        serve(site, "two.log", env) as two,
        one.api(site.tokens["alice"]) as alice,
        one.api(site.tokens["bob"]) as bob,
    ):
        grant = alice.post("/api/v1/grants", json=body).json()
        assert bob.post(f"/api/v1/grants/{grant['id']}/approve").json()["status"] == "active"
        async with connect(two.mcp, site.tokens["agent"]) as agent:
            covered = ok(await agent.call_tool("buy_stock", order))
            revoked = alice.post(f"/api/v1/grants/{grant['id']}/revoke")
            after = ok(await agent.call_tool("buy_stock", order))

    assert covered["status"] == "executed"
    assert revoked.status_code == 200
    assert after["status"] == "pending"
