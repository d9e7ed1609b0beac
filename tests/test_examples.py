"""What the examples and the setup promise: every setting in examples/hitl.toml, a client entry that starts
as printed, and a Makefile that names an interpreter too old to use."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, StdioServerParameters
from pydantic import BaseModel

from hitl_mcp.actions import ACTION_TYPES
from hitl_mcp.config import GateSettings, PrincipalSettings, load_settings
from hitl_mcp.notify.settings import Notifier
from hitl_mcp.notify.slack_settings import SlackSettings
from hitl_mcp.policy import ActionPolicy, Level, Rule
from hitl_mcp.tokens import token_sha256
from hitl_mcp.upstream.settings import PreviewCall, RestartSettings, UpstreamSettings
from tests.test_auth import minted, serving
from tests.test_cli import BUY, HITL, hitl

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "hitl.toml"
# A commented-out line of TOML (`# key = …`, `# [table]`, `#   { … },`, `# ]`), not prose.
COMMENTED_TOML = re.compile(r"^# ?(?P<line>\s*(?:[\[\]{]|[A-Za-z_][A-Za-z0-9_-]*\s*=).*|)$")


def uncommented(text: str) -> str:
    """The example with every commented-out setting put back, as someone following its comments would."""
    lines = [
        match.group("line") if (match := COMMENTED_TOML.match(line)) else line for line in text.splitlines()
    ]
    # The one placeholder that is not a value the loader takes: a token's hash comes from `hitl token new`.
    return "\n".join(lines).replace('token_sha256 = "…"', f'token_sha256 = "{token_sha256("example")}"')


def missing(model: type[BaseModel], tables: list[dict[str, Any]], key: str) -> list[str]:
    present = {name for table in tables for name in table}
    return [f"{key}.{name}" for name in model.model_fields if name not in present]


def test_the_example_shows_every_gate_and_action_setting() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    shown = tomllib.loads(text)
    with_optional = tomllib.loads(uncommented(text))

    # Optional settings (no value unless given) may be shown commented out, in [gate] as in actions.
    restored_gate = with_optional.get("gate", {})
    absent = [
        key
        for key in missing(GateSettings, [shown.get("gate", {})], "gate")
        if not (GateSettings.model_fields[key[5:]].default is None and key[5:] in restored_gate)
    ]
    for name, action in ACTION_TYPES.items():
        table = shown.get("actions", {}).get(name, {})
        restored = with_optional.get("actions", {}).get(name, {})
        for field_name, field in action.settings_model.model_fields.items():
            # Optional settings (no value unless given) may be shown commented out; the rest as they are.
            optional = field.default is None and field_name in restored
            if field_name not in table and not optional:
                absent.append(f"actions.{name}.{field_name}")

    assert absent == [], f"examples/hitl.toml does not show {', '.join(absent)}"


def test_the_commented_out_parts_of_the_example_show_every_other_setting() -> None:
    restored = tomllib.loads(uncommented(EXAMPLE.read_text(encoding="utf-8")))
    policies = list(restored.get("policy", {}).values())
    rules = [rule for policy in policies for rule in policy.get("rules", [])]

    absent = [
        *missing(PrincipalSettings, list(restored.get("principals", {}).values()), "principals.NAME"),
        *missing(ActionPolicy, policies, "policy.TOOL"),
        *missing(Rule, rules, "policy.TOOL.rules[]"),
        *missing(Level, [level for rule in rules for level in rule.get("levels", [])], "levels[]"),
        *missing(Notifier, restored.get("notify", []), "notify[]"),
        *missing(SlackSettings, [restored.get("slack", {})], "slack"),
    ]

    assert absent == [], f"examples/hitl.toml does not show {', '.join(absent)}"


def test_the_commented_out_upstreams_of_the_example_show_every_upstream_setting() -> None:
    restored = tomllib.loads(uncommented(EXAMPLE.read_text(encoding="utf-8")))
    upstreams = list(restored.get("upstreams", {}).values())
    # The keys a table may hold: the model's fields as the TOML spells them (`pass`, `preview`), less the
    # two the loader fills in itself.
    keys = {field.alias or name for name, field in UpstreamSettings.model_fields.items()} - {"name", "source"}
    shown = {key for upstream in upstreams for key in upstream}

    absent = [
        *(f"upstreams.NAME.{key}" for key in sorted(keys - shown)),
        *missing(
            PreviewCall,
            [preview for upstream in upstreams for preview in upstream.get("preview", {}).values()],
            "upstreams.NAME.preview.TOOL",
        ),
        *missing(
            RestartSettings, [upstream.get("restart", {}) for upstream in upstreams], "upstreams.NAME.restart"
        ),
    ]

    assert absent == [], f"examples/hitl.toml does not show {', '.join(absent)}"


@pytest.mark.parametrize("restore", [False, True], ids=["as shipped", "with every setting uncommented"])
def test_the_example_loads_without_warnings(tmp_path: Path, restore: bool) -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    config = tmp_path / "hitl.toml"
    config.write_text(uncommented(text) if restore else text, encoding="utf-8")

    # The variables the example's upstreams and sign-in take their secrets from.
    secrets = {
        "FS_API_KEY": "example",
        "TICKETS_TOKEN": "example",
        "OIDC_CLIENT_SECRET": "example",
        "SLACK_BOT_TOKEN": "xoxb-example",
        "SLACK_SIGNING_SECRET": "example",
    }
    settings = load_settings({"HITL_CONFIG": str(config), "HITL_DB": str(tmp_path / "hitl.db"), **secrets})

    assert settings.warnings == ()
    assert settings.actions["delete_database_records"].model_dump()["database"] == tmp_path / "app.db"
    if restore:
        assert settings.policies and settings.notifiers and settings.roles_of("bob") == ("risk_manager",)
        assert settings.upstreams["fs"].env == {"API_KEY": "example"}
        assert settings.upstreams["tickets"].headers == {"Authorization": "Bearer example"}


def mcp_config(env: dict[str, str], *args: str, cwd: Path) -> dict[str, Any]:
    printed = subprocess.run(
        [HITL, "mcp-config", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    assert printed.returncode == 0, printed.stderr
    entry: dict[str, Any] = json.loads(printed.stdout)["mcpServers"]["hitl"]
    return entry


def test_mcp_config_prints_an_entry_a_client_starts_as_is(
    env: dict[str, str], config_file: Path, tmp_path: Path
) -> None:
    # Relative in the shell it runs in; the client starts the server somewhere else entirely.
    relative = {**env, "HITL_CONFIG": config_file.name, "HITL_DB": "hitl.db", "HITL_PRINCIPAL": "Agent"}
    entry = mcp_config(relative, cwd=tmp_path)

    assert Path(entry["command"]) == Path(HITL)
    assert entry["args"] == ["serve"]
    assert entry["env"] == {
        "HITL_CONFIG": str(config_file),
        "HITL_DB": str(tmp_path / "hitl.db"),
        "HITL_PRINCIPAL": "agent",
    }

    async def use_it() -> tuple[set[str], str]:
        params = StdioServerParameters(
            command=entry["command"], args=entry["args"], env=entry["env"], cwd="/"
        )
        async with Client(params) as client:
            tools = {tool.name for tool in (await client.list_tools()).tools}
            filed = await client.call_tool("buy_stock", BUY)
            assert filed.structured_content is not None
            return tools, filed.structured_content["request_id"]

    tools, request_id = anyio.run(use_it)

    assert {"buy_stock", "send_email", "delete_database_records", "approve", "list_pending"} <= tools
    # The client's agent and this shell's `hitl` share one store.
    listed = hitl(env, "list")
    assert request_id[:10] in listed.stdout


def test_mcp_config_http_points_at_the_server_and_asks_for_a_token_only_when_tokens_exist(
    env: dict[str, str], config_file: Path, tmp_path: Path
) -> None:
    with serving(env, tmp_path / "server.log") as url:
        port = url.split(":")[-1].split("/")[0]
        entry = mcp_config(env, "--http", "--port", port, cwd=tmp_path)

        async def tool_names() -> set[str]:
            async with Client(entry["url"]) as client:
                return {tool.name for tool in (await client.list_tools()).tools}

        assert entry == {"type": "http", "url": url}
        assert "buy_stock" in anyio.run(tool_names)

    _, lines = minted(env, "reviewer-bot")
    config_file.write_text(config_file.read_text() + f"\n{lines}\n")
    with_tokens = mcp_config(env, "--http", cwd=tmp_path)

    assert with_tokens == {
        "type": "http",
        "url": "http://127.0.0.1:8000/mcp",
        "headers": {"Authorization": "Bearer TOKEN"},
    }


FAKE_OLD_PYTHON = """#!/bin/sh
# An interpreter too old for hitl-mcp: says it is 3.9, and fails the version check.
if [ "$1" = "--version" ]; then echo "Python 3.9.18"; exit 0; fi
exit 1
"""


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize("goal", ["run", "test"])
def test_make_names_a_venv_made_by_an_old_python_and_how_to_pick_another(tmp_path: Path, goal: str) -> None:
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(FAKE_OLD_PYTHON)
    python.chmod(0o755)

    made = subprocess.run(
        ["make", goal], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
    )
    again = subprocess.run(
        ["make", goal], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
    )

    assert made.returncode == again.returncode == 2
    assert ".venv was made by Python 3.9.18" in made.stderr
    assert "rm -rf .venv && " in made.stderr and f" {goal}" in made.stderr
    assert "make PYTHON=" in made.stderr or "install Python 3.11" in made.stderr
    assert again.stderr == made.stderr


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_names_a_python_too_old_to_make_the_venv(tmp_path: Path) -> None:
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    old = tmp_path / "python3.9"
    old.write_text(FAKE_OLD_PYTHON)
    old.chmod(0o755)

    made = subprocess.run(
        ["make", f"PYTHON={old}", "run"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert made.returncode == 2
    assert f"PYTHON={old} is Python 3.9.18" in made.stderr
    assert not (tmp_path / ".venv").exists()
