"""A real `hitl serve --http` with its inbox and API for the web tests: its config, sign-in and clients."""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx2

from hitl_mcp.tokens import new_token, token_sha256
from tests.environment import process_env, write_config
from tests.test_auth import serving
from tests.test_cli import free_port

SIGN_IN_LINK = re.compile(r"(http://\S+/login\?token=\S+)")
USERS = [(1, "ann@test.com", 25), (2, "bob@test.com", 41), (3, "cid@corp.com", 29)]
# Who decides what in the web tests: the README's worked example, trimmed.
POLICY = """
[policy.buy_stock]
rules = [
  { when = "quantity * price <= 10000", levels = [{ roles = ["trader"], count = 1 }] },
  { levels = [{ roles = ["trader"], count = 1 }, { roles = ["risk_manager"], count = 1 }] },
]
[policy.delete_database_records]
rules = [{ levels = [{ roles = ["engineer"], count = 1, escalate_after_seconds = 600 }] }]
"""
ROLES = {"alice": "trader", "bob": "risk_manager", "carol": "engineer", "agent": None}


@dataclass(frozen=True)
class Site:
    """A served store: the folder holding its config, store, ledger and target database, and its env."""

    folder: Path
    env: dict[str, str]
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def ledger(self) -> Path:
        return self.folder / "ledger.db"

    def orders(self) -> list[tuple[str, str, int]]:
        """The ledger's orders: request id, symbol, quantity."""
        if not self.ledger.exists():
            return []
        with sqlite3.connect(self.ledger) as conn:
            rows = conn.execute("SELECT client_order_id, symbol, quantity FROM orders").fetchall()
        return [(str(a), str(b), int(c)) for a, b, c in rows]


def make_site(folder: Path, *, tokens: bool, extra: str = "") -> Site:
    """A config with a ledger, a target database and (with `tokens`) principals holding roles and tokens.

    The SMTP port is one nothing listens on: no web test sends mail."""
    folder.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(folder / "app.db") as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS users (id INTEGER PRIMARY KEY, email TEXT, age INTEGER)")
        conn.executemany("INSERT OR REPLACE INTO users VALUES (?, ?, ?)", USERS)
    conn.close()
    secrets: dict[str, str] = {}
    tables = '\n[actions.delete_database_records]\ndatabase = "app.db"\nallowed_tables = ["users"]\n' + extra
    if tokens:
        for name, role in ROLES.items():
            secrets[name] = new_token()
            roles = f'["{role}"]' if role else "[]"
            tables += (
                f'\n[principals.{name}]\nroles = {roles}\ntoken_sha256 = "{token_sha256(secrets[name])}"\n'
            )
        tables += POLICY
    config = write_config(folder / "hitl.toml", smtp_port=free_port(), extra=tables)
    return Site(folder, process_env(folder, config), secrets)


@dataclass(frozen=True)
class Served:
    """A running server: its base URL and its stderr."""

    base: str
    log: Path

    @property
    def mcp(self) -> str:
        return f"{self.base}/mcp"

    def sign_in_link(self) -> str:
        found = SIGN_IN_LINK.search(self.log.read_text())
        assert found is not None, self.log.read_text()
        return found.group(1)

    def api(self, token: str | None) -> httpx2.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx2.Client(base_url=self.base, headers=headers, timeout=30)

    @contextmanager
    def signed_in(self, token: str) -> Iterator[httpx2.Client]:
        """A client holding a session cookie, signed in as a person does: the form, then its button."""
        with httpx2.Client(base_url=self.base, timeout=30, follow_redirects=False) as client:
            form = client.get("/login")
            signed = client.post("/login", data={"csrf": csrf_of(form.text), "token": token, "next": "/"})
            assert signed.status_code == 303, signed.text
            yield client


@contextmanager
def serve(site: Site, log_name: str = "server.log", env: dict[str, str] | None = None) -> Iterator[Served]:
    log = site.folder / log_name
    with serving(env or site.env, log) as url:
        yield Served(url.removesuffix("/mcp"), log)


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found is not None, page
    return found.group(1)


def until(check: object, timeout: float = 10.0) -> None:
    """Poll `check()` until it is true, or fail after `timeout` seconds."""
    assert callable(check)
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout} s: {check}")
        time.sleep(0.02)
