"""The config file and environment a test's `hitl` processes get: its own store, nothing of the user's."""

from __future__ import annotations

import os
from pathlib import Path


def write_config(path: Path, *, smtp_port: int, extra: str = "") -> Path:
    """A config with quick housekeeping, the ledger beside it, and SMTP to a test server on loopback."""
    path.write_text(
        f"""
[gate]
default_ttl_seconds = 3600
sweep_interval_seconds = 0.2
orphan_grace_seconds = 0.5
# Tests file the same call many times on purpose; tests/test_dedup.py turns the dedup window on.
dedup_seconds = 0

[actions.buy_stock]
ledger = "ledger.db"
starting_cash = 100000.0

[actions.send_email]
smtp_host = "127.0.0.1"
smtp_port = {smtp_port}
sender = "agent@example.com"
{extra}""",
        encoding="utf-8",
    )
    return path


def process_env(folder: Path, config: Path) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(folder),
        "HITL_DB": str(folder / "hitl.db"),
        "HITL_CONFIG": str(config),
        "HITL_PRINCIPAL": "agent",
    }
