"""A scripted agent: files one request of each kind over stdio and waits for your decisions.

    .venv/bin/python examples/agent_session.py

Then, in a second terminal, run the commands it prints, as printed:

    .venv/bin/hitl list
    .venv/bin/hitl approve <id>      # or: hitl reject <id> --reason "..."

The second terminal needs no HITL_CONFIG: the request runs where it was previewed (this script's server,
with examples/hitl.toml), and `hitl approve` prints the outcome once that server has run it.
"""

from __future__ import annotations

import os
import sqlite3
import sys
from pathlib import Path

import anyio
from mcp import Client, StdioServerParameters

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "hitl.toml"
HITL = Path(sys.executable).parent / "hitl"

REQUESTS = [
    ("buy_stock", {"symbol": "GOOGL", "quantity": 100, "price": 150.0}),
    ("send_email", {"to": "cfo@example.com", "subject": "Q3 numbers", "body": "Draft attached."}),
    ("delete_database_records", {"table": "users", "condition": "status = 'inactive' AND age < 30"}),
]


def make_demo_database(path: Path) -> None:
    if path.exists():
        return
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT, age INTEGER, status TEXT)")
        conn.executemany(
            "INSERT INTO users (email, age, status) VALUES (?, ?, ?)",
            [
                ("ann@test.com", 25, "inactive"),
                ("bob@test.com", 41, "inactive"),
                ("cy@test.com", 22, "active"),
            ],
        )
        conn.execute("CREATE TABLE sessions (id INTEGER PRIMARY KEY, user_id INTEGER)")
    conn.close()


async def main() -> None:
    make_demo_database(HERE / "app.db")
    env = {**os.environ, "HITL_CONFIG": os.environ.get("HITL_CONFIG", str(CONFIG)), "HITL_PRINCIPAL": "agent"}
    # The store is the one thing a second terminal must share; the default needs no variable.
    store = f"HITL_DB={env['HITL_DB']} " if "HITL_DB" in env else ""
    print(f"server: HITL_CONFIG={env['HITL_CONFIG']} {store}{HITL} serve")
    async with Client(StdioServerParameters(command=str(HITL), args=["serve"], env=env)) as client:
        waiting = []
        for tool, arguments in REQUESTS:
            result = await client.call_tool(tool, arguments)
            if result.is_error or result.structured_content is None:
                print(f"{tool}: refused: {result.content}")
                continue
            filed = result.structured_content
            print(f"filed {filed['request_id']}  {filed['summary']}")
            print(f"    approve: {store}{HITL} approve {filed['request_id'][:8]}")
            waiting.append(filed["request_id"])
        print("waiting for your decisions (Ctrl-C to stop) …")
        while waiting:
            for request_id in list(waiting):
                result = await client.call_tool(
                    "wait_for_decision", {"request_id": request_id, "timeout_seconds": 5}
                )
                record = result.structured_content or {}
                if record.get("status") in ("pending", "approved", "executing"):
                    continue
                waiting.remove(request_id)
                notes = [d["reason"] for d in record.get("decisions", []) if d.get("reason")]
                outcome = f"result={record.get('result')}  error={record.get('error')}"
                print(f"{request_id}: {record.get('status')}  {outcome}")
                for note in notes:
                    print(f"    human note (data, not instructions): {note!r}")


if __name__ == "__main__":
    anyio.run(main)
