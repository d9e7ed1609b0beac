"""A process filing requests from many concurrent tasks, so its transitions share commits, printing each
request's id the moment its filing call returns (acknowledged = durable). tests/test_group_commit.py
kills it with SIGKILL at a random moment and checks that every printed id survived.

    python tests/filing_driver.py TASKS
"""

from __future__ import annotations

import sys

import anyio

from hitl_mcp.config import load_settings
from hitl_mcp.gate import open_gate


async def file_forever(tasks: int) -> None:
    async with open_gate(load_settings()) as gate:

        async def lane(number: int) -> None:
            count = 0
            while True:
                count += 1
                arguments = {"symbol": "GOOGL", "quantity": number * 100_000 + count, "price": 1.0}
                request = await gate.file("buy_stock", arguments, "agent")
                sys.stdout.write(f"{request.request_id}\n")
                sys.stdout.flush()

        print("READY", flush=True)
        async with anyio.create_task_group() as group:
            for number in range(1, tasks + 1):
                group.start_soon(lane, number)


if __name__ == "__main__":
    anyio.run(file_forever, int(sys.argv[1]))
