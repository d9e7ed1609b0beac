"""Settings from the environment and one TOML file, validated at start; every error names its key."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hitl_mcp.actions import ACTION_TYPES, ActionSettings
from hitl_mcp.actions.base import describe_validation_error
from hitl_mcp.errors import ConfigError
from hitl_mcp.notify.settings import Notifier, load_notifiers
from hitl_mcp.policy import ActionPolicy, load_policies

PRINCIPAL_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}$")
DEFAULT_PRINCIPAL = "agent"
TOP_LEVEL_TABLES = frozenset({"gate", "actions", "principals", "policy", "notify"})


class GateSettings(BaseModel):
    """The `[gate]` table."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    default_ttl_seconds: int = Field(default=86_400, gt=0, le=366 * 86_400)
    sweep_interval_seconds: float = Field(default=5.0, gt=0, le=3600)
    orphan_grace_seconds: float = Field(
        default=10.0, ge=0, le=3600, description="How long an approved request may wait for its approver"
    )
    executing_timeout_seconds: float = Field(
        default=600.0,
        gt=0,
        le=7 * 86_400,
        description="After this long an executing request is shown as outcome unknown even when its "
        "claimant cannot be checked (another host); it is never re-run by itself",
    )
    synchronous: Literal["full", "normal"] = "full"


class PrincipalSettings(BaseModel):
    """One `[principals.NAME]` table: the roles a principal holds, and its HTTP token's SHA-256."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    roles: tuple[str, ...] = ()
    token_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Settings:
    db_path: Path
    config_path: Path | None
    principal: str
    gate: GateSettings
    actions: Mapping[str, ActionSettings]
    principals: Mapping[str, PrincipalSettings] = field(default_factory=dict)
    policies: Mapping[str, ActionPolicy] = field(default_factory=dict)
    notifiers: tuple[Notifier, ...] = ()

    def roles_of(self, principal: str) -> tuple[str, ...]:
        known = self.principals.get(principal)
        return known.roles if known else ()

    def ttl_for(self, tool: str) -> int:
        policy = self.policies.get(tool)
        for override in (policy.ttl_seconds if policy else None, self.actions[tool].ttl_seconds):
            if override is not None:
                return override
        return self.gate.default_ttl_seconds


def data_dir() -> Path:
    return Path(platformdirs.user_data_dir("hitl-mcp", appauthor=False))


def check_principal(name: str, source: str) -> str:
    if not PRINCIPAL_PATTERN.match(name):
        raise ConfigError(
            f"{source}: {name!r} is not a valid principal name (letters, digits and . _ @ + -, "
            "at most 64 characters, starting with a letter or digit)"
        )
    return name


def load_settings(env: Mapping[str, str] | None = None, *, principal: str | None = None) -> Settings:
    """Read HITL_DB, HITL_CONFIG and HITL_PRINCIPAL, and the TOML file HITL_CONFIG names."""
    env = os.environ if env is None else env
    config_path = Path(env["HITL_CONFIG"]).expanduser().resolve() if env.get("HITL_CONFIG") else None
    raw = _read_toml(config_path) if config_path else {}
    base_dir = config_path.parent if config_path else data_dir()
    db_path = Path(env["HITL_DB"]).expanduser() if env.get("HITL_DB") else data_dir() / "hitl.db"
    if principal is None:
        principal = check_principal(env.get("HITL_PRINCIPAL") or DEFAULT_PRINCIPAL, "HITL_PRINCIPAL")
    principals = _principals(raw.get("principals", {}))
    return Settings(
        db_path=db_path.resolve(),
        config_path=config_path,
        principal=principal,
        gate=_gate_settings(raw.get("gate", {})),
        actions=_action_settings(raw.get("actions", {}), base_dir),
        principals=principals,
        policies=load_policies(raw.get("policy", {}), principals),
        notifiers=load_notifiers(raw.get("notify"), principals),
    )


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            raw = tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError(f"HITL_CONFIG: {path} does not exist") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    unknown = sorted(set(raw) - TOP_LEVEL_TABLES)
    if unknown:
        raise ConfigError(
            f"{path}: unknown key {unknown[0]!r}; expected tables: {', '.join(sorted(TOP_LEVEL_TABLES))}"
        )
    return raw


def _gate_settings(raw: Any) -> GateSettings:
    if not isinstance(raw, dict):
        raise ConfigError("gate: must be a table")
    try:
        return GateSettings.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(describe_validation_error(error, prefix="gate.")) from None


def _action_settings(raw: Any, base_dir: Path) -> dict[str, ActionSettings]:
    if not isinstance(raw, dict):
        raise ConfigError("actions: must be a table of [actions.NAME] tables")
    unknown = sorted(set(raw) - set(ACTION_TYPES))
    if unknown:
        raise ConfigError(
            f"actions.{unknown[0]}: no such action; known actions: {', '.join(sorted(ACTION_TYPES))}"
        )
    settings = {}
    for name, action_type in ACTION_TYPES.items():
        table = raw.get(name, {})
        if not isinstance(table, dict):
            raise ConfigError(f"actions.{name}: must be a table")
        settings[name] = action_type.configure(table, base_dir)
    return settings


def _principals(raw: Any) -> dict[str, PrincipalSettings]:
    if not isinstance(raw, dict):
        raise ConfigError("principals: must be a table of [principals.NAME] tables")
    principals = {}
    for name, table in raw.items():
        check_principal(name, f"principals.{name}")
        if not isinstance(table, dict):
            raise ConfigError(f"principals.{name}: must be a table")
        try:
            principals[name] = PrincipalSettings.model_validate(table)
        except ValidationError as error:
            raise ConfigError(describe_validation_error(error, prefix=f"principals.{name}.")) from None
    return principals
