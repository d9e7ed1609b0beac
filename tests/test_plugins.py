"""Actions from other packages: the registry's refusals in-process, over entry points read from real
dist-info folders; then examples/hitl-action-example installed into a fresh virtual environment beside
hitl-mcp, served by that environment's `hitl serve`, approved, rejected and run there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import tomllib
import venv
from collections.abc import Iterable
from importlib.metadata import Distribution, EntryPoint
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, StdioServerParameters
from mcp.shared.tool_name_validation import validate_tool_name
from pydantic import BaseModel

from hitl_mcp.actions import (
    ACTION_TYPES,
    BUILT_INS,
    COMPANION_TOOLS,
    ENTRY_POINT_GROUP,
    TOOL_NAME,
    discover,
    load_registry,
    registry,
)
from hitl_mcp.actions.base import Action, ActionSettings, Execution
from hitl_mcp.config import Settings
from hitl_mcp.errors import ConfigError
from hitl_mcp.server import build_server
from tests.environment import process_env, write_config

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "hitl-action-example"
HITL = str(Path(sys.executable).parent / "hitl")


class ShoutArguments(BaseModel):
    text: str


class Shout(Action[ShoutArguments, ActionSettings]):
    name = "shout"
    description = "Shouts. Files a request; nothing happens until a person approves."
    arguments_model = ShoutArguments
    settings_model = ActionSettings

    def summary(self, args: ShoutArguments) -> str:
        return f"Shout {args.text!r}"

    async def preview(self, args: ShoutArguments) -> dict[str, Any]:
        return {"loud": args.text.upper()}

    async def execute(self, args: ShoutArguments, execution: Execution) -> dict[str, Any]:
        return {"shouted": args.text.upper()}


class Whisper(Shout):
    name = "whisper"


class Unfinished(Action[ShoutArguments, ActionSettings]):
    name = "unfinished"
    description = "Never finished."
    arguments_model = ShoutArguments
    settings_model = ActionSettings


class NoSettingsModel(Shout):
    name = "no_settings"
    settings_model = ShoutArguments  # type: ignore[assignment]


def not_an_action() -> None:
    """A function where a class belongs."""


def installed(folder: Path, distribution: str, version: str, lines: Iterable[str]) -> list[EntryPoint]:
    """The entry points of a distribution written to `folder` as pip would install its metadata: a real
    dist-info folder read by importlib.metadata, so each entry point knows its distribution."""
    dist_info = folder / f"{distribution.replace('-', '_')}-{version}.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {distribution}\nVersion: {version}\n", encoding="utf-8"
    )
    (dist_info / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\n" + "".join(f"{line}\n" for line in lines), encoding="utf-8"
    )
    return list(Distribution.at(dist_info).entry_points.select(group=ENTRY_POINT_GROUP))


# In-process: the registry as installed, and its refusals.


def test_the_built_ins_register_through_the_entry_point_group_in_their_listing_order() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    table = declared["entry-points"][ENTRY_POINT_GROUP]
    found = registry()

    assert list(found) == list(BUILT_INS)
    # The installed metadata says what pyproject.toml says: an install older than the table would not.
    assert {ep.name: ep.value for ep in discover() if ep.name in BUILT_INS} == table
    for name in BUILT_INS:
        assert found.registration(name).distribution.startswith("hitl-mcp-gateway ")
        assert found[name].name == name
    assert dict(ACTION_TYPES) == dict(found)
    assert registry() is found  # read once per process


def test_a_plugin_is_listed_after_the_built_ins_with_its_distribution(tmp_path: Path) -> None:
    plugin = installed(tmp_path, "hitl-shout", "1.2", ["shout = tests.test_plugins:Shout"])

    loaded = load_registry([*plugin, *discover()])

    assert list(loaded) == [*BUILT_INS, "shout"]
    assert loaded["shout"] is Shout
    assert loaded.registration("shout").distribution == "hitl-shout 1.2"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        pytest.param(
            "shout = tests.test_plugins:not_an_action",
            "which is not a subclass of hitl_mcp.actions.base.Action",
            id="not an Action subclass",
        ),
        pytest.param(
            "shout = hitl_no_such_plugin_module:Shout",
            "cannot be imported: ModuleNotFoundError: No module named 'hitl_no_such_plugin_module'",
            id="fails to import",
        ),
        pytest.param(
            "shout = tests.test_plugins:NoSuchClass",
            "cannot be imported: AttributeError: module 'tests.test_plugins' has no attribute 'NoSuchClass'",
            id="names nothing",
        ),
        pytest.param(
            "shout! = tests.test_plugins:Shout",
            "'shout!' is not a valid MCP tool name",
            id="invalid tool name",
        ),
        pytest.param(
            f"{'s' * 129} = tests.test_plugins:Shout",
            "is not a valid MCP tool name",
            id="tool name too long",
        ),
        pytest.param(
            # Refused by its name alone: the module, which does not exist, is never imported.
            "files__shout = hitl_no_such_plugin_module:Shout",
            "'files__shout' contains '__', which is reserved for the tools of upstream MCP servers",
            id="reserved __",
        ),
        pytest.param(
            "approve = tests.test_plugins:Shout",
            "'approve' is one of the server's own tools",
            id="a companion tool's name",
        ),
        pytest.param(
            "shout = tests.test_plugins:Whisper",
            "the action's name is 'whisper'; an entry point's name must be its action's name",
            id="entry point and action disagree",
        ),
        pytest.param(
            "unfinished = tests.test_plugins:Unfinished",
            "the action does not implement execute, preview, summary",
            id="abstract",
        ),
        pytest.param(
            "no_settings = tests.test_plugins:NoSettingsModel",
            "settings_model must be a subclass of hitl_mcp.actions.base.ActionSettings",
            id="settings model of the wrong kind",
        ),
    ],
)
def test_a_plugin_that_cannot_be_served_stops_the_start_naming_its_entry_point(
    tmp_path: Path, line: str, expected: str
) -> None:
    plugin = installed(tmp_path, "hitl-shout", "1.2", [line])

    with pytest.raises(ConfigError) as refused:
        load_registry([*discover(), *plugin])

    message = str(refused.value)
    assert message.startswith(f"entry point {line} (from hitl-shout 1.2): ")
    assert expected in message
    assert "\n" not in message
    assert refused.value.exit_code == 2


def test_an_import_error_is_reported_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "hitl_noisy_plugin.py").write_text(
        'raise RuntimeError("the licence server is down\\nTraceback-like detail\\nmore")\n', encoding="utf-8"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    plugin = installed(tmp_path / "site", "hitl-noisy", "0.3", ["noisy = hitl_noisy_plugin:Noisy"])

    with pytest.raises(ConfigError, match=r"the licence server is down$") as refused:
        load_registry(plugin)

    assert str(refused.value) == (
        "entry point noisy = hitl_noisy_plugin:Noisy (from hitl-noisy 0.3): cannot be imported: "
        "RuntimeError: the licence server is down"
    )


def test_a_name_taken_by_another_distribution_is_refused_naming_both(tmp_path: Path) -> None:
    evil = installed(tmp_path, "hitl-evil", "6.6", ["send_email = tests.test_plugins:Shout"])

    with pytest.raises(ConfigError) as refused:
        load_registry([*discover(), *evil])

    assert str(refused.value) == (
        "entry point send_email = tests.test_plugins:Shout (from hitl-evil 6.6): the action name "
        "'send_email' is already registered by hitl-mcp-gateway 0.1.0 "
        "(hitl_mcp.actions.send_email:SendEmail); uninstall one of the two distributions"
    )


def test_two_plugins_claiming_one_name_are_refused_whichever_comes_first(tmp_path: Path) -> None:
    first = installed(tmp_path / "a", "hitl-shout", "1.0", ["shout = tests.test_plugins:Shout"])
    second = installed(tmp_path / "b", "hitl-shout-too", "2.0", ["shout = tests.test_plugins:Shout"])

    for order in ([*first, *second], [*second, *first]):
        with pytest.raises(ConfigError, match="already registered by") as refused:
            load_registry(order)
        assert "hitl-shout 1.0" in str(refused.value) and "hitl-shout-too 2.0" in str(refused.value)


def test_one_distribution_claiming_a_name_twice_is_refused(tmp_path: Path) -> None:
    twice = installed(
        tmp_path,
        "hitl-shout",
        "1.0",
        ["shout = tests.test_plugins:Shout", "shout = tests.test_plugins:Whisper"],
    )

    with pytest.raises(
        ConfigError, match=r"by another entry point of hitl-shout 1\.0 .*fix that distribution"
    ):
        load_registry(twice)


def test_an_entry_point_without_a_distribution_is_still_named() -> None:
    loose = EntryPoint(name="shout", value="tests.test_plugins:not_an_action", group=ENTRY_POINT_GROUP)

    with pytest.raises(ConfigError, match=r"^entry point shout = .* \(from an unknown distribution\): "):
        load_registry([loose])


@pytest.mark.parametrize(
    "name",
    ["buy_stock", "a", "A.b-c_d", "s" * 128, "s" * 129, "", "with space", "comma,", "slash/", "ü", "tab\t"],
)
def test_the_tool_name_rule_is_the_sdks(name: str) -> None:
    assert (TOOL_NAME.fullmatch(name) is not None) == validate_tool_name(name).is_valid


async def test_the_reserved_companion_names_are_the_servers_own_tools(settings: Settings) -> None:
    async with Client(build_server(settings, principal="agent")) as client:
        tools = [tool.name for tool in (await client.list_tools()).tools]

    assert set(tools) - set(registry()) == COMPANION_TOOLS
    assert tools[: len(BUILT_INS)] == list(BUILT_INS)  # the tool listing keeps the built-ins' order


# The example package, installed into a fresh virtual environment next to hitl-mcp.


def run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=90, check=False, **kwargs)


@pytest.fixture(scope="module")
def plugin_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin folder of a fresh venv holding hitl-mcp (editable, from this checkout) and the example
    package (a built wheel). hitl-mcp's dependencies are this venv's, linked in rather than downloaded:
    the test is about the plug-in, not about PyPI. Nothing of this venv's own hitl-mcp install is linked,
    so the fresh one is the only hitl-mcp it sees."""
    folder = tmp_path_factory.mktemp("plugin-venv")
    venv.EnvBuilder(with_pip=False, symlinks=os.name != "nt").create(folder)
    ours = Path(sysconfig.get_paths()["purelib"])
    theirs = Path(sysconfig.get_paths(vars={"base": str(folder), "platbase": str(folder)})["purelib"])
    skipped = ("hitl_mcp", "_editable_impl_hitl_mcp", "hitl_action_example", "__pycache__")
    for entry in ours.iterdir():
        if not entry.name.startswith(skipped):
            (theirs / entry.name).symlink_to(entry)
    bin_dir = folder / ("Scripts" if os.name == "nt" else "bin")
    pip = [str(bin_dir / "python"), "-m", "pip", "install", "--quiet", "--no-deps"]
    installing = run([*pip, "-e", str(ROOT), str(EXAMPLE)])
    if installing.returncode != 0 and "hatchling" in installing.stderr and "satisf" in installing.stderr:
        pytest.skip(f"pip cannot get hatchling to build the packages: {installing.stderr.strip()[-300:]}")
    assert installing.returncode == 0, installing.stderr
    return bin_dir


@pytest.fixture
def plugin_env(tmp_path: Path) -> dict[str, str]:
    # `data/tickets.json` is relative: it must land beside the config file, wherever the server runs.
    config = write_config(
        tmp_path / "hitl.toml",
        smtp_port=1,
        extra="""
[principals.alice]
roles = ["support"]

[actions.create_ticket]
tickets = "data/tickets.json"
tail = 2

[policy.create_ticket]
rules = [
  { when = "priority = 'low' AND open_tickets < 100", approval = "none" },
  { levels = [{ roles = ["support"], count = 1 }] },
]
""",
    )
    return process_env(tmp_path, config)


def tickets(env: dict[str, str]) -> list[dict[str, Any]]:
    path = Path(env["HITL_CONFIG"]).parent / "data" / "tickets.json"
    if not path.exists():
        return []
    found: list[dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))["tickets"]
    return found


def file_tickets(bin_dir: Path, env: dict[str, str], *calls: dict[str, Any]) -> tuple[list[str], list[Any]]:
    """Over a stdio session with the venv's `hitl serve`: the tools it lists and what each call returned."""

    async def session() -> tuple[list[str], list[Any]]:
        params = StdioServerParameters(command=str(bin_dir / "hitl"), args=["serve"], env=env, cwd="/")
        with anyio.fail_after(60):
            async with Client(params) as client:
                tools = [tool.name for tool in (await client.list_tools()).tools]
                results = []
                for arguments in calls:
                    result = await client.call_tool("create_ticket", arguments)
                    assert not result.is_error, result.content
                    results.append(result.structured_content)
                return tools, results

    return anyio.run(session)


def test_the_installed_plugin_is_served_and_an_approval_runs_it_exactly_once(
    plugin_bin: Path, plugin_env: dict[str, str]
) -> None:
    tools, [filed] = file_tickets(plugin_bin, plugin_env, {"title": "VPN is down", "priority": "high"})

    assert tools[:4] == [*BUILT_INS, "create_ticket"]
    assert filed["status"] == "pending"
    ticket_file = Path(plugin_env["HITL_CONFIG"]).parent / "data" / "tickets.json"
    assert filed["preview"] == {
        "file": str(ticket_file),
        "open_tickets": 0,
        "would_create": "T-1",
        "latest": [],
    }
    assert tickets(plugin_env) == []  # filing ran nothing

    approved = run(
        [str(plugin_bin / "hitl"), "approve", filed["request_id"], "--yes", "--as", "alice"], env=plugin_env
    )
    again = run(
        [str(plugin_bin / "hitl"), "approve", filed["request_id"], "--yes", "--as", "alice"], env=plugin_env
    )
    shown = run([str(plugin_bin / "hitl"), "show", filed["request_id"], "--json"], env=plugin_env)

    assert approved.returncode == 0, approved.stderr
    assert again.returncode == 4, again.stderr  # no longer pending: it never runs twice
    [ticket] = tickets(plugin_env)
    assert ticket["request_id"] == filed["request_id"] and ticket["title"] == "VPN is down"
    record = json.loads(shown.stdout)
    assert record["status"] == "executed"
    assert record["result"] == {"ticket": "T-1", "file": str(ticket_file), "already_created": False}
    assert record["target"] == {"tickets": str(ticket_file)}


def test_a_rejected_plugin_request_never_runs_and_its_policy_applies(
    plugin_bin: Path, plugin_env: dict[str, str]
) -> None:
    _, [rejected, low] = file_tickets(
        plugin_bin,
        plugin_env,
        {"title": "Delete prod", "priority": "high"},
        {"title": "Typo", "priority": "low"},
    )
    refused = run(
        [str(plugin_bin / "hitl"), "reject", rejected["request_id"], "--reason", "no", "--as", "alice"],
        env=plugin_env,
    )

    assert refused.returncode == 0, refused.stderr
    # `[policy.create_ticket]`'s first rule, over an argument and a preview value: runs at once.
    assert low["status"] == "executed" and low["result"]["ticket"] == "T-1"
    assert [ticket["title"] for ticket in tickets(plugin_env)] == ["Typo"]
    shown = run([str(plugin_bin / "hitl"), "show", rejected["request_id"], "--json"], env=plugin_env)
    assert json.loads(shown.stdout)["status"] == "rejected"


def test_the_plugins_config_tables_are_validated_by_its_own_models(plugin_bin: Path, tmp_path: Path) -> None:
    def check(extra: str) -> subprocess.CompletedProcess[str]:
        config = write_config(tmp_path / "hitl.toml", smtp_port=1, extra=extra)
        return run(
            [str(plugin_bin / "hitl"), "policy", "check", str(config)], env=process_env(tmp_path, config)
        )

    unknown_setting = check("[actions.create_ticket]\nticket = 'x.json'\n")
    bad_value = check("[actions.create_ticket]\ntail = 99\n")
    unknown_name = check("[policy.create_ticket]\nrules = [{ when = 'urgency > 1', approval = 'none' }]\n")

    assert (
        unknown_setting.returncode == 2
        and "actions.create_ticket.ticket: Extra inputs" in unknown_setting.stderr
    )
    assert (
        bad_value.returncode == 2
        and "actions.create_ticket.tail: Input should be less than" in bad_value.stderr
    )
    assert unknown_name.returncode == 2
    assert "policy.create_ticket.rules[0].when: unknown name 'urgency'" in unknown_name.stderr
    assert "open_tickets" in unknown_name.stderr and "priority" in unknown_name.stderr


def test_the_example_action_is_idempotent_by_request_id(plugin_bin: Path, tmp_path: Path) -> None:
    script = """
import json, sys
from pathlib import Path
from hitl_action_example import TicketArguments, create
path = Path(sys.argv[1])
args = TicketArguments(title="Printer jammed")
print(json.dumps([create(path, args, "req-1"), create(path, args, "req-1"), create(path, args, "req-2")]))
"""
    path = tmp_path / "tickets.json"
    ran = run([str(plugin_bin / "python"), "-c", script, str(path)])

    assert ran.returncode == 0, ran.stderr
    first, repeated, other = json.loads(ran.stdout)
    assert (first["ticket"], first["already_created"]) == ("T-1", False)
    assert (repeated["ticket"], repeated["already_created"]) == ("T-1", True)
    assert other["ticket"] == "T-2"
    assert [t["request_id"] for t in json.loads(path.read_text())["tickets"]] == ["req-1", "req-2"]


def test_a_broken_plugin_stops_hitl_serve_before_it_serves(env: dict[str, str], tmp_path: Path) -> None:
    site = tmp_path / "site"
    installed(site, "hitl-broken", "0.9", ["broken = hitl_no_such_plugin_module:Broken"])

    started = run([HITL, "serve"], env={**env, "PYTHONPATH": str(site)}, stdin=subprocess.DEVNULL)

    assert started.returncode == 2
    assert (
        "entry point broken = hitl_no_such_plugin_module:Broken (from hitl-broken 0.9): cannot be imported: "
        "ModuleNotFoundError: No module named 'hitl_no_such_plugin_module'"
    ) in started.stderr
    assert len(started.stderr.strip().splitlines()) == 1
