"""A passed call answers only once its audit record is durable: when the store cannot take the record,
the agent gets a clear refusal instead of the upstream's answer, whether the upstream answers before the
record fails or after."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from contextlib import closing

import pytest

from hitl_mcp.config import Settings
from tests.test_gateway import session
from tests.test_server import text
from tests.test_store_faults import locked


def passed_tools(settings: Settings) -> list[str]:
    with closing(sqlite3.connect(settings.db_path)) as conn:
        rows = conn.execute("SELECT details FROM audit WHERE event = 'passed' ORDER BY seq").fetchall()
    return [json.loads(details)["tool"] for (details,) in rows]


@pytest.fixture
def quick(gateway_settings: Settings) -> Settings:
    """A store that gives up on a lock after 0.2 s: the record fails while the call is still on its way."""
    return dataclasses.replace(
        gateway_settings, gate=gateway_settings.gate.model_copy(update={"busy_timeout_seconds": 0.2})
    )


async def test_a_passed_call_whose_record_cannot_be_written_withholds_the_answer(quick: Settings) -> None:
    async with session(quick, "agent") as agent:
        with locked(quick.db_path):
            withheld = await agent.call_tool("notes__stats", {})
        answered = await agent.call_tool("notes__stats", {})

    assert withheld.is_error
    assert withheld.structured_content is None
    assert text(withheld) == (
        "Error executing tool notes__stats: notes__stats was answered but its audit record could not be "
        "written (the store is locked by another process); the answer is withheld. Call it again once the "
        "store takes writes."
    )
    assert not answered.is_error and answered.structured_content == {"count": 0, "deletes": 0}
    assert passed_tools(quick) == ["notes__stats"]


async def test_a_slow_answer_is_withheld_too_when_the_record_failed_while_it_was_coming(
    quick: Settings,
) -> None:
    # The record is written while the call is on its way: it fails (0.2 s) long before the answer comes.
    async with session(quick, "agent") as agent:
        with locked(quick.db_path):
            withheld = await agent.call_tool("notes__sleep", {"seconds": 1})

    assert withheld.is_error and withheld.structured_content is None
    assert "notes__sleep was answered but its audit record could not be written" in text(withheld)
    assert passed_tools(quick) == []
