"""A server embedded in a program that set up no logging writes hitl's one-line records, not the SDK's
console tables (which cost more than the rest of a file + approve cycle)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = """
import os

import anyio
from mcp import Client

from hitl_mcp.config import load_settings
from hitl_mcp.server import build_server


async def main() -> None:
    async with Client(build_server(load_settings(dict(os.environ)))) as client:
        filed = await client.call_tool("buy_stock", {"symbol": "GOOGL", "quantity": 1, "price": 1.0})
        print(filed.structured_content["request_id"], flush=True)


anyio.run(main)
"""


def test_an_embedded_server_logs_a_request_on_one_line(tmp_path: Path, env: dict[str, str]) -> None:
    # A fresh process: under pytest the root logger always has handlers, so the default never applies.
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    request_id = done.stdout.strip()
    lines = done.stderr.splitlines()
    assert f"hitl-mcp: request {request_id} filed: buy_stock by agent, now pending" in lines, done.stderr
    # The SDK's console handler names the source file of every record in a column of its own.
    assert not [line for line in lines if "logs.py:" in line], done.stderr
