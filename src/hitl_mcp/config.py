"""Settings from the environment and one TOML file, validated at start; every error names its key."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit, urlunsplit

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from hitl_mcp.actions import ActionSettings, registry
from hitl_mcp.actions.base import describe_validation_error
from hitl_mcp.errors import ConfigError
from hitl_mcp.logs import LoggingSettings
from hitl_mcp.notify.settings import Notifier, check_link_notifiers, email_address, load_notifiers
from hitl_mcp.notify.slack_settings import (
    SLACK_USER_PATTERN,
    SlackSettings,
    check_slack_channels,
    check_slack_users,
    load_slack,
)
from hitl_mcp.policy import ActionPolicy, load_policies, policy_warnings
from hitl_mcp.upstream.settings import (
    GatewaySettings,
    UpstreamSettings,
    expand,
    load_gateway,
    load_upstreams,
    merge_upstreams,
)

PRINCIPAL_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}$")
DEFAULT_PRINCIPAL = "agent"
TOP_LEVEL_TABLES = frozenset(
    {
        "gate",
        "actions",
        "principals",
        "policy",
        "notify",
        "upstreams",
        "gateway",
        "web",
        "store",
        "cli",
        "slack",
        "grants",
        "logging",
    }
)
# `scheme://…`: HITL_DB naming a database server rather than a file. One letter and a colon (C:) is a drive.
URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+)://")
POSTGRES_SCHEMES = frozenset({"postgresql", "postgres"})


@dataclass(frozen=True)
class StoreLocation:
    """Where the gate's store is: an SQLite file (`path`, the default) or a PostgreSQL database (`url`)."""

    path: Path | None = None
    url: str | None = None

    @property
    def kind(self) -> Literal["sqlite", "postgresql"]:
        return "postgresql" if self.url is not None else "sqlite"

    def describe(self) -> str:
        """The location for a person to read: a URL without its password."""
        if self.url is None:
            return str(self.path)
        return redact(self.url)

    def setting(self) -> str:
        """What HITL_DB says to reach this store from another process (a URL with its password, if any)."""
        return self.url if self.url is not None else str(self.path)


def redact(url: str) -> str:
    """A database URL with any password replaced by `***`: for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))


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
    synchronous: Literal["full", "normal"] = Field(
        default="full",
        description="SQLite's synchronous mode for the store: full survives power loss; normal commits "
        "faster and may lose the last commits (never consistency) if the machine loses power",
    )
    busy_timeout_seconds: float = Field(
        default=5.0,
        gt=0,
        le=600,
        allow_inf_nan=False,
        description="How long a write waits for another process's lock on the store before it gives up "
        "with 'the store is locked by another process'",
    )
    dedup_seconds: float = Field(
        default=600.0,
        ge=0,
        le=86_400,
        allow_inf_nan=False,
        description="A gated call repeating a pending request of the same principal, with the same tool and "
        "arguments, within this many seconds returns that request instead of filing another; 0 turns "
        "this off",
    )
    confirm_timeout_seconds: float = Field(
        default=120.0,
        gt=0,
        le=3600,
        allow_inf_nan=False,
        description='How long a call under approval = "confirm" waits for the person at an older client to '
        "answer its question; unanswered, the request waits for one approval by anyone but the requester",
    )
    request_state_key_file: Path | None = Field(
        default=None,
        description="A file of secret keys, one a line (at least 32 characters each; the first seals, every "
        'one unseals), sealing the state a 2026-07-28 approval = "confirm" question travels with, so its '
        "answer may reach any server holding the same file; relative to the config file's folder. Not "
        "set: a key of this process alone, and the answer must come back to it",
    )


class OidcSettings(BaseModel):
    """The `[web.oidc]` table: people sign in to the inbox through the team's OpenID Provider."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    issuer: str = Field(
        pattern=r"^https?://[^/?#\s]+(/[^?#\s]*)?$",
        description="The provider's issuer URL; its /.well-known/openid-configuration is read at sign-in",
    )
    client_id: str = Field(min_length=1, max_length=512, description="This inbox's client id at the provider")
    client_secret: str = Field(
        min_length=1,
        max_length=4096,
        repr=False,
        description="Its secret; write ${VAR} to read it from the environment",
    )
    principal_claim: str = Field(
        default="email",
        pattern=r"^[A-Za-z0-9_.:-]{1,64}$",
        description="The claim that names the principal (email, preferred_username, sub), case-folded",
    )
    roles_claim: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_.:-]{1,64}$",
        description="A claim whose values become the person's roles (groups, say); not set: roles come "
        "only from the config's [principals.NAME]",
    )
    scopes: tuple[str, ...] = Field(
        default=("openid", "email", "profile"),
        description="The scopes asked for; openid is always among them",
    )


class WebSettings(BaseModel):
    """The `[web]` table: the inbox and REST API that `hitl serve --http` serves beside `/mcp`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    public_url: str | None = Field(
        default=None,
        pattern=r"^https?://[^/?#\s]+(/[^?#\s]*)?$",
        description="Where people reach the inbox (behind a proxy, say): notifications link to its pages, "
        "and an https URL makes the session cookie Secure. Not set: no links",
    )
    session_hours: float = Field(
        default=12.0, gt=0, le=24 * 90, allow_inf_nan=False, description="How long a sign-in lasts"
    )
    session_idle_minutes: float = Field(
        default=60.0,
        gt=0,
        le=24 * 60 * 90,
        allow_inf_nan=False,
        description="How long a sign-in lasts unused: a browser left this long is signed out",
    )
    oidc: OidcSettings | None = Field(default=None, description="Single sign-on through an OpenID Provider")


class CliSettings(BaseModel):
    """The `[cli]` table: what `hitl` may do when it opens the store itself."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    direct_decisions: bool = Field(
        default=True,
        description="Whether approve, reject, cancel, retry and settle may open the store directly. false on "
        "a shared store: every decision then goes through a server (HITL_SERVER and a token), so it carries "
        "an authenticated principal rather than an OS user name or --as",
    )


class GrantsSettings(BaseModel):
    """The `[grants]` table: the bounds every standing approval (`hitl grants add`) is made within."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_seconds: int = Field(
        default=7 * 86_400,
        gt=0,
        le=366 * 86_400,
        description="The longest a grant may last: a longer --expires is refused, saying this cap, never cut "
        "short quietly",
    )


class StoreSettings(BaseModel):
    """The `[store]` table: where the store is when HITL_DB does not say."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str | None = Field(
        default=None,
        min_length=1,
        description="A file path or sqlite:///path (SQLite), or postgresql://USER@HOST:PORT/DB (PostgreSQL); "
        "HITL_DB, when set, wins",
    )
    archive_after_days: float | None = Field(
        default=None,
        gt=0,
        description="A server moves the requests finished more than this many days ago, with their decisions "
        "and audit records, into archive_dir once a day (as `hitl db archive` does); not set: never",
    )
    archive_dir: Path | None = Field(
        default=None,
        description="The folder the daily archive writes its files to (hitl-archive-SEQ.jsonl, mode 0600), "
        "relative to the config file's folder; needed with archive_after_days",
    )

    @field_validator("archive_dir")
    @classmethod
    def _archive_dir(cls, value: Path | None) -> Path | None:
        if value is not None and not str(value).strip():
            raise ValueError("must name a folder")
        return value


class PrincipalSettings(BaseModel):
    """One `[principals.NAME]` table: the roles a principal holds, and its HTTP token's SHA-256."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    roles: tuple[str, ...] = ()
    token_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    slack_user: str | None = Field(
        default=None,
        pattern=SLACK_USER_PATTERN,
        description="The Slack user id (U…) that presses as this principal",
    )
    email: str | None = Field(
        default=None,
        max_length=254,
        description="Where `email_approvers` notifiers send this principal their own decision links",
    )

    @field_validator("email")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        return email_address(value)


@dataclass(frozen=True)
class Settings:
    db_path: Path
    """The SQLite store's file; unused when `store_url` names a PostgreSQL database."""
    config_path: Path | None
    principal: str
    gate: GateSettings
    actions: Mapping[str, ActionSettings]
    principals: Mapping[str, PrincipalSettings] = field(default_factory=dict)
    policies: Mapping[str, ActionPolicy] = field(default_factory=dict)
    notifiers: tuple[Notifier, ...] = ()
    upstreams: Mapping[str, UpstreamSettings] = field(default_factory=dict)
    """The upstream MCP servers, by name: `[upstreams.NAME]`, and `hitl serve --upstreams FILE`'s."""
    gateway: GatewaySettings = field(default_factory=GatewaySettings)
    """`[gateway]`: the defaults every upstream gets, those added later included."""
    web: WebSettings = field(default_factory=WebSettings)
    warnings: tuple[str, ...] = ()
    """What loads but cannot work as written (a rule that fails on every call, a level nobody can fill):
    `hitl policy check` and `hitl serve` print these."""
    store_url: str | None = None
    """The PostgreSQL database the store is in (HITL_DB or `[store] url`); None: the SQLite file."""
    cli: CliSettings = field(default_factory=CliSettings)
    """`[cli]`: whether decisions may be made by opening the store directly."""
    slack: SlackSettings | None = None
    """`[slack]`: the bot that posts approval messages with buttons; None: no Slack app."""
    grants: GrantsSettings = field(default_factory=GrantsSettings)
    store_options: StoreSettings = field(default_factory=StoreSettings)
    """`[store]` beyond where the store is: the daily archive (archive_dir resolved against the config's
    folder)."""
    """`[grants]`: the cap on how long a standing approval may last."""
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    """`[logging]`: how `hitl serve` writes its log (its flags win)."""

    @property
    def store(self) -> StoreLocation:
        return StoreLocation(url=self.store_url) if self.store_url else StoreLocation(path=self.db_path)

    def roles_of(self, principal: str) -> tuple[str, ...]:
        known = self.principals.get(fold_principal(principal))
        return known.roles if known else ()

    def ttl_for(self, tool: str) -> int:
        policy = self.policies.get(tool)
        # An upstream's tool has no [actions.NAME] table: its policy or the default decides.
        configured = self.actions.get(tool)
        for override in (
            policy.ttl_seconds if policy else None,
            configured.ttl_seconds if configured else None,
        ):
            if override is not None:
                return override
        return self.gate.default_ttl_seconds


def data_dir() -> Path:
    return Path(platformdirs.user_data_dir("hitl-mcp", appauthor=False))


def fold_principal(name: str) -> str:
    """The one form principals are compared in: ASCII lower case (a valid name is ASCII), so `--as AGENT`
    is `agent` and nobody counts twice, or decides their own request, by spelling their name differently."""
    return name.lower()


def check_principal(name: str, source: str) -> str:
    """`name` in its normal form (`fold_principal`), or a refusal naming `source`."""
    # fullmatch: `$` alone would let a trailing newline through.
    if not PRINCIPAL_PATTERN.fullmatch(name):
        raise ConfigError(
            f"{source}: {name!r} is not a valid principal name (letters, digits and . _ @ + -, "
            "at most 64 characters, starting with a letter or digit)"
        )
    return fold_principal(name)


def check_distinct_tokens(hashes: Mapping[str, str]) -> None:
    """Refuse one token for two principals: whoever holds it could not be told apart. `hashes` maps each
    principal (as written in the config) to its token's SHA-256."""
    owners: dict[str, str] = {}
    for principal, digest in hashes.items():
        if digest in owners:
            raise ConfigError(
                f"principals.{principal}.token_sha256: the same token as principals.{owners[digest]}; "
                f"give each principal its own (hitl token new {principal})"
            )
        owners[digest] = principal


def load_settings(env: Mapping[str, str] | None = None, *, principal: str | None = None) -> Settings:
    """Read HITL_DB, HITL_CONFIG and HITL_PRINCIPAL, and the TOML file HITL_CONFIG names."""
    env = os.environ if env is None else env
    config_path = Path(env["HITL_CONFIG"]).expanduser().resolve() if env.get("HITL_CONFIG") else None
    raw = _read_toml(config_path) if config_path else {}
    base_dir = config_path.parent if config_path else data_dir()
    location = _store_location(env.get("HITL_DB"), raw.get("store", {}), base_dir)
    if principal is None:
        principal = check_principal(env.get("HITL_PRINCIPAL") or DEFAULT_PRINCIPAL, "HITL_PRINCIPAL")
    else:
        principal = check_principal(principal, "principal")
    principals = _principals(raw.get("principals", {}))
    gateway = load_gateway(raw.get("gateway", {}))
    upstreams = load_upstreams(
        raw.get("upstreams", {}), base_dir, env, config_path=config_path, gateway=gateway
    )
    policies = load_policies(raw.get("policy", {}), principals, upstreams)
    check_slack_users({name: known.slack_user for name, known in principals.items()})
    notifiers = load_notifiers(raw.get("notify"), principals)
    web = _web_settings(raw.get("web", {}), env)
    check_link_notifiers(notifiers, web.public_url)
    slack = load_slack(raw.get("slack"), env)
    check_slack_channels([notifier.slack_channel for notifier in notifiers], slack)
    return Settings(
        db_path=location.path or _db_path(None),
        store_url=location.url,
        config_path=config_path,
        principal=principal,
        gate=_gate_settings(raw.get("gate", {})),
        actions=_action_settings(raw.get("actions", {}), base_dir),
        principals=principals,
        policies=policies,
        notifiers=notifiers,
        upstreams=upstreams,
        gateway=gateway,
        web=web,
        cli=_cli_settings(raw.get("cli", {})),
        slack=slack,
        grants=_grants_settings(raw.get("grants", {})),
        logging=_logging_settings(raw.get("logging", {})),
        store_options=_store_options(raw.get("store", {}), base_dir),
        warnings=tuple(policy_warnings(policies, principals)),
    )


def with_upstreams(settings: Settings, added: Iterable[UpstreamSettings]) -> Settings:
    """`settings` with more upstreams (a desktop client's, read by `hitl serve --upstreams FILE`); a name
    already configured is refused, naming both places."""
    defaulted = (settings.gateway.apply(upstream) for upstream in added)
    return replace(settings, upstreams=merge_upstreams(settings.upstreams, defaulted))


def _store_location(env_value: str | None, raw: Any, base_dir: Path) -> StoreLocation:
    """HITL_DB if set, else `[store] url` (a relative path there is the config file's folder's), else the
    SQLite file in the user data directory."""
    if not isinstance(raw, dict):
        raise ConfigError("store: must be a table")
    try:
        table = StoreSettings.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(describe_validation_error(error, prefix="store.")) from None
    if env_value:
        return _location(env_value, "HITL_DB", Path.cwd())
    if table.url:
        return _location(table.url, "store.url", base_dir)
    return StoreLocation(path=_db_path(None))


def _store_options(raw: dict[str, Any], base_dir: Path) -> StoreSettings:
    """`[store]` as validated by `_store_location`, its archive folder made absolute; archive_after_days
    without a folder to write to is refused."""
    table = StoreSettings.model_validate(raw)
    if table.archive_after_days is not None and table.archive_dir is None:
        raise ConfigError("store.archive_dir: needed with store.archive_after_days (the folder to write to)")
    if table.archive_dir is None:
        return table
    return table.model_copy(update={"archive_dir": base_dir / table.archive_dir.expanduser()})


def _location(value: str, source: str, base_dir: Path) -> StoreLocation:
    url = URL_SCHEME.match(value)
    if url and url.group(1).lower() in POSTGRES_SCHEMES:
        parts = urlsplit(value)
        if not parts.path.strip("/"):
            raise ConfigError(
                f"{source}: a PostgreSQL URL must name its database, e.g. postgresql://hitl@db.example.com/hitl"
            )
        return StoreLocation(url=value)
    return StoreLocation(path=_db_path(value, source, base_dir))


def _db_path(value: str | None, source: str = "HITL_DB", base_dir: Path | None = None) -> Path:
    """The store's file from HITL_DB: a path, or `sqlite:///absolute/path`. Any other URL but PostgreSQL's
    is refused rather than read as a relative file name, which would quietly start an empty store beside
    the current folder."""
    if not value:
        return (data_dir() / "hitl.db").resolve()
    url = URL_SCHEME.match(value)
    if url:
        scheme, rest = url.group(1).lower(), value[url.end() :]
        if scheme != "sqlite":
            # Only the scheme is repeated: the rest of a database URL may hold a password.
            raise ConfigError(
                f"{source}: {scheme}:// is not supported: name an SQLite file (e.g. /srv/hitl/hitl.db or "
                "sqlite:///srv/hitl/hitl.db) or a PostgreSQL database (postgresql://USER@HOST:PORT/DB)"
            )
        if not rest.startswith("/") or "?" in rest or "#" in rest:
            raise ConfigError(
                f"{source}: a sqlite:// URL must name an absolute file path with no host or options, "
                "e.g. sqlite:///srv/hitl/hitl.db"
            )
        value = "/" + unquote(rest).lstrip("/")
    if Path(value).name == ":memory:":
        raise ConfigError(
            f"{source}: an in-memory store cannot be shared by the server and the CLI; name a file"
        )
    path = Path(value).expanduser()
    path = (path if path.is_absolute() or base_dir is None else base_dir / path).resolve()
    if path.is_dir():
        raise ConfigError(f"{source}: {path} is a folder; name the store's file, e.g. {path / 'hitl.db'}")
    existing = next((parent for parent in path.parents if parent.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ConfigError(f"{source}: {existing} is not a folder, so {path} cannot be created")
    return path


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"HITL_CONFIG: {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(
            f"HITL_CONFIG: {path} is a folder; name the TOML file, e.g. {path / 'hitl.toml'}"
        ) from None
    except OSError as error:
        raise ConfigError(f"HITL_CONFIG: cannot read {path}: {error.strerror or error}") from None
    try:
        # utf-8-sig: a byte-order mark some editors write is not a reason to refuse the file.
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ConfigError(
            f"HITL_CONFIG: {path} is not UTF-8 text (byte 0x{data[error.start]:02x} on line {line}); "
            "TOML files must be UTF-8"
        ) from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"HITL_CONFIG: {path} is not valid TOML: {error}") from None
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


def _cli_settings(raw: Any) -> CliSettings:
    if not isinstance(raw, dict):
        raise ConfigError("cli: must be a table")
    try:
        return CliSettings.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(describe_validation_error(error, prefix="cli.")) from None


def _grants_settings(raw: Any) -> GrantsSettings:
    if not isinstance(raw, dict):
        raise ConfigError("grants: must be a table")
    try:
        return GrantsSettings.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(describe_validation_error(error, prefix="grants.")) from None


def _logging_settings(raw: Any) -> LoggingSettings:
    if not isinstance(raw, dict):
        raise ConfigError("logging: must be a table")
    try:
        return LoggingSettings.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(describe_validation_error(error, prefix="logging.")) from None


def _web_settings(raw: Any, env: Mapping[str, str]) -> WebSettings:
    if not isinstance(raw, dict):
        raise ConfigError("web: must be a table")
    oidc = raw.get("oidc")
    if isinstance(oidc, dict) and isinstance(oidc.get("client_secret"), str):
        secret = expand(oidc["client_secret"], "web.oidc.client_secret", env)
        raw = {**raw, "oidc": {**oidc, "client_secret": secret}}
    try:
        return WebSettings.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(describe_validation_error(error, prefix="web.")) from None


def _action_settings(raw: Any, base_dir: Path) -> dict[str, ActionSettings]:
    if not isinstance(raw, dict):
        raise ConfigError("actions: must be a table of [actions.NAME] tables")
    action_types = registry()  # every installed action, plug-ins' too, each validating its own table
    unknown = sorted(set(raw) - set(action_types))
    if unknown:
        raise ConfigError(
            f"actions.{unknown[0]}: no such action; known actions: {', '.join(sorted(action_types))}"
        )
    settings = {}
    for name, action_type in action_types.items():
        table = raw.get(name, {})
        if not isinstance(table, dict):
            raise ConfigError(f"actions.{name}: must be a table")
        settings[name] = action_type.configure(table, base_dir)
    return settings


def _principals(raw: Any) -> dict[str, PrincipalSettings]:
    if not isinstance(raw, dict):
        raise ConfigError("principals: must be a table of [principals.NAME] tables")
    principals: dict[str, PrincipalSettings] = {}
    written: dict[str, str] = {}  # normal form → the key as the file spells it, for messages
    for key, table in raw.items():
        name = check_principal(key, f"principals.{key}")
        if name in written:
            raise ConfigError(
                f"principals.{key}: the same principal as principals.{written[name]} (names are compared "
                "without regard to case); merge the two tables into one"
            )
        written[name] = key
        if not isinstance(table, dict):
            raise ConfigError(f"principals.{key}: must be a table")
        try:
            principals[name] = PrincipalSettings.model_validate(table)
        except ValidationError as error:
            raise ConfigError(describe_validation_error(error, prefix=f"principals.{key}.")) from None
    check_distinct_tokens(
        {written[name]: known.token_sha256 for name, known in principals.items() if known.token_sha256}
    )
    return principals
