"""Fuzz: hypothesis-generated arguments for an upstream's gated tools, through a real MCP session to hitl
with a real upstream behind it. A call either is refused naming what is wrong (nothing filed), or files
one request holding exactly the arguments sent; never a crash, and the upstream never runs."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import pytest
from anyio.from_thread import start_blocking_portal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import validators

from hitl_mcp.config import Settings
from tests.test_fuzz import SyncSession, assert_not_a_crash
from tests.test_gateway import session, writes

SCALE = int(os.environ.get("HITL_FUZZ_SCALE") or "1")
FUZZ = settings(
    max_examples=150 * SCALE,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
# Mostly the keys the tools take, sometimes others: near-valid input reaches the deepest checks.
KEYS = st.sampled_from(["path", "text", "seconds", "message"]) | st.text(max_size=10)
ARGUMENTS = st.dictionaries(KEYS, JSON | st.text(max_size=200), max_size=4)


@contextmanager
def synced(settings: Settings) -> Iterator[SyncSession]:
    with (
        start_blocking_portal() as portal,
        portal.wrap_async_context_manager(session(settings, "agent")) as client,
    ):
        yield SyncSession(portal, client)


@pytest.mark.parametrize("tool", ["notes__write_note", "notes__fail"])
def test_upstream_tool_refuses_or_files_exactly_what_was_sent(
    gateway_settings: Settings,
    counter: Path,
    tool: str,
) -> None:
    with (
        synced(gateway_settings) as agent,
        closing(
            sqlite3.connect(f"{gateway_settings.db_path.as_uri()}?mode=ro", uri=True, isolation_level=None)
        ) as store,
    ):
        schema = agent.input_schema(tool)
        validator = validators.validator_for(schema)(schema)

        @FUZZ
        @given(arguments=ARGUMENTS)
        def check(arguments: dict[str, Any]) -> None:
            before = store.execute("SELECT count(*) FROM requests").fetchone()[0]
            result = agent.call(tool, arguments)
            filed = store.execute("SELECT count(*) FROM requests").fetchone()[0] - before
            if not validator.is_valid(arguments):
                message = assert_not_a_crash(tool, result)
                assert result.is_error and filed == 0, message
                assert "(" in message and ")" in message, message  # names the rule it broke
                return
            assert not result.is_error, result
            assert filed == 1
            request_id = (result.structured_content or {})["request_id"]
            stored = store.execute("SELECT arguments FROM requests WHERE id = ?", [request_id]).fetchone()[0]
            assert json.loads(stored) == arguments

        check()
    assert writes(counter) == []
