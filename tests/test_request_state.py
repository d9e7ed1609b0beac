"""`[gate] request_state_key_file`: replicas sharing the key file take a 2026-07-28 confirm question's answer
wherever it lands; without it (the default) only the process that asked can read it. Two real HTTP
servers on one store, driven with raw JSON-RPC so each message goes to the replica chosen."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp_types import CLIENT_CAPABILITIES_META_KEY, PROTOCOL_VERSION_META_KEY

from hitl_mcp.config import Settings, load_settings
from hitl_mcp.errors import ConfigError
from hitl_mcp.ledger import Ledger
from hitl_mcp.request_state import request_state_security
from hitl_mcp.server import build_server
from tests.environment import process_env, write_config
from tests.smtp_sink import SmtpSink
from tests.test_confirm import POLICY, SMALL
from tests.test_tasks import MODERN, _rpc_body, http_app

KEY = "9f" * 32


def confirm_settings(tmp_path: Path, smtp: SmtpSink, *, key_file: str | None) -> Settings:
    config = write_config(tmp_path / "hitl.toml", smtp_port=smtp.port, extra=POLICY)
    text = config.read_text(encoding="utf-8")
    if key_file:
        text = text.replace(
            "dedup_seconds = 0\n", f'dedup_seconds = 0\nrequest_state_key_file = "{key_file}"\n'
        )
    config.write_text(text, encoding="utf-8")
    return load_settings(process_env(tmp_path, config))


def private_file(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    return path


async def call(url: str, params: dict[str, Any]) -> dict[str, Any]:
    """One tools/call of a 2026-07-28 client that can answer form questions, sent to `url`."""
    meta = {PROTOCOL_VERSION_META_KEY: MODERN, CLIENT_CAPABILITIES_META_KEY: {"elicitation": {"form": {}}}}
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {**params, "_meta": meta}}
    headers = {
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
        "MCP-Protocol-Version": MODERN,
        "Mcp-Method": "tools/call",
        "Mcp-Name": params["name"],
    }
    async with httpx2.AsyncClient() as raw:
        return _rpc_body(await raw.post(url, headers=headers, content=json.dumps(body)))


async def asked_on_one_answered_on_another(settings: Settings) -> dict[str, Any]:
    async with http_app(settings) as first, http_app(settings) as second:
        asked = await call(first, {"name": "buy_stock", "arguments": SMALL})
        question = asked["result"]
        assert question["resultType"] == "input_required", asked
        answer = {"hitl_confirm": {"action": "accept", "content": {"confirm": True}}}
        retry = {
            "name": "buy_stock",
            "arguments": SMALL,
            "inputResponses": answer,
            "requestState": question["requestState"],
        }
        return await call(second, retry)


async def test_replicas_sharing_the_key_file_take_the_answer_wherever_it_lands(
    tmp_path: Path, smtp: SmtpSink
) -> None:
    private_file(tmp_path / "state.key", f"# rotated 2026-12\n{KEY}\n")
    settings = confirm_settings(tmp_path, smtp, key_file="state.key")

    answered = await asked_on_one_answered_on_another(settings)

    assert answered["result"]["structuredContent"]["status"] == "executed", answered
    ledger = Ledger(tmp_path / "ledger.db", 100_000.0)
    assert len(await ledger.orders()) == 1


async def test_by_default_another_replica_cannot_read_the_state_and_nothing_runs(
    tmp_path: Path, smtp: SmtpSink
) -> None:
    settings = confirm_settings(tmp_path, smtp, key_file=None)

    answered = await asked_on_one_answered_on_another(settings)

    assert "error" in answered or answered["result"].get("isError"), answered
    ledger = Ledger(tmp_path / "ledger.db", 100_000.0)
    assert await ledger.orders() == []


@pytest.mark.parametrize(
    ("content", "mode", "says"),
    [
        (None, 0o600, "cannot read"),
        (KEY, 0o644, "may be read by others (mode 0644)"),
        ("# nothing here\n", 0o600, "holds no key"),
        ("short-key\n", 0o600, "key 1 of"),
        (f"{KEY}\n{KEY}\n", 0o600, "duplicates"),
    ],
)
def test_a_bad_key_file_is_refused_naming_the_setting(
    tmp_path: Path, smtp: SmtpSink, content: str | None, mode: int, says: str
) -> None:
    if content is not None:
        (tmp_path / "state.key").write_text(content, encoding="utf-8")
        (tmp_path / "state.key").chmod(mode)
    settings = confirm_settings(tmp_path, smtp, key_file="state.key")
    with pytest.raises(ConfigError) as refused:
        build_server(settings)
    assert str(refused.value).startswith("gate.request_state_key_file: ")
    assert says in str(refused.value)
    assert request_state_security(confirm_settings(tmp_path, smtp, key_file=None)) is None
