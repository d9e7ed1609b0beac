"""`hitl list` starts fast: it loads the modules listing needs, not the MCP SDK, the web face or the
mail client that `hitl serve` loads (most of a short command's time is its imports); once the settings
have been loaded in full, a listing on the same settings loads neither pydantic nor the models. And every
command stays reachable however its module is loaded."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from hitl_mcp.cli.app import COMMANDS, load_all, main
from hitl_mcp.config import Settings
from tests.test_cli import BUY, file_request, hitl

# Run the command as the `hitl` script does, then say which modules the process had loaded.
LIST_AND_REPORT = """\
import json, sys
from hitl_mcp.cli import main
try:
    main(["list", *sys.argv[2:]])
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


def listed_with_modules(
    env: dict[str, str], report: Path, *args: str
) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """`hitl list ARGS` in a process of its own, and the modules that process had loaded."""
    listed = subprocess.run(
        [sys.executable, "-c", LIST_AND_REPORT, str(report), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return listed, set(json.loads(report.read_text())["modules"])


def heavy_modules(modules: set[str]) -> list[str]:
    """What a listing on a store has no use for: pydantic, the models, the gate, the store's classes."""
    whole = {"pydantic", "pydantic_core", "mcp", "anyio"}
    ours = {"hitl_mcp.models", "hitl_mcp.config", "hitl_mcp.gate", "hitl_mcp.store"}
    return sorted(name for name in modules if name.split(".")[0] in whole or name in ours)


def timeless(table: str) -> list[list[str]]:
    """A table's cells but its age and time left, which move on between two listings."""
    rows = [re.split(r"\s{2,}", line) for line in table.splitlines()]
    return [cells[:1] + cells[2:-1] for cells in rows]


def test_a_second_listing_prints_the_same_page_without_pydantic_or_the_models(
    env: dict[str, str], settings: Settings, tmp_path: Path
) -> None:
    ids = [file_request(settings, "buy_stock", {**BUY, "quantity": n}) for n in range(1, 4)]

    first, first_modules = listed_with_modules(env, tmp_path / "first.json", "--limit", "2")
    second, second_modules = listed_with_modules(env, tmp_path / "second.json", "--limit", "2")

    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    # The first loads and checks the whole config; the second, on the same settings, reads the store alone.
    assert "pydantic" in first_modules
    assert heavy_modules(second_modules) == []
    assert timeless(second.stdout) == timeless(first.stdout)
    assert ids[0][:10] in second.stdout and ids[2][:10] not in second.stdout
    assert second.stderr == first.stderr
    assert second.stderr.startswith("1 more: hitl list --limit 2 --cursor ")


@pytest.mark.parametrize(
    ("args", "said"),
    [
        ((), "Nothing is waiting for a decision."),
        (("--status", "rejected"), "No requests."),
        (("--cursor", "999"), "No more requests."),
    ],
)
def test_a_quick_listing_of_nothing_says_what_the_full_one_says(
    env: dict[str, str], settings: Settings, tmp_path: Path, args: tuple[str, ...], said: str
) -> None:
    file_request(settings, "buy_stock", BUY)
    with sqlite3.connect(settings.db_path) as conn:
        conn.execute("UPDATE requests SET status = 'approved'")
    first, _ = listed_with_modules(env, tmp_path / "first.json", *args)

    second, modules = listed_with_modules(env, tmp_path / "second.json", *args)

    assert heavy_modules(modules) == []
    assert first.stdout == second.stdout == said + "\n"
    assert second.stderr == ""


def test_a_config_changed_after_a_listing_is_checked_again(
    env: dict[str, str], settings: Settings, config_file: Path
) -> None:
    file_request(settings, "buy_stock", BUY)
    assert hitl(env, "list").returncode == 0

    config_file.write_text(config_file.read_text() + "\n[gate]\ndefault_ttl_seconds = -1\n")
    refused = hitl(env, "list")

    assert refused.returncode == 2
    assert refused.stdout == ""
    assert refused.stderr.startswith("hitl: ")


def test_a_listing_after_the_first_still_says_an_executing_requests_outcome_is_unknown(
    env: dict[str, str], settings: Settings
) -> None:
    request_id = file_request(settings, "buy_stock", BUY)
    assert hitl(env, "list").returncode == 0
    with sqlite3.connect(settings.db_path) as conn:
        # What a claimant that lost its target mid-call leaves: whether it ran is unknown.
        conn.execute(
            "UPDATE requests SET status = 'executing', effect = 'unknown' WHERE id = ?", (request_id,)
        )

    listed = hitl(env, "list")

    assert listed.returncode == 0, listed.stderr
    assert "executing (outcome unknown)" in listed.stdout


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("PRAGMA user_version = 6", "holds schema 6"),
        ("PRAGMA application_id = 7", "is not a hitl store"),
    ],
)
def test_a_store_changed_after_a_listing_is_refused_as_before(
    env: dict[str, str], settings: Settings, change: str, expected: str
) -> None:
    file_request(settings, "buy_stock", BUY)
    assert hitl(env, "list").returncode == 0

    with sqlite3.connect(settings.db_path) as conn:
        conn.execute(change)
    refused = hitl(env, "list")

    assert refused.returncode == 2, refused.stdout
    assert expected in refused.stderr


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


def test_a_commands_modules_load_with_the_collector_paused_and_are_frozen_after() -> None:
    # What importing made lives as long as the process: frozen, the collector never walks it again; and
    # the collector is on again for the command itself (a `hitl watch` runs for hours).
    script = (
        "import gc, click\n"
        "from hitl_mcp.cli.app import main\n"
        "before = gc.get_freeze_count()\n"
        "main.get_command(click.Context(main), 'serve')\n"
        "print(gc.isenabled(), gc.get_freeze_count() > before + 10_000)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True"]
