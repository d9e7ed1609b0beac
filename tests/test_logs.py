"""`hitl serve`'s log: JSON lines a collector can parse, a request's lines carrying its id, access lines only
when asked for, and an upstream's stderr that cannot pass for a line of hitl's. Real `hitl serve --http`
processes, a real upstream (tests/upstream_server.py), a real MCP client."""

from __future__ import annotations

import json
import logging
import re
import sys
import tomllib
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from hitl_mcp.config import load_settings
from hitl_mcp.errors import ConfigError
from hitl_mcp.logs import JsonFormatter, LoggingSettings
from tests.environment import process_env, write_config
from tests.inbox import make_site, serve, until
from tests.test_auth import connect, serving
from tests.test_cli import BUY
from tests.test_examples import EXAMPLE, uncommented
from tests.test_gateway import upstream_table
from tests.test_server import ok

# What a hostile upstream writes on its stderr: a carriage return and a terminal escape that would redraw a
# terminal's line as a warning of hitl's, then, on a line of its own, a JSON object shaped like hitl's log.
FORGED_TEXT = "all fine\rhitl-mcp: warning: forged\x1b[2K"
FORGED_JSON = json.dumps(
    {"time": "2026-01-01T00:00:00.000Z", "level": "error", "logger": "hitl_mcp.gate", "event": "forged"}
)
HOSTILE = f"{FORGED_TEXT}\n{FORGED_JSON}"


def site(folder: Path, extra: str = "", *, say: str | None = None) -> dict[str, str]:
    upstream = upstream_table(folder / "effects.jsonl", "--say", say) if say is not None else ""
    config = write_config(folder / "hitl.toml", smtp_port=1, extra=extra + upstream)
    return process_env(folder, config)


def lines(log: Path) -> list[str]:
    # Split on line feeds only: what a collector reading the stream does.
    return log.read_text(encoding="utf-8").split("\n")[:-1]


def records(log: Path) -> list[dict[str, Any]]:
    parsed = [json.loads(line) for line in lines(log)]
    assert all(isinstance(record, dict) for record in parsed)
    return parsed


async def file_buy(url: str, token: str | None = None, arguments: dict[str, Any] = BUY) -> str:
    async with connect(url, token) as client:
        filed = ok(await client.call_tool("buy_stock", arguments))
    return str(filed["request_id"])


@pytest.fixture
def upstream_says_hostile_things(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    log = tmp_path / "server.log"
    with serving(site(tmp_path, say=HOSTILE), log, "--log-format", "json") as url:
        yield url, log


def test_every_json_line_parses_with_its_fields_and_a_request_carries_its_id(
    upstream_says_hostile_things: tuple[str, Path],
) -> None:
    url, log = upstream_says_hostile_things
    request_id = anyio.run(file_buy, url)
    until(lambda: request_id in log.read_text(encoding="utf-8"), timeout=30)
    until(lambda: "upstream_server: serving" in log.read_text(encoding="utf-8"), timeout=30)
    httpx2.get(url.removesuffix("/mcp") + "/healthz", timeout=10)

    logged = records(log)
    for record in logged:
        assert {"time", "level", "event", "logger"} <= record.keys(), record
        assert record["level"] in {"debug", "info", "warning", "error", "critical"}
        assert record["time"].endswith("Z") and datetime.fromisoformat(record["time"]).utcoffset() is not None
    [filed] = [record for record in logged if record.get("request_id") == request_id]
    assert filed["tool"] == "buy_stock" and filed["principal"] == "agent" and filed["status"] == "pending"
    assert request_id in filed["event"]
    # The server's own lines are there too, as JSON, not as text beside it.
    assert any(record["event"].startswith("serving MCP at ") for record in logged)
    assert any(record["event"].startswith("Uvicorn running on ") for record in logged)
    # Access lines are off unless a setting turns them on.
    assert not [record for record in logged if record["logger"] == "uvicorn.access"]


def test_a_requests_lifecycle_lines_carry_its_id_and_who_acted(tmp_path: Path) -> None:
    site = make_site(tmp_path, tokens=True, extra='\n[logging]\nformat = "json"\n')
    small = {"symbol": "GOOGL", "quantity": 10, "price": 150.0}  # one trader's approval
    with serve(site) as served:
        request_id = anyio.run(file_buy, served.mcp, site.tokens["agent"], small)
        with served.api(site.tokens["alice"]) as api:
            approved = api.post(f"/api/v1/requests/{request_id}/approve", json={})
        assert approved.status_code == 200 and approved.json()["status"] == "executed", approved.text
        until(lambda: "executed" in served.log.read_text(encoding="utf-8"), timeout=10)

    steps = [
        (record["event"].split()[2].rstrip(":"), record.get("principal"), record["status"])
        for record in records(served.log)
        if record.get("request_id") == request_id
    ]
    assert steps == [
        ("filed", "agent", "pending"),
        ("decided", "alice", "executing"),
        ("ran", None, "executed"),
    ]


def test_an_upstream_cannot_forge_a_json_line(upstream_says_hostile_things: tuple[str, Path]) -> None:
    _, log = upstream_says_hostile_things
    until(lambda: "upstream_server: serving" in log.read_text(encoding="utf-8"), timeout=30)

    logged = records(log)
    said = [record for record in logged if record.get("upstream") == "notes"]
    # Its lines are strings inside hitl's records, named for it, escaped as it wrote them.
    assert FORGED_JSON in [record["event"] for record in said]
    assert "all fine\\rhitl-mcp: warning: forged\\x1b[2K" in [record["event"] for record in said]
    assert {record["logger"] for record in said} == {"hitl_mcp.upstream"}
    assert not [record for record in logged if record["event"] == "forged"]


def test_an_upstream_cannot_inject_a_text_line(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    with serving(site(tmp_path, say=HOSTILE), log) as _:
        until(lambda: "upstream_server: serving" in log.read_text(encoding="utf-8"), timeout=30)

    text = log.read_text(encoding="utf-8")
    assert "\r" not in text and "\x1b" not in text
    assert "hitl-mcp: notes: all fine\\rhitl-mcp: warning: forged\\x1b[2K\n" in text
    assert f"hitl-mcp: notes: {FORGED_JSON}\n" in text
    # Every line is hitl's; none of the upstream's starts as a warning of hitl's would.
    assert all(line.startswith("hitl-mcp: ") for line in lines(log))
    assert not [line for line in lines(log) if line.startswith("hitl-mcp: warning: forged")]


def test_the_access_log_setting_adds_json_access_lines_and_flags_win_over_settings(tmp_path: Path) -> None:
    env = site(tmp_path, '\n[logging]\nformat = "text"\nlevel = "error"\naccess_log = true\n')
    log = tmp_path / "server.log"
    with serving(env, log, "--log-format", "json", "--log-level", "INFO") as url:
        base = url.removesuffix("/mcp")
        assert httpx2.get(f"{base}/healthz?probe=1", timeout=10).status_code == 200
        until(lambda: "/healthz?probe=1" in log.read_text(encoding="utf-8"), timeout=10)

    logged = records(log)
    [access] = [record for record in logged if record.get("path") == "/healthz?probe=1"]
    assert access["logger"] == "uvicorn.access" and access["level"] == "info"
    assert access["method"] == "GET" and access["http_status"] == 200
    assert re.fullmatch(r"127\.0\.0\.1:\d+", access["client"])


def test_the_level_setting_leaves_out_less_severe_records(tmp_path: Path) -> None:
    env = site(tmp_path, '\n[logging]\nlevel = "warning"\naccess_log = true\n')
    log = tmp_path / "server.log"
    with serving(env, log) as url:
        request_id = anyio.run(file_buy, url)
        httpx2.get(url.removesuffix("/mcp") + "/healthz", timeout=10)

    text = log.read_text(encoding="utf-8")
    # The warning about a tokenless server stays; the filing and the access line (info) do not.
    assert "hitl-mcp: warning: no principal has a token_sha256" in text
    assert request_id not in text and "GET /healthz" not in text


def test_a_traceback_is_one_json_field() -> None:
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        record = logging.getLogger("hitl_mcp.gate").makeRecord(
            "hitl_mcp.gate", logging.ERROR, __file__, 1, "action %s crashed", ("buy_stock",), sys.exc_info()
        )
    line = JsonFormatter().format(record)

    assert "\n" not in line
    entry = json.loads(line)
    assert entry["event"] == "action buy_stock crashed" and entry["level"] == "error"
    assert entry["traceback"].startswith("Traceback (most recent call last):")
    assert entry["traceback"].endswith("ValueError: bad\nvalue")


def test_a_bad_logging_setting_is_refused_naming_it(tmp_path: Path) -> None:
    env = site(tmp_path, '\n[logging]\nformat = "xml"\n')
    with pytest.raises(ConfigError, match=r"^logging\.format: "):
        load_settings(env)


def test_the_example_shows_every_logging_setting() -> None:
    restored = tomllib.loads(uncommented(EXAMPLE.read_text(encoding="utf-8")))
    assert set(restored.get("logging", {})) == set(LoggingSettings.model_fields)
