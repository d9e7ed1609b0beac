"""While an upstream starts: a fresh client's first listing waits for its tools (a short while), and a
call of one of its tools waits too, then says the upstream is starting, or why it is not running and
when it is tried again — never `Unknown tool`. Real stdio upstreams that start slowly or not at all."""

from __future__ import annotations

from pathlib import Path

import anyio
from mcp import Client

from hitl_mcp.config import Settings, load_settings
from hitl_mcp.server import build_server
from tests.environment import process_env, write_config
from tests.smtp_sink import SmtpSink
from tests.test_gateway import tool_names, upstream_table
from tests.test_server import ok, text


def settings_with(
    tmp_path: Path, smtp: SmtpSink, counter: Path, *flags: str, wait: float, extra: str = ""
) -> Settings:
    # A wait long enough for this machine's slowest start of the test upstream (imports included), or
    # short where the test is about what happens after it.
    table = f"\n[gateway]\nstart_wait_seconds = {wait}\n" + upstream_table(counter, *flags) + extra
    config = write_config(tmp_path / "starting.toml", smtp_port=smtp.port, extra=table)
    return load_settings(process_env(tmp_path, config))


async def test_a_fresh_clients_first_listing_holds_the_tools_of_an_upstream_still_starting(
    tmp_path: Path, smtp: SmtpSink, counter: Path
) -> None:
    settings = settings_with(tmp_path, smtp, counter, "--slow-start", "0.5", wait=30)
    async with Client(build_server(settings, principal="agent")) as agent:
        first = await tool_names(agent)

    assert {"notes__write_note", "notes__read_note", "buy_stock"} <= first


async def test_a_call_made_while_its_upstream_starts_waits_for_it_and_is_filed(
    tmp_path: Path, smtp: SmtpSink, counter: Path
) -> None:
    settings = settings_with(tmp_path, smtp, counter, "--slow-start", "0.5", wait=30)
    async with Client(build_server(settings, principal="agent")) as agent:
        filed = await agent.call_tool("notes__write_note", {"path": "a.txt", "text": "early"})

    assert ok(filed)["status"] == "pending"


async def test_a_call_to_an_upstream_still_starting_after_the_wait_says_so_and_when_to_retry(
    tmp_path: Path, smtp: SmtpSink, counter: Path
) -> None:
    settings = settings_with(tmp_path, smtp, counter, "--slow-start", "60", wait=1)
    async with Client(build_server(settings, principal="agent")) as agent:
        started = anyio.current_time()
        called = await agent.call_tool("notes__write_note", {"path": "a.txt", "text": "early"})
        listed = await tool_names(agent)
        took = anyio.current_time() - started

    assert called.is_error
    assert text(called) == (
        "notes__write_note: upstream notes is starting and its tools are not listed yet; retry in a few "
        "seconds (it has up to 60 s to start). Nothing was done."
    )
    # Neither waits longer than the bound (each waits it once), and the listing answers without its tools.
    assert "notes__write_note" not in listed and "buy_stock" in listed
    assert took < 2 * 1 + 5


async def test_a_call_to_an_upstream_that_cannot_start_says_why_and_when_it_is_tried_again(
    tmp_path: Path, smtp: SmtpSink, counter: Path
) -> None:
    restart = "\n[upstreams.notes.restart]\ninitial_delay_seconds = 120\nmax_delay_seconds = 120\n"
    settings = settings_with(tmp_path, smtp, counter, "--exit-at-start", "7", wait=30, extra=restart)
    async with Client(build_server(settings, principal="agent")) as agent:
        called = await agent.call_tool("notes__write_note", {"path": "a.txt", "text": "early"})

    assert called.is_error
    said = text(called)
    assert said.startswith("notes__write_note: upstream notes is not running (")
    assert "status 7" in said and "hitl starts it again in " in said and said.endswith("Nothing was done.")
