"""`hitl upstreams`: each configured upstream probed for real (tests/upstream_server.py, and a command that
does not exist), shown as a table for people and as JSON for machines."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.environment import process_env
from tests.test_cli import hitl
from tests.upstream_server import command_line


def config_with(tmp_path: Path, upstreams: str) -> dict[str, str]:
    """The environment of a `hitl` process whose config holds `upstreams`, on a wide terminal."""
    config = tmp_path / "hitl.toml"
    config.write_text(upstreams, encoding="utf-8")
    return {**process_env(tmp_path, config), "COLUMNS": "200"}


def notes_table(name: str, counter: Path, *flags: str, extra: str = "") -> str:
    command, *args = command_line(counter, *flags)
    return f"[upstreams.{name}]\ncommand = {json.dumps(command)}\nargs = {json.dumps(args)}\n{extra}\n"


READY_AND_FAILING = """
gate = ["write_*"]
pass = ["read_*", "write_draft"]

[upstreams.notes.preview.write_note]
tool = "read_note"
arguments = { path = "{path}" }

[upstreams.broken]
command = "/nonexistent/bin/upstream-server"
"""


def test_hitl_upstreams_shows_each_upstream_and_every_tool_with_the_rule_that_decided(tmp_path: Path) -> None:
    env = config_with(tmp_path, notes_table("notes", tmp_path / "counter.jsonl", extra=READY_AND_FAILING))

    shown = hitl(env, "upstreams")

    assert shown.returncode == 1, shown.stderr  # one upstream is not ready
    lines = [line.split() for line in shown.stdout.splitlines()]
    assert lines[0] == ["UPSTREAM", "KIND", "STATUS", "DETAIL", "TARGET"]
    assert lines[1][:8] == ["notes", "stdio", "ready", "10", "tools:", "7", "gated,", "3"]
    assert lines[1][8:10] == ["passed", sys.executable]  # then its script and arguments, cut to fit
    assert lines[2] == [
        "broken",
        "stdio",
        "failed",
        "command",
        "not",
        "found:",
        *["/nonexistent/bin/upstream-server"] * 2,
    ]
    rows = {
        line.split()[0]: " ".join(line.split()[1:]) for line in shown.stdout.splitlines()[4:] if "__" in line
    }
    assert rows["notes__write_note"].startswith(
        "gated gate pattern 'write_*'; preview: read_note Write `text`"
    )
    assert rows["notes__read_note"].startswith("passed pass pattern 'read_*' The note at `path`.")
    assert rows["notes__sleep"].startswith("passed annotation readOnlyHint = true")
    assert rows["notes__crash"].startswith("gated no pattern and not marked read-only (fail closed)")
    assert len(rows) == 10
    assert shown.stderr == ""  # the upstream's own stderr does not bury the table


def test_hitl_upstreams_json_gives_the_exact_state_of_each(tmp_path: Path) -> None:
    env = config_with(tmp_path, notes_table("notes", tmp_path / "counter.jsonl", extra=READY_AND_FAILING))

    shown = hitl(env, "upstreams", "--json")

    assert shown.returncode == 1, shown.stderr
    notes, broken = json.loads(shown.stdout)
    assert (notes["name"], notes["kind"], notes["status"], notes["server"]) == (
        "notes",
        "stdio",
        "ready",
        "test-upstream",
    )
    tools = {tool["name"]: tool for tool in notes["tools"]}
    assert tools["write_note"] == {
        "name": "write_note",
        "exposed_as": "notes__write_note",
        "decision": "gated",
        "why": "gate pattern 'write_*'",
        "description": "Write `text` as the note at `path` (one effect line).",
        "annotations": None,
        "preview": {"tool": "read_note", "arguments": {"path": "{path}"}},
    }
    assert tools["stats"]["annotations"] == {"readOnlyHint": True}
    assert (broken["status"], broken["reason"], broken["tools"]) == (
        "failed",
        "command not found: /nonexistent/bin/upstream-server",
        [],
    )
    assert broken["target"] == {"upstream": "broken", "command": "/nonexistent/bin/upstream-server"}


def test_hitl_upstreams_takes_a_desktop_file_and_exits_0_when_every_upstream_is_ready(tmp_path: Path) -> None:
    env = config_with(tmp_path, "")
    command, *args = command_line(tmp_path / "counter.jsonl", "--name", "evil\x1b[2J\u202ename")
    desktop = tmp_path / "claude_desktop_config.json"
    desktop.write_text(
        json.dumps({"mcpServers": {"notes": {"type": "stdio", "command": command, "args": args}}})
    )

    shown = hitl(env, "upstreams", "--upstreams", str(desktop))

    assert shown.returncode == 0, shown.stderr
    # The upstream names itself: what it says is shown escaped, never obeyed by the terminal.
    assert "notes: evil\\x1b[2J\\u202ename" in shown.stdout.splitlines()
    assert "\x1b" not in shown.stdout and "\u202e" not in shown.stdout
    # Without patterns, annotations decide.
    assert "notes__read_note    passed    annotation readOnlyHint = true" in shown.stdout


def test_hitl_upstreams_with_none_configured_says_so(tmp_path: Path) -> None:
    shown = hitl(config_with(tmp_path, ""), "upstreams")

    assert (shown.returncode, shown.stdout.strip()) == (
        0,
        "No upstreams are configured ([upstreams.NAME] in the config file, or --upstreams FILE).",
    )


def test_a_wrong_upstream_config_is_one_line_and_exit_2(tmp_path: Path) -> None:
    missing_command = hitl(config_with(tmp_path, "[upstreams.fs]\nargs = ['x']\n"), "upstreams")
    missing_variable = hitl(
        config_with(tmp_path, '[upstreams.fs]\ncommand = "npx"\nenv = { KEY = "${HITL_TEST_UNSET_KEY}" }\n'),
        "upstreams",
    )

    assert (missing_command.returncode, missing_command.stderr.splitlines()) == (
        2,
        ["hitl: upstreams.fs: needs a command (a program hitl starts) or a url (a streamable HTTP endpoint)"],
    )
    assert (missing_variable.returncode, missing_variable.stderr.splitlines()) == (
        2,
        ["hitl: upstreams.fs.env.KEY: ${HITL_TEST_UNSET_KEY} is not set in the environment hitl runs in"],
    )
