"""`hitl list` pages: a page of --limit rows, a last line saying how many more and the command for them,
every page with --all-pages; and the calls the policy denied at filing, listed as the report counts them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import anyio
import pytest

from hitl_mcp.config import Settings, load_settings
from hitl_mcp.errors import NotAllowed
from hitl_mcp.gate import open_gate
from tests.cli_in_process import hitl

DENY_BIG = """
[policy.buy_stock]
rules = [
  { when = "quantity > 1000", approval = "deny" },
  { levels = [{ count = 1 }] },
]
"""
MORE = re.compile(r"^([0-9,]+) more: (hitl list .*--cursor (\S+)) \(or --all-pages for every page\)$")


@pytest.fixture
def governed(env: dict[str, str], config_file: Path) -> Settings:
    config_file.write_text(config_file.read_text() + DENY_BIG)
    return load_settings(env)


def file_many(settings: Settings, pending: int, denied: int = 0) -> list[str]:
    """Pending requests (quantities 1, 2, …), then calls the policy denies; the pending ones' ids."""

    async def run() -> list[str]:
        async with open_gate(settings) as gate:
            ids = [
                (
                    await gate.file("buy_stock", {"symbol": "ACME", "quantity": n, "price": 1.0}, "agent")
                ).request_id
                for n in range(1, pending + 1)
            ]
            for _ in range(denied):
                with pytest.raises(NotAllowed):
                    await gate.file("buy_stock", {"symbol": "ACME", "quantity": 5000, "price": 1.0}, "agent")
            return ids

    return anyio.run(run)


def rows(stdout: str) -> list[str]:
    header, *lines = stdout.splitlines()
    assert header.startswith("ID ")
    return lines


def test_a_page_says_how_many_more_and_the_command_that_lists_them(
    env: dict[str, str], governed: Settings
) -> None:
    ids = file_many(governed, 7)

    first = hitl(env, "list", "--limit", "3")
    found = MORE.match(first.stderr.strip())
    assert first.returncode == 0 and found is not None, first.stderr
    assert found[1] == "4" and found[2].startswith("hitl list --limit 3 --cursor ")
    second = hitl(env, *found[2].split()[1:])
    again = MORE.match(second.stderr.strip())
    assert again is not None and again[1] == "1"
    last = hitl(env, *again[2].split()[1:])

    pages = [rows(page.stdout) for page in (first, second, last)]
    assert [len(page) for page in pages] == [3, 3, 1]
    assert [line[:10] for page in pages for line in page] == [i[:10] for i in ids]  # oldest first, once each
    assert last.stderr == ""


def test_all_pages_prints_every_row_under_one_header_and_no_more_line(
    env: dict[str, str], governed: Settings
) -> None:
    ids = file_many(governed, 5)

    listed = hitl(env, "list", "--limit", "2", "--all-pages")
    as_json = hitl(env, "list", "--limit", "2", "--all-pages", "--json")

    assert listed.returncode == 0 and listed.stderr == ""
    assert [line[:10] for line in rows(listed.stdout)] == [i[:10] for i in ids]
    assert [record["request_id"] for record in json.loads(as_json.stdout)] == ids
    assert as_json.stderr == ""


def test_a_json_page_is_a_json_array_and_the_more_line_goes_to_stderr(
    env: dict[str, str], governed: Settings
) -> None:
    ids = file_many(governed, 3)

    page = hitl(env, "list", "--json", "--limit", "2")
    found = MORE.match(page.stderr.strip())
    assert found is not None and found[2].startswith("hitl list --limit 2 --cursor ")
    rest = hitl(env, "list", "--json", "--limit", "2", "--cursor", found[3])

    assert [record["request_id"] for record in json.loads(page.stdout)] == ids[:2]
    assert [record["request_id"] for record in json.loads(rest.stdout)] == ids[2:]
    assert json.loads(hitl(env, "list", "--json", "--status", "executed").stdout) == []


def test_denied_calls_are_listed_as_the_report_counts_them(env: dict[str, str], governed: Settings) -> None:
    ids = file_many(governed, 2, denied=3)

    denied = hitl(env, "list", "--status", "denied")
    every = hitl(env, "list", "--all", "--json")
    report = json.loads(hitl(env, "report", "--json").stdout)

    assert denied.returncode == 0, denied.stderr
    lines = rows(denied.stdout)
    assert len(lines) == 3 and all(
        " denied " in line and "rule 1 (when quantity > 1000): denied" in line for line in lines
    )
    records = json.loads(every.stdout)
    assert [r["request_id"] for r in records[:2]] == ids
    assert [r["status"] for r in records] == ["pending", "pending", "denied", "denied", "denied"]
    assert records[2]["tool"] == "buy_stock" and records[2]["requested_by"] == "agent"
    assert report["outcomes"]["denied"] == 3 == sum(r["status"] == "denied" for r in records)


def test_all_continues_from_the_requests_into_the_denied_calls(
    env: dict[str, str], governed: Settings
) -> None:
    file_many(governed, 2, denied=2)

    first = hitl(env, "list", "--all", "--limit", "3")
    found = MORE.match(first.stderr.strip())
    assert found is not None and found[1] == "1", first.stderr
    rest = hitl(env, *found[2].split()[1:])

    assert [line.split()[3] for line in rows(first.stdout)] == ["pending", "pending", "denied"]
    assert [line.split()[3] for line in rows(rest.stdout)] == ["denied"]
    assert rest.stderr == ""


def test_a_cursor_this_listing_did_not_print_is_refused(env: dict[str, str], governed: Settings) -> None:
    file_many(governed, 1)

    for cursor in ("x", "d3", "1;DROP"):
        refused = hitl(env, "list", "--cursor", cursor)
        assert refused.returncode == 2 and refused.stdout == ""
        assert "--cursor" in refused.stderr and "not a cursor this listing printed" in refused.stderr
    assert hitl(env, "list", "--limit", "10001").returncode == 2
