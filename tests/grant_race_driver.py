"""A process that files CALLS calls a grant may cover, all at once, the moment it reads a line on stdin,
and prints each request's status. tests/test_grants_race.py starts several and releases them together, so
their calls race for the grant's uses across processes.

    python tests/grant_race_driver.py CALLS
"""

from __future__ import annotations

import sys

import anyio
import anyio.to_thread

from hitl_mcp.config import load_settings
from hitl_mcp.gate import open_gate


async def race(calls: int) -> None:
    async with open_gate(load_settings()) as gate:
        print("READY", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)
        statuses: list[str] = []

        async def one(number: int) -> None:
            arguments = {"symbol": "GOOGL", "quantity": number, "price": 1.0}
            statuses.append((await gate.file("buy_stock", arguments, "agent")).status.value)

        async with anyio.create_task_group() as group:
            for number in range(1, calls + 1):
                group.start_soon(one, number)
        print("\n".join(statuses), flush=True)


if __name__ == "__main__":
    anyio.run(race, int(sys.argv[1]))
