"""One racer of tests/test_race.py: a process approving and executing the same requests as every other.

    python tests/race_driver.py --as NAME --seed N IDS_FILE

It opens the gate on HITL_DB / HITL_CONFIG, prints READY, and waits for one line on stdin — the start signal
every racer gets at once. Then it goes through the ids (one a line in IDS_FILE) in its own random order:
approves each through the Gate API, as the CLI and the MCP `approve` tool do, and tries to claim and run it
whether or not its approval won, racing the claim itself. Refusals are expected (someone else got there
first). It ends with one JSON line of counts on stdout and exits 0, or exits 1 at the first surprise.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import anyio

from hitl_mcp.config import load_settings
from hitl_mcp.errors import NotPending
from hitl_mcp.gate import open_gate
from hitl_mcp.models import Status


async def race(principal: str, seed: int, ids: list[str]) -> dict[str, int]:
    counts = {"approved": 0, "refused": 0, "ran": 0}
    async with open_gate(load_settings(principal=principal)) as gate:
        print("READY", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)
        random.Random(seed).shuffle(ids)
        for request_id in ids:
            try:
                request = await gate.approve(request_id, principal)
                counts["approved"] += 1
            except NotPending:
                counts["refused"] += 1
            # Whoever approved it may not have claimed it yet: race for the claim too.
            request = await gate.execute(request_id)
            if request.claimed_by == gate.worker:
                counts["ran"] += 1
            if request.status is Status.FAILED:
                raise RuntimeError(f"request {request_id} failed: {request.error}")
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--as", dest="principal", required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("ids", type=Path)
    options = parser.parse_args()
    ids = options.ids.read_text(encoding="utf-8").split()
    counts = anyio.run(race, options.principal, options.seed, ids)
    print(json.dumps(counts), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
