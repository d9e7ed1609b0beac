"""The store and the ledger hold arguments, email bodies and orders: their files (and SQLite's -wal and -shm
beside them) are made readable by their owner only, whatever the umask, and `hitl db status` warns about a
store others can read."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from hitl_mcp.config import Settings
from tests.cli_in_process import hitl
from tests.test_cli import file_request

# Run in a process of its own, so the umask it sets is nobody else's: it opens the store and the ledger,
# writes to both, and reports every file's mode while the connections (so the -wal and -shm) are open.
MAKE_FILES = """
import json, os, sys, anyio
from pathlib import Path
from hitl_mcp.config import load_settings
from hitl_mcp.gate import open_gate
from hitl_mcp.ledger import Ledger

os.umask(int(sys.argv[1], 8))
folder = Path(sys.argv[2])

async def main() -> None:
    settings = load_settings({"HITL_DB": str(folder / "hitl.db"), "HITL_PRINCIPAL": "agent"})
    ledger = Ledger(folder / "ledger.db", 1000.0)
    async with open_gate(settings) as gate:
        await gate.file("buy_stock", {"symbol": "GOOGL", "quantity": 1, "price": 1.0}, "agent")
        await ledger.buy("order-1", "GOOGL", 1, 1.0)
        modes = {path.name: oct(path.stat().st_mode & 0o777) for path in sorted(folder.iterdir())}
    print(json.dumps(modes))

anyio.run(main)
"""


@pytest.mark.parametrize("umask", ["022", "000"])
def test_the_store_and_the_ledger_are_made_readable_by_their_owner_only(tmp_path: Path, umask: str) -> None:
    made = subprocess.run(
        [sys.executable, "-c", MAKE_FILES, umask, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert made.returncode == 0, made.stderr
    modes = json.loads(made.stdout)
    names = {"hitl.db", "hitl.db-wal", "hitl.db-shm", "ledger.db", "ledger.db-wal", "ledger.db-shm"}
    assert names <= set(modes), modes
    assert {name: modes[name] for name in names} == dict.fromkeys(names, "0o600")


def test_db_status_warns_about_a_store_others_can_read(env: dict[str, str], settings: Settings) -> None:
    file_request(settings, "buy_stock", {"symbol": "GOOGL", "quantity": 1, "price": 1.0})
    private = hitl(env, "db", "status")
    os.chmod(settings.db_path, 0o644)
    exposed = hitl(env, "db", "status")
    exposed_json = hitl(env, "db", "status", "--json")

    assert private.returncode == 0 and "warning" not in private.stdout, private.stdout
    assert stat.S_IMODE(settings.db_path.stat().st_mode) == 0o644
    assert exposed.returncode == 0, exposed.stderr
    assert (
        f"warning  {settings.db_path} is mode 0644: others on this machine can read the arguments and email "
        f"bodies it holds; chmod 600 {settings.db_path}"
    ) in exposed.stdout.splitlines()
    # SQLite gives a -wal made meanwhile the file's new mode: listed too, when there is one.
    found = json.loads(exposed_json.stdout)["readable_by_others"]
    assert found[0] == {"file": str(settings.db_path), "mode": "0644"}
    assert {item["mode"] for item in found} == {"0644"}


async def test_a_ledger_in_a_folder_not_made_yet_is_made_in_a_private_folder(tmp_path: Path) -> None:
    """With a PostgreSQL store nothing else makes the user's data folder: the first order must not fail."""
    from hitl_mcp.ledger import Ledger

    path = tmp_path / "data" / "hitl-mcp" / "ledger.db"
    fill = await Ledger(path, 1000.0).buy("r1", "AAPL", 1, 10.0)

    assert fill.order_id == "r1"
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
