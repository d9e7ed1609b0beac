"""Identity over HTTP: bearer tokens name principals; real `hitl serve --http` processes on loopback."""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import time
import tomllib
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from hitl_mcp.auth import PrincipalTokens, http_tokens, is_loopback
from hitl_mcp.config import Settings, load_settings
from hitl_mcp.errors import ConfigError
from hitl_mcp.server import build_server
from hitl_mcp.tokens import token_sha256
from tests.cli_in_process import hitl
from tests.test_cli import BUY, HITL, free_port
from tests.test_server import ok, text

ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "test", "version": "0"},
    },
}


def minted(env: dict[str, str], name: str) -> tuple[str, str]:
    """Run `hitl token new --config NAME`: the token it shows, and the config lines it prints to paste."""
    made = hitl(env, "token", "new", "--config", name)
    assert made.returncode == 0, made.stderr
    lines = made.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("[principals."))
    [secret] = [line.strip() for line in lines[:start] if line.startswith("    ")]
    return secret, "\n".join(lines[start:])


@pytest.fixture
def tokens(env: dict[str, str], config_file: Path) -> dict[str, str]:
    """Two principals with tokens, their config lines pasted from `hitl token new` as a person would."""
    made = {name: minted(env, name) for name in ("agent", "reviewer-bot")}
    with config_file.open("a", encoding="utf-8") as file:
        for _, lines in made.values():
            file.write(f"\n{lines}\n")
    return {name: secret for name, (secret, _) in made.items()}


@contextmanager
def serving(
    env: dict[str, str], log: Path, *args: str, host: str = "127.0.0.1", port: int | None = None
) -> Iterator[str]:
    """A `hitl serve --http` process on `port` (a free loopback one by default); yields its MCP URL once
    the port answers.

    Its stderr goes to `log`, its stdout to `log` with the suffix .stdout."""
    port = port or free_port()
    with log.open("wb") as stderr, log.with_suffix(".stdout").open("wb") as stdout:
        server = subprocess.Popen(
            [HITL, "serve", "--http", "--host", host, "--port", str(port), *args],
            env=env,
            stdout=stdout,
            stderr=stderr,
        )
    try:
        deadline = time.monotonic() + 30
        while not port_open(port, host):
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"hitl serve --http did not start: {log.read_text()}")
            time.sleep(0.05)
        yield f"http://{host}:{port}/mcp"
    finally:
        server.kill()
        server.wait(timeout=10)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with httpx2.Client() as http:
            http.get(f"http://{host}:{port}/", timeout=1)
    except httpx2.TransportError:
        return False
    return True


@asynccontextmanager
async def connect(url: str, token: str | None, mode: str = "auto") -> AsyncIterator[Client]:
    """An SDK client whose every HTTP request carries `token`."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=300)) as http,
        Client(streamable_http_client(url, http_client=http), mode=mode) as client,
    ):
        yield client


def filed_by(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        return [row[0] for row in conn.execute("SELECT requested_by FROM requests")]


async def test_a_request_without_a_known_token_gets_401_and_nothing_else(
    env: dict[str, str], settings: Settings, tokens: dict[str, str], tmp_path: Path
) -> None:
    wrong = {
        "no header": {},
        "no token": {"Authorization": "Bearer"},
        "unknown token": {"Authorization": "Bearer not-a-token"},
        "the hash as token": {"Authorization": f"Bearer {token_sha256(tokens['agent'])}"},
        "another scheme": {"Authorization": f"Basic {tokens['agent']}"},
    }
    with serving(env, tmp_path / "server.log") as url:
        async with httpx2.AsyncClient() as http:
            refused = {
                why: await http.post(url, json=INITIALIZE, headers=ACCEPT | header)
                for why, header in wrong.items()
            }
            admitted = await http.post(
                url, json=INITIALIZE, headers=ACCEPT | {"Authorization": f"Bearer {tokens['agent']}"}
            )

    for why, response in refused.items():
        assert response.status_code == 401, why
        assert response.headers["www-authenticate"].startswith("Bearer"), why
        assert "mcp-session-id" not in response.headers, why
        assert "hitl" not in response.text and "serverInfo" not in response.text, why
    assert admitted.status_code == 200
    assert "mcp-session-id" in admitted.headers


@pytest.mark.parametrize("token", [None, "not-a-token"])
async def test_an_sdk_client_without_a_known_token_cannot_file(
    env: dict[str, str], settings: Settings, tokens: dict[str, str], tmp_path: Path, token: str | None
) -> None:
    with serving(env, tmp_path / "server.log") as url, pytest.raises(ExceptionGroup) as refused:
        async with connect(url, token) as client:
            await client.call_tool("buy_stock", BUY)

    # The client reports the 401 as an error response to its opening request, from its task group.
    assert refused.group_contains(MCPError, match="Server returned an error response", depth=None)
    assert filed_by(settings.db_path) == []


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_each_token_acts_as_its_own_principal_on_one_server(
    env: dict[str, str], settings: Settings, tokens: dict[str, str], tmp_path: Path, mode: str
) -> None:
    with serving(env, tmp_path / "server.log") as url:
        async with (
            connect(url, tokens["agent"], mode) as agent,
            connect(url, tokens["reviewer-bot"], mode) as bot,
        ):
            request_id = ok(await agent.call_tool("buy_stock", BUY))["request_id"]
            filed = ok(await bot.call_tool("get_request", {"request_id": request_id}))
            own = await agent.call_tool("approve", {"request_id": request_id})
            approved = ok(await bot.call_tool("approve", {"request_id": request_id, "reason": "fine"}))

    assert filed["requested_by"] == "agent"
    assert own.is_error
    assert "may not decide its own request" in text(own)
    assert approved["status"] == "executed"
    assert [(d["principal"], d["verdict"]) for d in approved["decisions"]] == [("reviewer-bot", "approve")]


async def test_a_principal_sent_as_a_tool_argument_changes_nothing(
    env: dict[str, str], settings: Settings, tokens: dict[str, str], tmp_path: Path
) -> None:
    claims = {"principal": "reviewer-bot", "requested_by": "reviewer-bot", "as": "reviewer-bot"}
    with serving(env, tmp_path / "server.log") as url:
        async with connect(url, tokens["agent"]) as agent, connect(url, tokens["reviewer-bot"]) as bot:
            smuggled = await bot.call_tool("buy_stock", BUY | {"principal": "agent"})
            request_id = ok(await agent.call_tool("buy_stock", BUY))["request_id"]
            approve = await agent.call_tool("approve", {"request_id": request_id} | claims)
            reject = await agent.call_tool("reject", {"request_id": request_id, "reason": "x"} | claims)
            own = await agent.call_tool("approve", {"request_id": request_id})
            record = ok(await agent.call_tool("get_request", {"request_id": request_id}))
            listed = ok(await bot.call_tool("list_pending", {}))

    # An argument no tool takes is refused, never read as who is calling, and nothing is filed from it.
    for refused in (smuggled, approve, reject):
        assert refused.is_error
        assert "takes no such argument" in text(refused)
    assert [r["request_id"] for r in listed["requests"]] == [request_id]
    assert own.is_error and "may not decide its own request" in text(own)
    assert record["requested_by"] == "agent"
    assert record["status"] == "pending"
    assert record["decisions"] == []


async def test_an_http_session_opened_with_one_token_refuses_another(
    env: dict[str, str], settings: Settings, tokens: dict[str, str], tmp_path: Path
) -> None:
    with serving(env, tmp_path / "server.log") as url:
        async with httpx2.AsyncClient() as http:
            opened = await http.post(
                url, json=INITIALIZE, headers=ACCEPT | {"Authorization": f"Bearer {tokens['agent']}"}
            )
            session = {"Mcp-Session-Id": opened.headers["mcp-session-id"]}
            list_tools = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
            borrowed, owned = [
                await http.post(
                    url,
                    json=list_tools,
                    headers=ACCEPT | session | {"Authorization": f"Bearer {tokens[name]}"},
                )
                for name in ("reviewer-bot", "agent")
            ]

    # The SDK answers as if the session did not exist; the token that opened it still works.
    assert borrowed.status_code == 404
    assert owned.status_code == 200 and "buy_stock" in owned.text


def test_serving_http_on_an_exposed_address_without_tokens_is_refused_before_binding(
    env: dict[str, str], settings: Settings
) -> None:
    port = free_port()
    refused = subprocess.run(
        [HITL, "serve", "--http", "--host", "0.0.0.0", "--port", str(port)],  # noqa: S104 - refusal precedes bind
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert refused.returncode == 2
    assert refused.stdout == ""
    [line] = refused.stderr.strip().splitlines()
    assert "0.0.0.0 without tokens" in line and "hitl token new" in line and "--host 127.0.0.1" in line
    assert not port_open(port)


async def test_serving_http_on_loopback_without_tokens_warns_and_acts_as_hitl_principal(
    env: dict[str, str], settings: Settings, tmp_path: Path
) -> None:
    log = tmp_path / "server.log"
    with serving(env, log) as url:
        async with connect(url, None) as client:
            filed = ok(await client.call_tool("buy_stock", BUY))
            own = await client.call_tool("approve", {"request_id": filed["request_id"]})

    assert filed_by(settings.db_path) == ["agent"]
    assert own.is_error
    warning = [line for line in log.read_text().splitlines() if "warning" in line]
    assert warning and "no principal has a token_sha256" in warning[0]
    assert log.with_suffix(".stdout").read_bytes() == b""


def test_token_new_prints_a_token_whose_sha256_is_the_printed_hash(env: dict[str, str]) -> None:
    secret, lines = minted(env, "alice")
    again, _ = minted(env, "alice")

    config = tomllib.loads(lines)
    assert config["principals"]["alice"]["token_sha256"] == hashlib.sha256(secret.encode()).hexdigest()
    assert len(secret) >= 43 and again != secret


def test_token_new_quotes_a_principal_name_toml_would_misread(env: dict[str, str]) -> None:
    secret, lines = minted(env, "ops@example.org")

    assert tomllib.loads(lines)["principals"]["ops@example.org"]["token_sha256"] == token_sha256(secret)


def test_token_new_refuses_an_invalid_principal_name(env: dict[str, str]) -> None:
    refused = hitl(env, "token", "new", "bad name")

    assert refused.returncode == 2
    assert "not a valid principal name" in refused.stderr
    assert refused.stdout == ""


async def test_a_token_only_server_refuses_a_call_that_carries_no_token(
    settings: Settings, tokens: dict[str, str], env: dict[str, str]
) -> None:
    # In process there is no HTTP request and so no token: the server must not fall back to a default.
    configured = load_settings(env)
    verifier = PrincipalTokens.from_settings(configured)
    assert verifier is not None
    async with Client(build_server(configured, tokens=verifier)) as client:
        result = await client.call_tool("buy_stock", BUY)

    assert result.is_error
    assert "no authenticated principal" in text(result)
    assert filed_by(configured.db_path) == []


async def test_the_verifier_maps_each_token_to_its_principal_only(
    tokens: dict[str, str], env: dict[str, str]
) -> None:
    verifier = PrincipalTokens.from_settings(load_settings(env))
    assert verifier is not None

    for name, secret in tokens.items():
        access = await verifier.verify_token(secret)
        assert access is not None
        assert (access.client_id, access.subject) == (name, name)
        # The request context keeps no raw secret, only its hash.
        assert secret not in access.model_dump_json()
    assert await verifier.verify_token(tokens["agent"] + "x") is None
    assert await verifier.verify_token("") is None


def test_one_token_for_two_principals_is_refused() -> None:
    digest = token_sha256("shared")

    with pytest.raises(ConfigError, match=r"the same token as principals\.agent"):
        PrincipalTokens({"agent": digest, "reviewer-bot": digest})


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.0.1", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("0.0.0.0", False),  # noqa: S104
        ("::", False),
        ("192.168.1.10", False),
        ("example.org", False),
        ("", False),
    ],
)
def test_only_loopback_addresses_count_as_private(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_a_config_without_tokens_allows_loopback_only(settings: Settings) -> None:
    assert http_tokens(settings, "127.0.0.1") is None
    with pytest.raises(ConfigError, match="without tokens"):
        http_tokens(settings, "10.0.0.1")


def test_a_server_on_any_loopback_address_refuses_a_rebound_host_name(
    env: dict[str, str], tmp_path: Path
) -> None:
    with serving(env, tmp_path / "server.log", host="127.0.0.2") as url, httpx2.Client(timeout=5) as http:
        netloc = url.split("/")[2]
        own = http.post(url, json=INITIALIZE, headers=ACCEPT | {"Host": netloc})
        rebound = http.post(
            url, json=INITIALIZE, headers=ACCEPT | {"Host": "evil.example:" + netloc.split(":")[1]}
        )

    assert own.status_code == 200
    assert rebound.status_code == 421


def test_one_token_for_two_principals_is_refused_when_the_config_loads(
    env: dict[str, str], config_file: Path
) -> None:
    _, lines = minted(env, "agent")
    shared = lines.splitlines()[-1]
    config_file.write_text(config_file.read_text() + f"\n{lines}\n[principals.reviewer-bot]\n{shared}\n")

    # Every command reads the config, so none has to wait for `hitl serve --http` to find the clash.
    for command in (["policy", "check"], ["list"]):
        refused = hitl(env, *command)
        assert refused.returncode == 2, refused.stderr
        [line] = refused.stderr.strip().splitlines()
        assert "principals.reviewer-bot.token_sha256: the same token as principals.agent" in line


def test_a_token_acts_as_its_principal_in_the_normal_form(env: dict[str, str], config_file: Path) -> None:
    secret, lines = minted(env, "Reviewer-Bot")
    config_file.write_text(config_file.read_text() + f"\n{lines}\nroles = ['trader']\n")
    settings = load_settings(env)
    verifier = PrincipalTokens.from_settings(settings)
    assert verifier is not None

    access = anyio.run(verifier.verify_token, secret)

    assert access is not None and access.client_id == "reviewer-bot"
    assert settings.roles_of(access.client_id) == ("trader",)
    assert PrincipalTokens({"Agent": token_sha256("x")}).principals == ("agent",)
