"""Fixtures shared by the suite: a real store file, a real SMTP server, a real target database."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

from hitl_mcp.config import Settings, load_settings
from hitl_mcp.gate import Gate, open_gate
from tests.environment import process_env, write_config
from tests.postgres_cluster import pg_empty_url, pg_url, postgres_cluster
from tests.smtp_sink import SmtpSink

__all__ = ["pg_empty_url", "pg_url", "postgres_cluster"]  # PostgreSQL fixtures, for every test module

# In CI every property test runs the same examples each time: a red build is a bug anyone can replay.
# Elsewhere hypothesis keeps exploring new ones.
hypothesis_settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI") == "true":
    hypothesis_settings.load_profile("ci")


# Module-scoped fixtures (a served site, a browser, a plug-in venv) cost seconds each. Under
# `pytest -n N --dist loadgroup` (make pytest) the tests of a module that uses one run on one worker, so
# it starts once rather than once per worker; every other test is scheduled on its own.
@pytest.hookimpl(tryfirst=True)  # before xdist reads the marks into the node ids
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    grouping = bool(getattr(config.option, "loadgroup", False))
    for item in items:
        if shares_a_module_fixture(item):
            group = f"module:{item.nodeid.partition('::')[0]}"
            item.add_marker(pytest.mark.xdist_group(group))
            if grouping:
                name_group(item, group)


def name_group(item: pytest.Item, group: str) -> None:
    """The `@group` suffix by which xdist's scheduler keeps a group on one worker.

    xdist 3.8 writes it to `item._nodeid`, which pytest 9 no longer reads (a node's id is `_id`): no group
    reached the scheduler, and each module-scoped fixture (a plug-in venv, a browser, a served site) started
    again on every worker that drew one of its tests, and again each time a worker came back to its module.
    """
    if "@" in item.nodeid.rpartition("]")[2]:
        return  # a pytest or xdist that names groups itself
    if not hasattr(item, "_id"):
        return
    try:
        from _pytest.nodeid import coerce_node_id
    except ImportError:  # another pytest: its groups are its own affair, the suite only runs slower
        return
    item._id = coerce_node_id(f"{item.nodeid}@{group}")


def shares_a_module_fixture(item: pytest.Item) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    return any(
        definitions[-1].scope in ("class", "module", "package")
        for definitions in info.name2fixturedefs.values()
        if definitions
    )


USERS = [
    (1, "ann@test.com", 25, "active", "2025-06-01", None),
    (2, "bob@test.com", 41, "inactive", "2023-01-15", None),
    (3, "cid@corp.com", 29, "inactive", "2023-11-30", "2024-02-01"),
    (4, "dee@corp.com", 52, "active", "2025-09-09", None),
]


@pytest.fixture
def smtp() -> Iterator[SmtpSink]:
    with SmtpSink() as sink:
        yield sink


@pytest.fixture
def target_db(tmp_path: Path) -> Path:
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT, age INTEGER, status TEXT, "
            "last_login TEXT, deleted_at TEXT)"
        )
        conn.executemany("INSERT INTO users VALUES (?, ?, ?, ?, ?, ?)", USERS)
        conn.execute("CREATE TABLE sessions (id INTEGER PRIMARY KEY, user_id INTEGER)")
        conn.execute("CREATE TABLE secrets (id INTEGER PRIMARY KEY, value TEXT)")
        conn.execute("INSERT INTO secrets VALUES (1, 'keep me')")
    conn.close()
    return path


@pytest.fixture
def config_file(tmp_path: Path, smtp: SmtpSink, target_db: Path) -> Path:
    tables = (
        f'\n[actions.delete_database_records]\ndatabase = "{target_db.name}"\n'
        'allowed_tables = ["users", "sessions"]\n'
    )
    return write_config(tmp_path / "hitl.toml", smtp_port=smtp.port, extra=tables)


@pytest.fixture
def env(tmp_path: Path, config_file: Path) -> dict[str, str]:
    """The environment a `hitl` process gets: this test's store and config, nothing of the user's."""
    return process_env(tmp_path, config_file)


@pytest.fixture
def settings(env: dict[str, str]) -> Settings:
    return load_settings(env)


@pytest.fixture
async def gate(settings: Settings) -> AsyncIterator[Gate]:
    async with open_gate(settings) as opened:
        yield opened


@pytest.fixture
def counter(tmp_path: Path) -> Path:
    """Where tests/upstream_server.py records each side effect it has."""
    return tmp_path / "effects.jsonl"


@pytest.fixture
def gateway_env(tmp_path: Path, smtp: SmtpSink, counter: Path) -> dict[str, str]:
    """A config with one upstream, tests/upstream_server.py: its writes and deletes gated, reads passed."""
    from tests.test_gateway import upstream_table

    config = write_config(tmp_path / "gateway.toml", smtp_port=smtp.port, extra=upstream_table(counter))
    return process_env(tmp_path, config)


@pytest.fixture
def gateway_settings(gateway_env: dict[str, str]) -> Settings:
    return load_settings(gateway_env)
