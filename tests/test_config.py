"""The environment and the TOML file: faults refused in one line, principal names in one normal form."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from hitl_mcp.config import Settings, check_principal, load_settings
from hitl_mcp.errors import ConfigError
from hitl_mcp.gate import open_gate
from tests.cli_in_process import hitl
from tests.test_cli import BUY, HITL, file_request, statuses

TRADERS_POLICY = """
[principals.Alice]
roles = ["trader"]
[principals.bob]
roles = ["trader"]

[policy.buy_stock]
rules = [ { levels = [{ roles = ["trader"], count = 2 }] } ]
"""


def refused_in_one_line(result_stderr: str, returncode: int) -> str:
    assert returncode == 2, result_stderr
    assert "Traceback" not in result_stderr
    [line] = result_stderr.strip().splitlines()
    assert line.startswith("hitl: ")
    return line


@pytest.mark.parametrize(
    ("variable", "make", "expected"),
    [
        ("HITL_CONFIG", lambda tmp: _folder(tmp / "conf.d"), "is a folder"),
        (
            "HITL_CONFIG",
            lambda tmp: _file(tmp / "latin1.toml", "[gate]\n# caf\xe9\n".encode("latin-1")),
            "not UTF-8",
        ),
        ("HITL_CONFIG", lambda tmp: _file(tmp / "broken.toml", b"[gate\n"), "not valid TOML"),
        ("HITL_DB", lambda tmp: _folder(tmp / "store"), "is a folder"),
        ("HITL_DB", lambda tmp: str(_file(tmp / "plain", b"x")) + "/hitl.db", "is not a folder"),
        ("HITL_DB", lambda tmp: "mysql://hitl:secret@db.example.com/hitl", "mysql"),
        ("HITL_DB", lambda tmp: "postgresql://hitl:secret@db.example.com", "must name its database"),
        ("HITL_DB", lambda tmp: "sqlite://db.example.com/hitl.db", "absolute file path"),
    ],
)
def test_a_config_fault_is_one_line_and_exit_2_never_a_traceback(
    env: dict[str, str], tmp_path: Path, variable: str, make: Callable[[Path], object], expected: str
) -> None:
    value = str(make(tmp_path))

    listed = hitl({**env, variable: value}, "list")

    line = refused_in_one_line(listed.stderr, listed.returncode)
    assert line.startswith(f"hitl: {variable}: ")
    assert expected in line
    # Refused when the settings load, so every command finds it, not only those that open the store.
    with pytest.raises(ConfigError, match=expected):
        load_settings({**env, variable: value})


def _folder(path: Path) -> Path:
    path.mkdir()
    return path


def _file(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def test_a_database_url_is_refused_naming_the_scheme_and_never_taken_as_a_file(
    env: dict[str, str], tmp_path: Path
) -> None:
    work = tmp_path / "cwd"
    work.mkdir()

    with pytest.raises(ConfigError) as refused:
        load_settings({**env, "HITL_DB": "mysql://hitl:secret@db.example.com/hitl"})
    message = str(refused.value)
    assert "mysql:// is not supported" in message and "postgresql://" in message
    assert "secret" not in message  # a URL may carry a password: only its scheme is repeated

    # Read as a relative path, the URL would have become ./mysql:/u@h/db in the caller's folder.
    listed = subprocess.run(
        [HITL, "list"],
        env={**env, "HITL_DB": "mysql://u@h/db"},
        cwd=work,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    refused_in_one_line(listed.stderr, listed.returncode)
    assert list(work.iterdir()) == []


def test_a_postgresql_url_selects_the_postgresql_store_and_is_shown_without_its_password(
    env: dict[str, str], tmp_path: Path
) -> None:
    url = "postgresql://hitl:secret@db.example.com:5433/hitl"

    from_env = load_settings({**env, "HITL_DB": url}).store
    config = tmp_path / "store.toml"
    config.write_text(f'[store]\nurl = "{url}"\n', encoding="utf-8")
    from_file = load_settings({**env, "HITL_DB": "", "HITL_CONFIG": str(config)}).store

    assert from_env == from_file
    assert (from_env.kind, from_env.url, from_env.path) == ("postgresql", url, None)
    assert from_env.describe() == "postgresql://hitl:***@db.example.com:5433/hitl"
    assert from_env.setting() == url  # what another process needs to reach it


def test_a_sqlite_url_names_its_absolute_file(env: dict[str, str], tmp_path: Path) -> None:
    store = tmp_path / "elsewhere" / "store.db"

    settings = load_settings({**env, "HITL_DB": f"sqlite://{store}"})
    request_id = file_request(settings, "buy_stock", BUY)

    assert settings.db_path == store
    assert statuses(store) == {request_id: "pending"}


def test_principal_names_take_one_normal_form() -> None:
    assert check_principal("AGENT", "--as") == "agent"
    assert check_principal("Reviewer-Bot@Example.COM", "--as") == "reviewer-bot@example.com"
    with pytest.raises(ConfigError, match="not a valid principal name"):
        check_principal("alice\n", "--as")  # `$` alone would let the newline through


def test_hitl_principal_is_folded(env: dict[str, str]) -> None:
    assert load_settings({**env, "HITL_PRINCIPAL": "Agent"}).principal == "agent"


def test_as_agent_in_capitals_cannot_approve_the_agents_request(
    env: dict[str, str], settings: Settings
) -> None:
    request_id = file_request(settings, "buy_stock", BUY)

    refused = hitl(env, "approve", request_id, "--as", "AGENT", "--yes")

    assert refused.returncode == 5, refused.stderr
    assert "may not decide its own request" in refused.stderr
    assert statuses(settings.db_path)[request_id] == "pending"


def test_a_record_written_before_folding_is_judged_the_same_way(
    env: dict[str, str], config_file: Path
) -> None:
    config_file.write_text(config_file.read_text() + TRADERS_POLICY)
    settings = load_settings(env)

    async def file_and_approve_as_spelled_before() -> tuple[str, str]:
        # Before names were folded, the store kept them as given: "Agent" filed one, "Alice" approved one.
        async with open_gate(settings) as gate:
            own = (await gate.file("buy_stock", BUY, "Agent")).request_id
            half = (await gate.file("buy_stock", {**BUY, "quantity": 7}, "agent")).request_id
            await gate.approve(half, "Alice")
            return own, half

    own, half = anyio.run(file_and_approve_as_spelled_before)
    own_refused = hitl(env, "approve", own, "--as", "agent", "--yes")
    twice_refused = hitl(env, "approve", half, "--as", "alice", "--yes")

    assert own_refused.returncode == 5 and "may not decide its own request" in own_refused.stderr
    assert twice_refused.returncode == 5 and "counts once" in twice_refused.stderr
    assert statuses(settings.db_path) == {own: "pending", half: "pending"}


def test_a_principal_table_in_capitals_gives_its_roles_to_the_lower_case_name(
    env: dict[str, str], config_file: Path
) -> None:
    config_file.write_text(config_file.read_text() + TRADERS_POLICY)
    settings = load_settings(env)
    request_id = file_request(settings, "buy_stock", BUY)

    first = hitl(env, "approve", request_id, "--as", "alice", "--yes")
    second = hitl(env, "approve", request_id, "--as", "Bob", "--yes")

    assert settings.roles_of("alice") == ("trader",)
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    assert statuses(settings.db_path)[request_id] == "executed"


def test_two_principals_that_differ_only_in_case_are_refused_naming_both(
    env: dict[str, str], config_file: Path
) -> None:
    config_file.write_text(
        config_file.read_text() + '\n[principals.Bob]\nroles = ["trader"]\n[principals.bob]\nroles = []\n'
    )

    checked = hitl(env, "policy", "check")

    line = refused_in_one_line(checked.stderr, checked.returncode)
    assert "principals.Bob" in line and "principals.bob" in line


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ("busy_timeout_seconds = 0", "gate.busy_timeout_seconds"),
        ("busy_timeout_seconds = 601", "gate.busy_timeout_seconds"),
        ("busy_timeout_seconds = nan", "gate.busy_timeout_seconds"),
        ("dedup_seconds = -1", "gate.dedup_seconds"),
        ("dedup_seconds = 86401", "gate.dedup_seconds"),
    ],
)
def test_the_store_and_dedup_timings_are_bounded(
    env: dict[str, str], tmp_path: Path, table: str, key: str
) -> None:
    config = tmp_path / "gate.toml"
    config.write_text(f"[gate]\n{table}\n")

    with pytest.raises(ConfigError, match=key):
        load_settings({**env, "HITL_CONFIG": str(config)})


def test_the_store_and_dedup_timings_have_defaults_and_dedup_can_be_turned_off(
    env: dict[str, str], tmp_path: Path
) -> None:
    config = tmp_path / "gate.toml"
    config.write_text("[gate]\nbusy_timeout_seconds = 600\ndedup_seconds = 0\n")

    defaults = load_settings({key: value for key, value in env.items() if key != "HITL_CONFIG"}).gate
    configured = load_settings({**env, "HITL_CONFIG": str(config)}).gate

    assert (defaults.busy_timeout_seconds, defaults.dedup_seconds) == (5.0, 600.0)
    assert (configured.busy_timeout_seconds, configured.dedup_seconds) == (600.0, 0.0)
