"""Upstream settings and the rules that expose their tools: `[upstreams.NAME]`, a desktop client's JSON,
`${VAR}` expansion, and which tool is gated or passed, and why. Every refusal names its key."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from mcp_types import Tool, ToolAnnotations

from hitl_mcp.config import load_settings, with_upstreams
from hitl_mcp.errors import ConfigError
from hitl_mcp.upstream.desktop import load_mcp_servers
from hitl_mcp.upstream.rules import Exposure, Refusal, classify, preview_for
from hitl_mcp.upstream.settings import RestartSettings, UpstreamSettings, build_upstream
from tests.environment import process_env
from tests.test_cli import HITL

ENV = {"FS_API_KEY": "k-123", "TICKETS_TOKEN": "t-456", "HOME": "/home/op"}


def upstream(name: str = "fs", /, **table: Any) -> UpstreamSettings:
    return build_upstream(
        name, table, key=f"upstreams.{name}", base_dir=Path("/etc/hitl"), env=ENV, source="t"
    )


def configured(tmp_path: Path, toml: str, env: dict[str, str] | None = None) -> dict[str, UpstreamSettings]:
    config = tmp_path / "hitl.toml"
    config.write_text(toml, encoding="utf-8")
    settings = load_settings(
        {"HITL_CONFIG": str(config), "HITL_DB": str(tmp_path / "hitl.db"), **(ENV if env is None else env)}
    )
    return dict(settings.upstreams)


def refusal(call: Any) -> str:
    with pytest.raises(ConfigError) as refused:
        call()
    return str(refused.value)


def tool(name: str, *, read_only: bool | None = None, destructive: bool | None = None) -> Tool:
    annotations = (
        None
        if read_only is None and destructive is None
        else ToolAnnotations(read_only_hint=read_only, destructive_hint=destructive)
    )
    return Tool(name=name, input_schema={"type": "object"}, annotations=annotations)


def test_a_stdio_and_an_http_upstream_load_from_the_config_file_with_variables_expanded(
    tmp_path: Path,
) -> None:
    upstreams = configured(
        tmp_path,
        """
[upstreams.fs]
command = "npx"
args = ["-y", "@modelcontextprotocol/server-filesystem", "${HOME}/data", "--key=${FS_API_KEY}"]
env = { API_KEY = "${FS_API_KEY}", LITERAL = "$${NOT_A_VARIABLE}", CURSOR_STYLE = "${env:HOME}" }
cwd = "work"
gate = ["write_*", "move_file"]
pass = ["read_*", "list_*"]

[upstreams.fs.preview.write_file]
tool = "read_text_file"
arguments = { path = "{path}" }

[upstreams.tickets]
url = "https://tickets.example.com/mcp"
headers = { Authorization = "Bearer ${TICKETS_TOKEN}" }
call_timeout_seconds = 5
""",
    )

    fs, tickets = upstreams["fs"], upstreams["tickets"]
    assert (fs.kind, tickets.kind) == ("stdio", "http")
    assert fs.args == ("-y", "@modelcontextprotocol/server-filesystem", "/home/op/data", "--key=k-123")
    assert fs.env == {"API_KEY": "k-123", "LITERAL": "${NOT_A_VARIABLE}", "CURSOR_STYLE": "/home/op"}
    assert fs.cwd == tmp_path / "work"  # relative to the config file's folder
    assert (fs.gate, fs.pass_) == (("write_*", "move_file"), ("read_*", "list_*"))
    assert fs.previews["write_file"].tool == "read_text_file"
    assert fs.previews["write_file"].arguments == {"path": "{path}"}
    assert tickets.headers == {"Authorization": "Bearer t-456"}
    assert (tickets.call_timeout_seconds, tickets.start_timeout_seconds) == (5, 60)
    assert fs.source == f"[upstreams.fs] in {tmp_path / 'hitl.toml'}"


def test_a_target_names_the_upstream_and_its_command_or_url_as_written_never_a_secret(tmp_path: Path) -> None:
    fs = upstream(
        command="npx", args=["-y", "server", "--token", "${FS_API_KEY}", "two words"], env={"K": "v"}
    )
    tickets = upstream(
        "tickets", url="https://tickets.example.com/mcp?key=${TICKETS_TOKEN}", headers={"A": "b"}
    )
    folder = upstream("local", command="server", cwd="/srv/data")

    assert fs.target() == {"upstream": "fs", "command": "npx -y server --token '${FS_API_KEY}' 'two words'"}
    assert tickets.target() == {
        "upstream": "tickets",
        "url": "https://tickets.example.com/mcp?key=${TICKETS_TOKEN}",
    }
    assert folder.target() == {"upstream": "local", "command": "server", "cwd": "/srv/data"}
    assert "k-123" not in repr(fs) and "t-456" not in repr(tickets)


def test_a_variable_that_is_not_set_stops_the_start_naming_the_key_and_the_variable(tmp_path: Path) -> None:
    assert refusal(lambda: upstream(command="npx", env={"API_KEY": "${MISSING_KEY}"})) == (
        "upstreams.fs.env.API_KEY: ${MISSING_KEY} is not set in the environment hitl runs in"
    )
    assert refusal(lambda: upstream(command="npx", args=["ok", "${NOPE}"])).startswith(
        "upstreams.fs.args[1]: ${NOPE}"
    )
    assert refusal(lambda: upstream("t", url="https://x.example/${NOPE}")).startswith(
        "upstreams.t.url: ${NOPE}"
    )
    assert refusal(
        lambda: upstream("t", url="https://x.example/", headers={"Authorization": "${NOPE}"})
    ).startswith("upstreams.t.headers.Authorization: ${NOPE}")
    assert "write $${ for a literal" in refusal(lambda: upstream(command="npx", args=["${not closed"]))
    # Through the config file, the variable comes from the environment load_settings is given.
    toml = '[upstreams.fs]\ncommand = "npx"\nenv = { API_KEY = "${FS_API_KEY}" }\n'
    assert refusal(lambda: configured(tmp_path, toml, env={})).startswith(
        "upstreams.fs.env.API_KEY: ${FS_API_KEY}"
    )


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ({}, "upstreams.fs: needs a command (a program hitl starts) or a url"),
        ({"command": "npx", "url": "https://x.example/mcp"}, "upstreams.fs.url: not with command"),
        ({"url": "https://x.example/mcp", "args": ["a"]}, "upstreams.fs.args: only for an upstream started"),
        ({"url": "https://x.example/mcp", "cwd": "/srv"}, "upstreams.fs.cwd: only for an upstream started"),
        ({"command": "npx", "headers": {"A": "b"}}, "upstreams.fs.headers: only for an upstream at a url"),
        ({"url": "ftp://x.example/mcp"}, "upstreams.fs.url: must be an http:// or https:// URL"),
        ({"url": "https:///mcp"}, "upstreams.fs.url: must be an http:// or https:// URL"),
        (
            {"url": "https://x.example/", "headers": {"Bad Name": "v"}},
            "upstreams.fs.headers.Bad Name: not a valid",
        ),
        (
            {"url": "https://x.example/", "headers": {"A": "v\r\nX: y"}},
            "upstreams.fs.headers.A: a header value",
        ),
        ({"command": ""}, "upstreams.fs.command: String should have at least 1 character"),
        ({"command": "npx", "args": "-y"}, "upstreams.fs.args: Input should be a valid tuple"),
        ({"command": "npx", "env": {"A": 1}}, "upstreams.fs.env.A: Input should be a valid string"),
        ({"command": "npx", "gate": [""]}, "upstreams.fs.gate.0: String should have at least 1 character"),
        ({"command": "npx", "allow": ["*"]}, "upstreams.fs.allow: Extra inputs are not permitted"),
        ({"command": "npx", "name": "other"}, "upstreams.fs.name: unknown key"),
        (
            {"command": "npx", "preview": {"w": {"arguments": {}}}},
            "upstreams.fs.preview.w.tool: Field required",
        ),
        (
            {"command": "npx", "call_timeout_seconds": 0},
            "upstreams.fs.call_timeout_seconds: Input should be greater",
        ),
        (
            {"command": "npx", "restart": {"initial_delay_seconds": 10, "max_delay_seconds": 1}},
            "upstreams.fs.restart: Value error, max_delay_seconds must be at least initial_delay_seconds",
        ),
    ],
)
def test_a_wrong_upstream_table_is_refused_naming_the_key(table: dict[str, Any], expected: str) -> None:
    assert refusal(lambda: upstream(**table)).startswith(expected)


@pytest.mark.parametrize("name", ["a__b", "trailing_", "-dash", "has space", "dotted.name", "x" * 33, ""])
def test_a_name_that_cannot_prefix_tool_names_is_refused(tmp_path: Path, name: str) -> None:
    message = refusal(lambda: configured(tmp_path, f'[upstreams."{name}"]\ncommand = "npx"\n'))

    assert message.startswith(f"upstreams.{name}: {name!r} cannot name an upstream")


def test_upstreams_must_be_tables(tmp_path: Path) -> None:
    assert refusal(lambda: configured(tmp_path, 'upstreams = "fs"\n')).startswith(
        "upstreams: must be a table"
    )
    assert refusal(lambda: configured(tmp_path, "[upstreams]\nfs = 1\n")) == "upstreams.fs: must be a table"


def write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_a_desktop_clients_mcp_servers_become_upstreams_that_annotations_decide(tmp_path: Path) -> None:
    desktop = write_json(
        tmp_path / "claude_desktop_config.json",
        {
            "globalShortcut": "Ctrl+Space",
            "mcpServers": {
                "filesystem": {
                    "type": "stdio",
                    "command": "npx",
                    "args": ["-y", "@modelcontextprotocol/server-filesystem", "${HOME}/Desktop"],
                    "env": {"API_KEY": "${FS_API_KEY}"},
                    "cwd": "servers",
                    "autoApprove": ["write_file"],
                    "timeout": 60,
                },
                "tickets": {"type": "http", "url": "https://tickets.example.com/mcp", "headers": {"X": "y"}},
                "bare-url": {"url": "https://other.example.com/mcp"},
                "off": {"command": "never-started", "disabled": True},
            },
        },
    )

    fs, tickets, bare = load_mcp_servers(desktop, ENV)

    assert (fs.name, fs.kind, fs.command) == ("filesystem", "stdio", "npx")
    assert fs.args[-1] == "/home/op/Desktop" and fs.env == {"API_KEY": "k-123"}
    assert fs.cwd == tmp_path / "servers"
    # Nothing decides by pattern, and a client's auto-approve list is not a pass rule: annotations decide.
    assert (fs.gate, fs.pass_) == ((), ())
    assert (tickets.kind, tickets.url, tickets.headers) == (
        "http",
        "https://tickets.example.com/mcp",
        {"X": "y"},
    )
    assert bare.kind == "http"
    assert fs.source == f"mcpServers.filesystem in {desktop}"


@pytest.mark.parametrize(
    ("servers", "expected"),
    [
        (
            {"old": {"type": "sse", "url": "https://x.example/sse"}},
            'mcpServers.old.type: "sse" (the older HTTP+SSE',
        ),
        (
            {"w": {"type": "websocket", "url": "wss://x.example"}},
            "mcpServers.w.type: 'websocket' is not a transport",
        ),
        (
            {"s": {"type": "stdio", "url": "https://x.example/mcp"}},
            'mcpServers.s: "type": "stdio" needs a command',
        ),
        ({"h": {"type": "http", "command": "npx"}}, 'mcpServers.h: "type": "http" needs a url'),
        ({"x": "npx"}, "mcpServers.x: must be an object"),
        ({"x": {"command": "npx", "env": {"K": "${NOT_SET}"}}}, "mcpServers.x.env.K: ${NOT_SET} is not set"),
        ({"my server": {"command": "npx"}}, "mcpServers.my server: 'my server' cannot name an upstream"),
    ],
)
def test_a_wrong_desktop_entry_is_refused_naming_the_file_and_the_key(
    tmp_path: Path, servers: dict[str, Any], expected: str
) -> None:
    desktop = write_json(tmp_path / "mcp.json", {"mcpServers": servers})

    message = refusal(lambda: load_mcp_servers(desktop, ENV))
    assert message.startswith(f"--upstreams {desktop}: {expected}")


def test_a_file_that_is_not_a_desktop_configuration_is_refused(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('{"mcpServers": {', encoding="utf-8")

    assert refusal(lambda: load_mcp_servers(tmp_path / "absent.json")).endswith("absent.json does not exist")
    assert "not valid JSON: Expecting property name" in refusal(lambda: load_mcp_servers(broken))
    assert 'expected an object with "mcpServers"' in refusal(
        lambda: load_mcp_servers(write_json(tmp_path / "servers.json", {"servers": {}}))
    )


def test_a_name_in_both_the_config_and_the_desktop_file_is_refused_naming_both(tmp_path: Path) -> None:
    config = tmp_path / "hitl.toml"
    config.write_text('[upstreams.fs]\ncommand = "npx"\n', encoding="utf-8")
    desktop = write_json(
        tmp_path / "mcp.json", {"mcpServers": {"fs": {"command": "other"}, "git": {"command": "g"}}}
    )
    settings = load_settings({"HITL_CONFIG": str(config), "HITL_DB": str(tmp_path / "hitl.db")})

    message = refusal(lambda: with_upstreams(settings, load_mcp_servers(desktop)))

    assert message == (
        f"upstream 'fs' is configured twice: [upstreams.fs] in {config} and mcpServers.fs in {desktop}; "
        "remove or rename one of them"
    )
    desktop.write_text(json.dumps({"mcpServers": {"git": {"command": "g"}}}), encoding="utf-8")
    assert list(with_upstreams(settings, load_mcp_servers(desktop)).upstreams) == ["fs", "git"]


def test_hitl_serve_refuses_a_conflicting_desktop_file_in_one_line_before_serving(
    tmp_path: Path, env: dict[str, str], config_file: Path
) -> None:
    config_file.write_text(config_file.read_text() + '\n[upstreams.fs]\ncommand = "npx"\n', encoding="utf-8")
    desktop = write_json(tmp_path / "mcp.json", {"mcpServers": {"fs": {"command": "npx"}}})

    served = subprocess.run(
        [HITL, "serve", "--upstreams", str(desktop)],
        env=process_env(tmp_path, config_file),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert served.returncode == 2, served.stderr
    assert served.stderr.strip().splitlines() == [
        f"hitl: upstream 'fs' is configured twice: [upstreams.fs] in {config_file} and mcpServers.fs in "
        f"{desktop}; remove or rename one of them"
    ]
    assert served.stdout == ""


def test_a_gate_pattern_beats_a_pass_pattern_and_says_which_pattern_decided() -> None:
    fs = upstream(command="npx", gate=["write_*", "*_secret"], **{"pass": ["write_draft", "read_*"]})

    assert classify(tool("write_draft", read_only=True), fs) == Exposure(
        "write_draft", "fs__write_draft", "gated", "gate pattern 'write_*'"
    )
    assert classify(tool("read_secret"), fs) == Exposure(
        "read_secret", "fs__read_secret", "gated", "gate pattern '*_secret'"
    )
    assert classify(tool("read_file", destructive=True), fs) == Exposure(
        "read_file", "fs__read_file", "passed", "pass pattern 'read_*'"
    )
    # Patterns are case-sensitive, as tool names are.
    case_differs = classify(tool("Write_file"), fs)
    assert (
        isinstance(case_differs, Exposure)
        and case_differs.why == "no pattern and not marked read-only (fail closed)"
    )


@pytest.mark.parametrize(
    ("listed", "decision", "why"),
    [
        (tool("lookup", read_only=True), "passed", "annotation readOnlyHint = true"),
        (tool("lookup", read_only=False), "gated", "no pattern and not marked read-only (fail closed)"),
        (tool("lookup", destructive=False), "gated", "no pattern and not marked read-only (fail closed)"),
        (tool("lookup"), "gated", "no pattern and not marked read-only (fail closed)"),
    ],
)
def test_without_a_pattern_only_a_read_only_annotation_passes_a_tool(
    listed: Tool, decision: str, why: str
) -> None:
    decided = classify(listed, upstream(command="npx"))

    assert isinstance(decided, Exposure)
    assert (decided.decision, decided.why, decided.gated) == (decision, why, decision == "gated")


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("send message", "'fs__send message' would not be a valid tool name"),
        ("emoji✨", "'fs__emoji✨' would not be a valid tool name"),
        ("t" * 61, f"'fs__{'t' * 61}' would be longer than 64 characters"),
    ],
)
def test_a_tool_whose_exposed_name_would_be_invalid_is_refused(name: str, reason: str) -> None:
    decided = classify(tool(name, read_only=True), upstream(command="npx"))

    assert isinstance(decided, Refusal)
    assert decided.tool == name and decided.reason.startswith(reason)


def test_a_preview_may_only_call_a_tool_that_passes() -> None:
    fs = upstream(
        command="npx",
        gate=["write_*"],
        preview={
            "write_file": {"tool": "read_file", "arguments": {"path": "{path}"}},
            "write_other": {"tool": "write_log"},
            "write_more": {"tool": "missing"},
        },
    )
    exposures = [
        classify(tool(name, read_only=name.startswith("read")), fs) for name in ("read_file", "write_log")
    ]
    decided = [exposure for exposure in exposures if isinstance(exposure, Exposure)]

    preview, problem = preview_for("write_file", fs, decided)
    assert preview is not None and problem is None and preview.tool == "read_file"
    assert preview_for("write_other", fs, decided) == (
        None,
        "the preview of write_other calls write_log, which is gated (gate pattern 'write_*'); a preview runs "
        "without approval, so it must be a tool that passes",
    )
    assert (
        preview_for("write_more", fs, decided)[1]
        == "the preview of write_more calls missing, which fs does not offer"
    )
    assert preview_for("read_file", fs, decided) == (None, None)


def test_restart_delays_double_up_to_the_maximum_with_jitter_in_their_upper_half() -> None:
    restart = RestartSettings(initial_delay_seconds=1, max_delay_seconds=10)

    assert [restart.delay(failures, 0.0) for failures in range(6)] == [0.5, 1, 2, 4, 5, 5]
    assert [restart.delay(failures, 0.999) for failures in range(6)] == pytest.approx(
        [1, 2, 4, 8, 10, 10], abs=0.01
    )
    assert restart.delay(10_000, 0.5) == 7.5  # no overflow however long it keeps failing
