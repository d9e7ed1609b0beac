"""deploy/: the systemd unit checked by systemd itself, the compose file and the Containerfile read for what
an operator relies on (services, health checks, a non-root user), and the container's own health check and
command run against a real `hitl serve`. Images cannot be built here (no registry, no daemon)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.environment import process_env, write_config
from tests.test_auth import serving
from tests.test_cli import HITL, free_port

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
UNIT = DEPLOY / "hitl-mcp.service"
CONTAINERFILE = DEPLOY / "Containerfile"
COMPOSE = DEPLOY / "compose.yaml"
CADDYFILE = DEPLOY / "Caddyfile"
INSTALLED_HITL = "/opt/hitl-mcp/bin/hitl"
# Dockerfile reference instructions (podman's Containerfile takes the same).
INSTRUCTIONS = frozenset(
    {
        *("FROM", "RUN", "CMD", "LABEL", "MAINTAINER", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT"),
        *("VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL"),
    }
)
HARDENING = (
    "NoNewPrivileges=yes",
    "ProtectSystem=strict",
    "ProtectHome=yes",
    "PrivateTmp=yes",
    "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
    "SystemCallFilter=@system-service",
    "CapabilityBoundingSet=",
)


def unit_lines() -> list[str]:
    return [line for line in UNIT.read_text().splitlines() if line and not line.startswith("#")]


def installable_unit(folder: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's `hitl`, which verify requires to exist."""
    text = UNIT.read_text()
    assert INSTALLED_HITL in text
    unit = folder / UNIT.name
    unit.write_text(text.replace(INSTALLED_HITL, HITL))
    return unit


def test_the_unit_runs_hitl_serve_http_as_its_own_user_with_the_store_in_its_state_directory() -> None:
    lines = unit_lines()
    assert "DynamicUser=yes" in lines and "StateDirectory=hitl-mcp" in lines
    assert "Environment=HITL_DB=%S/hitl-mcp/hitl.db" in lines
    [exec_start] = [line for line in lines if line.startswith("ExecStart=")]
    argv = shlex.split(exec_start.removeprefix("ExecStart="))
    assert argv[:3] == [INSTALLED_HITL, "serve", "--http"]
    assert [option for option in HARDENING if option not in lines] == []


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here")
def test_systemd_verifies_the_unit_without_a_complaint(tmp_path: Path) -> None:
    unit = installable_unit(tmp_path)
    verified = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    # An unknown or misspelt key is only a warning (exit 0): any line about the unit fails the test.
    complaints = [line for line in verified.stderr.splitlines() if unit.name in line]
    assert verified.returncode == 0 and complaints == [], verified.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here")
def test_systemd_rates_the_units_exposure_low(tmp_path: Path) -> None:
    unit = installable_unit(tmp_path)
    rated = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if "--offline" in rated.stderr:
        pytest.skip(f"this systemd-analyze cannot rate a unit file offline: {rated.stderr.strip()}")
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", rated.stdout)
    assert found is not None, rated.stdout + rated.stderr
    # systemd's scale: 10 is unprotected, below 2 "OK"; hitl's unit measured 1.4.
    assert float(found[1]) <= 2.0, rated.stdout


def containerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments left out."""
    joined = re.sub(r"\\\n", " ", CONTAINERFILE.read_text())
    parsed = []
    for line in joined.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            parsed.append((word, rest.strip()))
    return parsed


def final_stage() -> list[tuple[str, str]]:
    instructions = containerfile_instructions()
    last_from = max(index for index, (word, _) in enumerate(instructions) if word == "FROM")
    return instructions[last_from:]


def test_the_containerfile_uses_known_instructions_a_slim_base_and_no_root() -> None:
    instructions = containerfile_instructions()
    assert [word for word, _ in instructions if word not in INSTRUCTIONS] == []
    stage = final_stage()
    assert re.search(r"python:3\.\d+-slim$", stage[0][1])
    [user] = [rest for word, rest in stage if word == "USER"]
    assert user.split(":")[0] not in {"root", "0"}
    assert any(word == "VOLUME" and "/var/lib/hitl" in rest for word, rest in stage)
    assert any("HITL_DB=/var/lib/hitl/hitl.db" in rest for _, rest in stage)


def exec_form(rest: str) -> list[str]:
    argv = json.loads(rest)
    assert isinstance(argv, list) and all(isinstance(arg, str) for arg in argv)
    return argv


def test_the_containers_command_and_health_check_work_against_a_real_server(tmp_path: Path) -> None:
    stage = dict(final_stage())
    check = stage["HEALTHCHECK"]
    assert check.startswith("--") and " CMD [" in check
    probe = exec_form(check[check.index("CMD ") + 4 :])
    command = exec_form(stage["ENTRYPOINT"]) + exec_form(stage["CMD"])
    assert command[:3] == ["hitl", "serve", "--http"]
    port = command[command.index("--port") + 1]
    assert f"127.0.0.1:{port}/healthz" in probe[-1] and stage["EXPOSE"] == port

    # The same command, on a loopback port of this machine rather than the container's 0.0.0.0:8000.
    args = command[3:]
    for option in ("--host", "--port"):
        at = args.index(option)
        del args[at : at + 2]
    ours = str(free_port())
    env = process_env(tmp_path, write_config(tmp_path / "hitl.toml", smtp_port=1))
    with serving(env, tmp_path / "server.log", *args, port=int(ours)):
        assert probe[0] == "python"
        answered = subprocess.run(
            [sys.executable, *probe[1:-1], probe[-1].replace(f"127.0.0.1:{port}", f"127.0.0.1:{ours}")],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert answered.returncode == 0, answered.stderr
    # Its log is the JSON the command asks for.
    logged = (tmp_path / "server.log").read_text().splitlines()
    assert logged and all(json.loads(line)["level"] for line in logged)


def compose() -> dict[str, Any]:
    yaml = pytest.importorskip("yaml", reason="PyYAML reads the compose file")
    loaded = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def test_the_compose_file_runs_two_servers_on_postgresql_behind_caddy() -> None:
    services = compose()["services"]
    assert set(services) == {"postgres", "migrate", "hitl-1", "hitl-2", "caddy"}
    for name in ("hitl-1", "hitl-2", "migrate"):
        server = services[name]
        assert server["build"] == {"context": "..", "dockerfile": "deploy/Containerfile"}
        assert (DEPLOY.parent / server["build"]["dockerfile"]).is_file()
        assert server["environment"]["HITL_DB"] == "postgresql://hitl@postgres:5432/hitl"
        assert server["depends_on"]["postgres"] == {"condition": "service_healthy"}
    assert services["migrate"]["command"] == ["db", "upgrade"]
    for name in ("hitl-1", "hitl-2"):
        assert services[name]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
        assert "/healthz" in " ".join(services[name]["healthcheck"]["test"])
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    caddy = services["caddy"]
    assert "443:443" in caddy["ports"] and "./Caddyfile:/etc/caddy/Caddyfile:ro" in caddy["volumes"]
    assert caddy["depends_on"] == {
        "hitl-1": {"condition": "service_healthy"},
        "hitl-2": {"condition": "service_healthy"},
    }
    # No password in the file: it comes from .env, and compose stops when it is missing.
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")


def test_the_caddyfile_proxies_to_the_compose_servers_with_readiness_checks() -> None:
    text = CADDYFILE.read_text()
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert body.count("{") - body.count("{$") == body.count("}") - body.count("{$")
    assert body.lstrip().startswith("{$HITL_DOMAIN} {")
    proxies = re.findall(r"reverse_proxy ([^{]+)\{", body)
    assert proxies and {proxy.strip() for proxy in proxies} == {"hitl-1:8000 hitl-2:8000"}
    assert body.count("health_uri /readyz") == len(proxies)
    # The MCP endpoint sticks to one server: its sessions live in that server's memory.
    mcp = body[body.index("handle /mcp*") :]
    assert re.search(r"lb_policy first\b", mcp[: mcp.index("handle {")])
