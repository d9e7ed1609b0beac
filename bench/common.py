"""What every benchmark shares: the figure it reports, a throw-away setup, statistics, a no-op action."""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from hitl_mcp.actions import Action, ActionSettings, Execution
from hitl_mcp.config import Settings, load_settings
from hitl_mcp.tokens import token_sha256

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
HITL = VENV_BIN / "hitl"

# Principals of the bench config: the agent files, alice approves (the default policy: one approval by
# anyone but the requester).
AGENT = "agent"
APPROVER = "alice"

# `dedup_seconds = 0`: a gated call that repeats a pending request of the same principal (same tool and
# arguments) would otherwise return that request and file nothing, and every figure that files the same
# order again and again would measure a lookup instead of a filing.
CONFIG = """\
[gate]
default_ttl_seconds = 86400
sweep_interval_seconds = 5.0
dedup_seconds = 0

[actions.buy_stock]
ledger = "ledger.db"
starting_cash = 1000000000000.0

[actions.send_email]
smtp_host = "127.0.0.1"
smtp_port = 1025
"""
PRINCIPALS = {APPROVER: ["trader"]}


def config_text(tokens: Mapping[str, str] | None = None) -> str:
    """The bench config; with `tokens` (principal → bearer token), each principal's `token_sha256`, so an
    HTTP server admits those tokens only and each acts as its principal."""
    lines = [CONFIG]
    tokens = tokens or {}
    for name in sorted({*PRINCIPALS, *tokens}):
        lines.append(f"[principals.{name}]")
        if name in PRINCIPALS:
            lines.append(f"roles = {json.dumps(PRINCIPALS[name])}")
        if name in tokens:
            lines.append(f'token_sha256 = "{token_sha256(tokens[name])}"')
        lines.append("")
    return "\n".join(lines)


@dataclass
class Figure:
    """One row of the table and one key of the JSON line."""

    key: str
    value: float | None
    target: str
    met: bool | None
    measured: str = ""
    baseline: str = ""
    notes: list[str] = field(default_factory=list)
    extra: dict[str, float | None] = field(default_factory=dict)
    """More keys for the JSON line (e.g. a p50 beside a p99)."""


@dataclass(frozen=True)
class Context:
    """The run's temporary folder and how hard to push."""

    root: Path
    quick: bool = False

    @property
    def population(self) -> int:
        """Requests the scale benchmarks hold: 100,000 (10,000 with --quick, then not comparable)."""
        return 10_000 if self.quick else 100_000

    def reps(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    def folder(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path


@dataclass(frozen=True)
class Setup:
    """A config file, a store path and the environment a `hitl` process needs to share them."""

    folder: Path
    env: dict[str, str]
    settings: Settings

    @property
    def db_path(self) -> Path:
        return self.settings.db_path


def setup(folder: Path, *, db_name: str = "hitl.db", tokens: Mapping[str, str] | None = None) -> Setup:
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "hitl.toml"
    config.write_text(config_text(tokens), encoding="utf-8")
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(folder),
        "HITL_DB": str(folder / db_name),
        "HITL_CONFIG": str(config),
        "HITL_PRINCIPAL": AGENT,
    }
    if os.environ.get("PYTHONPATH"):  # e.g. a checkout of src/ to measure instead of the installed one
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return Setup(folder, env, load_settings(env))


# -- a bench-only gated action that does nothing -------------------------------------------------------


class NoopArguments(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n: int = 0


class NoopAction(Action[NoopArguments, ActionSettings]):
    """A gated action with no preview and no effect: what is left is the gate's own cost."""

    name = "noop"
    description = "Does nothing (benchmark only)."
    arguments_model = NoopArguments
    settings_model = ActionSettings

    def summary(self, args: NoopArguments) -> str:
        return f"do nothing #{args.n}"

    async def preview(self, args: NoopArguments) -> dict[str, Any]:
        return {}

    async def execute(self, args: NoopArguments, execution: Execution) -> dict[str, Any]:
        return {}


def with_noop(settings: Settings) -> tuple[Settings, dict[str, Action]]:  # type: ignore[type-arg]
    """Settings that know the no-op action, and an actions mapping holding only it."""
    actions: Mapping[str, ActionSettings] = {**settings.actions, NoopAction.name: ActionSettings()}
    return replace(settings, actions=actions), {NoopAction.name: NoopAction(ActionSettings())}


# -- numbers -------------------------------------------------------------------------------------------


def percentile(samples: Iterable[float], q: float) -> float:
    """The q-th percentile (0-100), linear between closest ranks."""
    ordered = sorted(samples)
    if not ordered:
        raise ValueError("no samples")
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(samples: Iterable[float]) -> float:
    return statistics.median(samples)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


class Stopwatch:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def file_size(path: Path) -> int:
    """The database file plus whatever its WAL still holds."""
    total = 0
    for suffix in ("", "-wal"):
        candidate = path.with_name(path.name + suffix)
        if candidate.exists():
            total += candidate.stat().st_size
    return total
