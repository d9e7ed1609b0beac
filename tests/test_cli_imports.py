"""`hitl list` starts fast: it loads the modules listing needs, not the MCP SDK, the web face or the
mail client that `hitl serve` loads (most of a short command's time is its imports). And every command
stays reachable however its module is loaded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from hitl_mcp.cli.app import COMMANDS, load_all, main
from hitl_mcp.config import Settings
from tests.test_cli import BUY, file_request, hitl

# Run the command as the `hitl` script does, then say which modules the process had loaded.
LIST_AND_REPORT = """\
import json, sys
from hitl_mcp.cli import main
try:
    main(["list"])
except SystemExit as done:
    code = done.code
with open(sys.argv[1], "w") as out:
    json.dump({"code": code, "modules": sorted(sys.modules)}, out)
"""


def test_hitl_list_lists_without_loading_the_mcp_sdk_or_the_web_face(
    env: dict[str, str], settings: Settings, tmp_path: Path
) -> None:
    request_id = file_request(settings, "buy_stock", BUY)
    report = tmp_path / "modules.json"

    listed = subprocess.run(
        [sys.executable, "-c", LIST_AND_REPORT, str(report)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert request_id[:10] in listed.stdout, listed.stderr
    loaded = json.loads(report.read_text())
    assert loaded["code"] == 0
    heavy = [
        name
        for name in loaded["modules"]
        if name.split(".")[0] in {"mcp", "mcp_types", "starlette", "uvicorn", "jinja2", "aiosmtplib"}
        or name.startswith("hitl_mcp.web")
    ]
    assert heavy == []


def test_every_command_is_found_through_its_own_module() -> None:
    load_all()
    where = {name: command.callback.__module__ for name, command in main.commands.items() if command.callback}
    # A command missing from COMMANDS works but loads every module first: slow for no reason.
    assert {name: f"hitl_mcp.cli.{module}" for name, module in COMMANDS.items()} == where


def test_help_lists_every_command_and_an_unlisted_name_is_refused(env: dict[str, str]) -> None:
    shown = hitl(env, "--help")
    unknown = hitl(env, "frobnicate")

    assert shown.returncode == 0
    for name in COMMANDS:
        assert f"  {name} " in shown.stdout or f"  {name}\n" in shown.stdout, name
    assert unknown.returncode == 2
    assert "No such command 'frobnicate'" in unknown.stderr
