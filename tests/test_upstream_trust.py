"""`trust_annotations`: whether an upstream's own word that a tool is read-only may pass it. Per upstream,
and as a default for all of them under `[gateway]`, those of a desktop client's JSON included."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hitl_mcp.config import Settings, load_settings, with_upstreams
from hitl_mcp.errors import ConfigError
from hitl_mcp.upstream.desktop import load_mcp_servers
from hitl_mcp.upstream.rules import Exposure, classify
from tests.test_upstream_settings import ENV, tool


def settings_of(tmp_path: Path, toml: str) -> Settings:
    config = tmp_path / "hitl.toml"
    config.write_text(toml, encoding="utf-8")
    return load_settings({"HITL_CONFIG": str(config), "HITL_DB": str(tmp_path / "hitl.db"), **ENV})


def decision(tmp_path: Path, toml: str, name: str = "fs") -> tuple[str, str]:
    settings = settings_of(tmp_path, toml)
    decided = classify(tool("lookup", read_only=True), settings.upstreams[name])
    assert isinstance(decided, Exposure)
    return decided.decision, decided.why


def test_a_read_only_tool_passes_by_default(tmp_path: Path) -> None:
    assert decision(tmp_path, '[upstreams.fs]\ncommand = "npx"\n') == (
        "passed",
        "annotation readOnlyHint = true",
    )


def test_untrusted_annotations_gate_a_read_only_tool_no_pattern_passes(tmp_path: Path) -> None:
    toml = '[upstreams.fs]\ncommand = "npx"\ntrust_annotations = false\n'

    assert decision(tmp_path, toml) == ("gated", "no pattern; its annotations are not trusted")


def test_a_pass_pattern_still_passes_a_tool_when_annotations_are_not_trusted(tmp_path: Path) -> None:
    settings = settings_of(
        tmp_path, '[upstreams.fs]\ncommand = "npx"\ntrust_annotations = false\npass = ["look*"]\n'
    )
    decided = classify(tool("lookup", read_only=True), settings.upstreams["fs"])

    assert isinstance(decided, Exposure) and decided.decision == "passed"


def test_the_gateway_default_applies_unless_an_upstream_says_otherwise(tmp_path: Path) -> None:
    toml = """
[gateway]
trust_annotations = false

[upstreams.fs]
command = "npx"

[upstreams.docs]
command = "npx"
trust_annotations = true
"""
    assert decision(tmp_path, toml, "fs")[0] == "gated"
    assert decision(tmp_path, toml, "docs")[0] == "passed"


def test_the_gateway_default_applies_to_a_desktop_clients_servers(tmp_path: Path) -> None:
    desktop = tmp_path / "claude_desktop_config.json"
    desktop.write_text(json.dumps({"mcpServers": {"docs": {"command": "npx", "args": ["docs"]}}}))
    settings = settings_of(tmp_path, "[gateway]\ntrust_annotations = false\n")
    added = with_upstreams(settings, load_mcp_servers(desktop))
    docs = added.upstreams["docs"]
    decided = classify(tool("lookup", read_only=True), docs)

    assert isinstance(decided, Exposure) and decided.decision == "gated"
    assert docs.target()["command"] == "npx docs"  # the copy keeps what it is


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            '[upstreams.fs]\ncommand = "npx"\ntrust_annotations = "no"\n',
            "upstreams.fs.trust_annotations",
        ),
        ("[gateway]\ntrust_annotations = 1\n", "gateway.trust_annotations"),
        ("[gateway]\ntrust = false\n", "gateway.trust"),
        ("[gateway]\nstart_wait_seconds = -1\n", "gateway.start_wait_seconds"),
        ("gateway = 3\n", "gateway: must be a table"),
    ],
)
def test_a_wrong_trust_setting_is_refused_naming_its_key(tmp_path: Path, toml: str, message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        settings_of(tmp_path, toml)

    assert str(refused.value).startswith(message)
