"""An upstream's gated tool under `approval = "confirm"`: the person at the calling client is asked, on both
protocol generations (a 2026-07-28 client through an input_required round whose retry comes back through
the proxy tool), and yes runs it once on the upstream; no runs nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from mcp import Client

from hitl_mcp.config import Settings, load_settings
from hitl_mcp.server import build_server
from tests.environment import process_env, write_config
from tests.smtp_sink import SmtpSink
from tests.test_confirm import MODES, answering
from tests.test_gateway import until_listed, upstream_table, writes
from tests.test_server import ok, text

CONFIRM_WRITES = """
[policy.notes__write_note]
rules = [{ approval = "confirm" }]
"""
NOTE = {"path": "c.txt", "text": "confirmed by the person"}


@pytest.fixture
def confirm_gateway_settings(tmp_path: Path, smtp: SmtpSink, counter: Path) -> Settings:
    extra = upstream_table(counter) + CONFIRM_WRITES
    config = write_config(tmp_path / "gateway.toml", smtp_port=smtp.port, extra=extra)
    return load_settings(process_env(tmp_path, config))


@pytest.mark.parametrize("mode", MODES)
async def test_yes_runs_the_upstream_tool_once_and_the_call_returns_its_answer(
    confirm_gateway_settings: Settings, counter: Path, mode: str
) -> None:
    asked: list[str] = []
    answer = answering({"confirm": True}, asked=asked)
    app = build_server(confirm_gateway_settings, principal="agent")
    async with Client(app, mode=mode, elicitation_callback=answer) as agent:  # type: ignore[arg-type]
        await until_listed(agent, "notes__write_note")
        result = await agent.call_tool("notes__write_note", NOTE)

    filed = ok(result)
    assert filed["status"] == "executed", text(result)
    assert filed["result"]["content"][0]["text"] == "wrote c.txt"
    assert len(asked) == 1 and "notes__write_note" in asked[0]
    assert [effect["text"] for effect in writes(counter)] == [NOTE["text"]]


@pytest.mark.parametrize("mode", MODES)
async def test_no_runs_nothing_on_the_upstream(
    confirm_gateway_settings: Settings, counter: Path, mode: str
) -> None:
    answer = answering({"confirm": False, "reason": "not that file"})
    app = build_server(confirm_gateway_settings, principal="agent")
    async with Client(app, mode=mode, elicitation_callback=answer) as agent:  # type: ignore[arg-type]
        await until_listed(agent, "notes__write_note")
        result = await agent.call_tool("notes__write_note", NOTE)

    assert ok(result)["status"] == "rejected", text(result)
    assert writes(counter) == []
