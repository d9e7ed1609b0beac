"""`hitl policy simulate FILE`: the calls filed in a real store (SQLite file, PostgreSQL database) replayed
against another policy, counted beside what the policy in force did, without writing a byte."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import anyio
import pytest

from hitl_mcp.config import load_settings
from hitl_mcp.gate import open_gate
from tests.cli_in_process import hitl
from tests.environment import process_env, write_config

PRINCIPALS = '\n[principals.alice]\nroles = ["trader"]\n[principals.bob]\nroles = ["ops"]\n'
# The policy in force: a buy over $10,000 needs a trader; anything else the default (one approval by anyone).
IN_FORCE = (
    PRINCIPALS + '\n[[policy.buy_stock.rules]]\nwhen = "total > 10000"\nlevels = [{ roles = ["trader"] }]\n'
)
LOOSER = IN_FORCE + '\n[[policy.buy_stock.rules]]\napproval = "none"\n'
TIGHTER = IN_FORCE + '\n[[policy.send_email.rules]]\nlevels = [{ roles = ["trader"] }, { roles = ["ops"] }]\n'
DENYING = (
    PRINCIPALS
    + '\n[[policy.buy_stock.rules]]\nwhen = "symbol = \'GOOGL\'"\napproval = "deny"\n'
    + '\n[[policy.buy_stock.rules]]\nwhen = "total > 10000"\nlevels = [{ roles = ["trader"] }]\n'
)
BUYS = [
    {"symbol": "GOOGL", "quantity": 100, "price": 150.0},  # $15,000: a trader
    {"symbol": "AAPL", "quantity": 100, "price": 200.0},  # $20,000: a trader
    {"symbol": "GOOGL", "quantity": 1, "price": 10.0},
    {"symbol": "GOOGL", "quantity": 2, "price": 10.0},
    {"symbol": "MSFT", "quantity": 3, "price": 10.0},
    {"symbol": "MSFT", "quantity": 4, "price": 10.0},
]
EMAILS = [{"to": "ann@example.com", "subject": f"note {n}", "body": "hello"} for n in range(2)]
ANYONE = "needs 1 × anyone but the requester"
TRADER = "needs 1 × trader"


@pytest.fixture(params=["sqlite", "postgres"])
def filed_env(request: pytest.FixtureRequest, tmp_path: Path, smtp: Any) -> dict[str, str]:
    """A store holding six buys and two emails filed under the policy in force, on either backend."""
    config = write_config(tmp_path / "hitl.toml", smtp_port=smtp.port, extra=IN_FORCE)
    env = process_env(tmp_path, config)
    if request.param == "postgres":
        env["HITL_DB"] = request.getfixturevalue("pg_url")
    settings = load_settings(env)

    async def file_all() -> None:
        async with open_gate(settings) as gate:
            for arguments in BUYS:
                await gate.file("buy_stock", arguments, "agent")
            for email in EMAILS:
                await gate.file("send_email", email, "agent")

    anyio.run(file_all)
    return env


def simulate(env: dict[str, str], tmp_path: Path, policy: str, *args: str) -> dict[str, Any]:
    other = write_config(tmp_path / "other.toml", smtp_port=1, extra=policy)
    done = hitl(env, "policy", "simulate", str(other), "--json", *args)
    assert done.returncode == 0, done.stderr
    figures: dict[str, Any] = json.loads(done.stdout)
    return figures


def test_a_looser_policy_lets_the_small_buys_run_at_once(filed_env: dict[str, str], tmp_path: Path) -> None:
    figures = simulate(filed_env, tmp_path, LOOSER)

    assert (figures["calls"], figures["changed"]) == (8, 4)
    buys = figures["tools"]["buy_stock"]
    assert buys["now"] == {ANYONE: 4, TRADER: 2}
    assert buys["would"] == {"at once": 4, TRADER: 2}
    [change] = buys["changes"]
    assert (change["from"], change["to"], change["calls"]) == (ANYONE, "at once", 4)
    assert len(change["examples"]) == 3 and change["examples"][0]["summary"].startswith("Buy 1 GOOGL")
    assert figures["tools"]["send_email"] == {
        "calls": 2,
        "changed": 0,
        "now": {ANYONE: 2},
        "would": {ANYONE: 2},
        "changes": [],
    }


def test_a_tighter_policy_asks_two_levels_of_every_email(filed_env: dict[str, str], tmp_path: Path) -> None:
    figures = simulate(filed_env, tmp_path, TIGHTER)

    assert (figures["calls"], figures["changed"]) == (8, 2)
    emails = figures["tools"]["send_email"]
    assert emails["would"] == {"needs 1 × trader, then 1 × ops": 2}
    assert figures["tools"]["buy_stock"]["changed"] == 0


def test_a_denying_policy_refuses_every_googl_buy(filed_env: dict[str, str], tmp_path: Path) -> None:
    figures = simulate(filed_env, tmp_path, DENYING)

    assert (figures["calls"], figures["changed"]) == (8, 3)
    changes = {(c["from"], c["to"]): c["calls"] for c in figures["tools"]["buy_stock"]["changes"]}
    assert changes == {(ANYONE, "denied"): 2, (TRADER, "denied"): 1}


def test_the_text_shows_counts_and_examples_and_writes_nothing(tmp_path: Path, smtp: Any) -> None:
    config = write_config(tmp_path / "hitl.toml", smtp_port=smtp.port, extra=IN_FORCE)
    env = process_env(tmp_path, config)
    settings = load_settings(env)

    async def file_all() -> None:
        async with open_gate(settings) as gate:
            for arguments in BUYS:
                await gate.file("buy_stock", arguments, "agent")

    anyio.run(file_all)
    db = Path(env["HITL_DB"])
    before = _digest(db)
    other = write_config(tmp_path / "other.toml", smtp_port=1, extra=DENYING)

    done = hitl(env, "policy", "simulate", str(other))

    assert done.returncode == 0, done.stderr
    assert "Replayed 6 calls" in done.stdout and "3 would have had another outcome" in done.stdout
    assert "2 × needs 1 × anyone but the requester → denied, e.g." in done.stdout
    assert "Buy 1 GOOGL" in done.stdout
    assert _digest(db) == before
    future = hitl(env, "policy", "simulate", str(other), "--since", "2999-01-01")
    assert future.returncode == 0 and future.stdout.strip().startswith("No calls filed since 2999-01-01")


def test_an_invalid_file_is_refused_in_one_line_naming_the_key(env: dict[str, str], tmp_path: Path) -> None:
    bad = write_config(
        tmp_path / "bad.toml",
        smtp_port=1,
        extra='\n[[policy.buy_stock.rules]]\nwhen = "total >"\napproval = "none"\n',
    )

    done = hitl(env, "policy", "simulate", str(bad))
    missing = hitl(env, "policy", "simulate", str(tmp_path / "absent.toml"))

    assert done.returncode == 2 and done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1 and "policy.buy_stock.rules[0].when" in done.stderr
    assert missing.returncode == 2 and "absent.toml" in missing.stderr


def _digest(db: Path) -> str:
    digest = hashlib.sha256()
    for suffix in ("", "-wal"):
        path = db.with_name(db.name + suffix)
        if path.exists():
            digest.update(path.read_bytes())
    return digest.hexdigest()
