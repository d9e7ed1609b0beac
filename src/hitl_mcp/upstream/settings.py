"""Upstream settings: one `[upstreams.NAME]` table per MCP server, or a desktop client's `mcpServers` JSON.

```toml
[upstreams.fs]
command = "npx"                        # started by hitl, spoken to over stdio: command, args, env, cwd
args = ["-y", "@modelcontextprotocol/server-filesystem", "/srv/data"]
env = { API_KEY = "${FS_API_KEY}" }    # ${VAR} comes from hitl's own environment; $${ is a literal ${
gate = ["write_*", "move_file"]        # glob patterns over the upstream's tool names: gated
pass = ["read_*", "list_*"]            # forwarded at once (still audited); gate wins where both match
trust_annotations = true               # false: a tool no pattern matches is gated whatever it says

[upstreams.fs.preview.write_file]      # a read-only call made when write_file is filed, for the approver
tool = "read_text_file"
arguments = { path = "{path}" }

[upstreams.tickets]
url = "https://tickets.example.com/mcp"    # streamable HTTP: url, headers
headers = { Authorization = "Bearer ${TICKETS_TOKEN}" }
```

A tool matched by no pattern is passed only when it says it is read-only (`readOnlyHint`), and gated
otherwise: an upstream that says nothing fails closed. Annotations are the upstream's own claim (the MCP
specification calls them untrusted unless the server is); `trust_annotations = false`, on one upstream or
as the default of all under `[gateway]`, gates every tool no pattern passes. Every error names its key,
like the rest of the config: `upstreams.fs.command: …` (`desktop.py` reads a desktop client's JSON the
same way).
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictBool,
    ValidationError,
    model_validator,
)

from hitl_mcp.actions.base import describe_validation_error
from hitl_mcp.errors import ConfigError

UPSTREAM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}")
# `$${` is a literal `${`; `${NAME}` (or Cursor's `${env:NAME}`) a variable; any other `${` a mistake.
VARIABLE = re.compile(r"\$\$\{|\$\{(?:env:)?([A-Za-z_][A-Za-z0-9_]*)\}|\$\{")
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
ENVIRONMENT_NAME = re.compile(r"[^=\x00]+")

START_WAIT_SECONDS = 5.0
"""See `hitl_mcp.gateway.starting`: a few seconds, what a local server needs to start."""

Kind = Literal["stdio", "http"]
Pattern = Annotated[str, Field(min_length=1)]


class PreviewCall(BaseModel):
    """`[upstreams.NAME.preview.TOOL]`: a read-only call of the upstream made when TOOL is filed, whose
    answer the approver sees. A string argument `"{name}"` is the call's own argument `name`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tool: str = Field(min_length=1, description="The upstream's tool to call; it must be one that passes")
    arguments: Mapping[str, Any] = Field(default_factory=dict, description="Its arguments")


class RestartSettings(BaseModel):
    """`[upstreams.NAME.restart]`: how soon an upstream that died or failed to start is tried again."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    initial_delay_seconds: float = Field(default=0.5, gt=0, le=3600, allow_inf_nan=False)
    max_delay_seconds: float = Field(default=60.0, gt=0, le=86_400, allow_inf_nan=False)

    @model_validator(mode="after")
    def _ordered(self) -> RestartSettings:
        if self.max_delay_seconds < self.initial_delay_seconds:
            raise ValueError("max_delay_seconds must be at least initial_delay_seconds")
        return self

    def delay(self, failures: int, jitter: float) -> float:
        """How long to wait after `failures` failed starts in a row: doubling from the initial delay up to
        the maximum, then somewhere in its upper half (`jitter` in [0, 1)), so upstreams that failed
        together are not all tried again at the same instant."""
        ceiling = min(self.max_delay_seconds, self.initial_delay_seconds * 2.0 ** min(failures, 64))
        return ceiling / 2 + ceiling / 2 * jitter


class UpstreamSettings(BaseModel):
    """One upstream MCP server: started over stdio (`command`) or reached over streamable HTTP (`url`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Its table's name; its tools are exposed as NAME__TOOL")
    source: str = Field(default="", description="Where it is configured, for messages")
    command: str | None = Field(default=None, min_length=1)
    # Out of repr: once `${VAR}`s are expanded, any of these may hold a secret (`target()` may be shown).
    args: tuple[str, ...] = Field(default=(), repr=False)
    env: Mapping[str, str] = Field(default_factory=dict, repr=False)
    cwd: Path | None = None
    url: str | None = Field(default=None, repr=False)
    headers: Mapping[str, str] = Field(default_factory=dict, repr=False)
    gate: tuple[Pattern, ...] = Field(default=(), description="Tools that are gated, by glob pattern")
    pass_: tuple[Pattern, ...] = Field(default=(), alias="pass", description="Tools forwarded at once")
    previews: Mapping[str, PreviewCall] = Field(default_factory=dict, alias="preview")
    trust_annotations: StrictBool = Field(
        default=True,
        description="Whether a tool no pattern matches is passed when it says it is read-only "
        "(readOnlyHint); false gates it whatever its annotations say",
    )
    start_timeout_seconds: float = Field(default=60.0, gt=0, le=3600, allow_inf_nan=False)
    call_timeout_seconds: float = Field(default=60.0, gt=0, le=86_400, allow_inf_nan=False)
    restart: RestartSettings = Field(default_factory=RestartSettings)
    _target: dict[str, str] = PrivateAttr(default_factory=dict)

    @property
    def kind(self) -> Kind:
        return "stdio" if self.command is not None else "http"

    def target(self) -> dict[str, str]:
        """What this upstream is, for a request to record and compare: its name and its command line (and
        folder) or URL, as written in the config — `${VAR}` stays a name, so a token in an argument is
        never stored. Never its environment or headers."""
        return dict(self._target)

    def rules_digest(self) -> str:
        """What decides how its tools are exposed (what it is, its patterns, whether annotations count):
        a tool held gated stays held across restarts until this changes."""
        rules = {
            "target": self._target,
            "gate": list(self.gate),
            "pass": list(self.pass_),
            "trust_annotations": self.trust_annotations,
        }
        return hashlib.sha256(json.dumps(rules, sort_keys=True).encode()).hexdigest()


class GatewaySettings(BaseModel):
    """`[gateway]`: defaults for every upstream, those of `hitl serve --upstreams FILE` included."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    trust_annotations: StrictBool = Field(
        default=True, description="The default of each upstream's own trust_annotations"
    )
    start_wait_seconds: float = Field(
        default=START_WAIT_SECONDS,
        ge=0,
        le=60,
        allow_inf_nan=False,
        description="How long a tools/list, or a call of an upstream's tool, waits for an upstream that "
        "is still starting before it answers without it",
    )

    def apply(self, upstream: UpstreamSettings) -> UpstreamSettings:
        """`upstream` with these defaults where its own table does not say."""
        if "trust_annotations" in upstream.model_fields_set or self.trust_annotations:
            return upstream
        changed = upstream.model_copy(update={"trust_annotations": self.trust_annotations})
        changed._target = upstream.target()
        return changed


def load_gateway(raw: Any) -> GatewaySettings:
    """The `[gateway]` table of the config file."""
    if not isinstance(raw, dict):
        raise ConfigError("gateway: must be a table")
    try:
        return GatewaySettings.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(describe_validation_error(error, prefix="gateway.")) from None


def load_upstreams(
    raw: Any,
    base_dir: Path,
    env: Mapping[str, str],
    *,
    config_path: Path | None = None,
    gateway: GatewaySettings | None = None,
) -> dict[str, UpstreamSettings]:
    """The `[upstreams]` table of the config file, `[gateway]`'s defaults applied. Relative `cwd`s resolve
    against `base_dir`."""
    if not isinstance(raw, dict):
        raise ConfigError("upstreams: must be a table of [upstreams.NAME] tables")
    where = f" in {config_path}" if config_path else ""
    defaults = gateway or GatewaySettings()
    return {
        name: defaults.apply(
            build_upstream(
                name,
                table,
                key=f"upstreams.{name}",
                base_dir=base_dir,
                env=env,
                source=f"[upstreams.{name}]{where}",
            )
        )
        for name, table in raw.items()
    }


def merge_upstreams(
    configured: Mapping[str, UpstreamSettings], added: Iterable[UpstreamSettings]
) -> dict[str, UpstreamSettings]:
    """`configured` and `added` together; a name in both is refused, naming both places."""
    merged = dict(configured)
    for upstream in added:
        if upstream.name in merged:
            raise ConfigError(
                f"upstream {upstream.name!r} is configured twice: {merged[upstream.name].source} and "
                f"{upstream.source}; remove or rename one of them"
            )
        merged[upstream.name] = upstream
    return merged


def build_upstream(
    name: str, table: Any, *, key: str, base_dir: Path, env: Mapping[str, str], source: str
) -> UpstreamSettings:
    """One upstream from its table, `${VAR}`s expanded from `env`; every refusal names `key` and below."""
    check_name(name, key)
    if not isinstance(table, dict):
        raise ConfigError(f"{key}: must be a table")
    for reserved in ("name", "source"):
        if reserved in table:
            raise ConfigError(f"{key}.{reserved}: unknown key (the upstream's name is its table's name)")
    expanded = _expanded(table, key, env)
    try:
        upstream = UpstreamSettings.model_validate({**expanded, "name": name, "source": source})
    except ValidationError as error:
        raise ConfigError(describe_validation_error(error, prefix=f"{key}.")) from None
    _check_shape(upstream, table, key)
    if upstream.cwd is not None and not upstream.cwd.expanduser().is_absolute():
        upstream = upstream.model_copy(update={"cwd": base_dir / upstream.cwd})
    elif upstream.cwd is not None:
        upstream = upstream.model_copy(update={"cwd": upstream.cwd.expanduser()})
    upstream._target = _target(upstream, table)
    return upstream


def check_name(name: str, key: str) -> None:
    # `__` separates the upstream from its tool in NAME__TOOL; without a trailing `_` as well, the first
    # `__` of an exposed name is always that separator, so no two upstreams can expose the same name.
    if not UPSTREAM_NAME.fullmatch(name) or "__" in name or name.endswith("_"):
        raise ConfigError(
            f"{key}: {name!r} cannot name an upstream: letters, digits, _ and -, at most 32 characters, "
            "starting with a letter or digit, with no __ (it separates the upstream from its tool in "
            "NAME__TOOL) and no _ at the end"
        )


def expand(text: str, key: str, env: Mapping[str, str]) -> str:
    """`text` with each `${NAME}` replaced by that environment variable; a missing one is refused."""

    def value(match: re.Match[str]) -> str:
        if match.group(0) == "$${":
            return "${"
        variable = match.group(1)
        if variable is None:
            raise ConfigError(
                f"{key}: ${{ must start a variable such as ${{API_KEY}}; write $${{ for a literal ${{"
            )
        if variable not in env:
            raise ConfigError(f"{key}: ${{{variable}}} is not set in the environment hitl runs in")
        return env[variable]

    return VARIABLE.sub(value, text)


def _expanded(table: dict[str, Any], key: str, env: Mapping[str, str]) -> dict[str, Any]:
    # Only strings are expanded; anything else is left for the model to refuse with its own message.
    expanded = dict(table)
    for field in ("command", "url", "cwd"):
        if isinstance(table.get(field), str):
            expanded[field] = expand(table[field], f"{key}.{field}", env)
    if isinstance(table.get("args"), list):
        expanded["args"] = [
            expand(arg, f"{key}.args[{index}]", env) if isinstance(arg, str) else arg
            for index, arg in enumerate(table["args"])
        ]
    for field in ("env", "headers"):
        if isinstance(table.get(field), dict):
            expanded[field] = {
                name: expand(value, f"{key}.{field}.{name}", env) if isinstance(value, str) else value
                for name, value in table[field].items()
            }
    return expanded


def _check_shape(upstream: UpstreamSettings, table: dict[str, Any], key: str) -> None:
    """What one field cannot say alone: stdio or HTTP, and what each admits."""
    if upstream.command is None and upstream.url is None:
        raise ConfigError(
            f"{key}: needs a command (a program hitl starts) or a url (a streamable HTTP endpoint)"
        )
    if upstream.command is not None and upstream.url is not None:
        raise ConfigError(
            f"{key}.url: not with command: an upstream is either started (command) or reached (url)"
        )
    if upstream.url is not None:
        for field in ("args", "env", "cwd"):
            if field in table:
                raise ConfigError(
                    f"{key}.{field}: only for an upstream started with command, not one at a url"
                )
        _check_url(upstream.url, f"{key}.url")
        for name, value in upstream.headers.items():
            if not HEADER_NAME.fullmatch(name):
                raise ConfigError(f"{key}.headers.{name}: not a valid HTTP header name")
            if any(char in value for char in "\r\n\x00"):
                raise ConfigError(f"{key}.headers.{name}: a header value cannot hold a line break or NUL")
    else:
        if "headers" in table:
            raise ConfigError(f"{key}.headers: only for an upstream at a url, not one started with command")
        texts = {f"{key}.command": upstream.command or ""}
        texts.update({f"{key}.args[{index}]": arg for index, arg in enumerate(upstream.args)})
        texts.update({f"{key}.env.{name}": value for name, value in upstream.env.items()})
        for where, text in texts.items():
            if "\x00" in text:
                raise ConfigError(f"{where}: cannot hold a NUL character")
        for name in upstream.env:
            if not ENVIRONMENT_NAME.fullmatch(name):
                raise ConfigError(f"{key}.env.{name}: not a valid environment variable name")


def _check_url(url: str, key: str) -> None:
    try:
        parts = urlsplit(url)
        usable = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:  # e.g. a port that is not a number
        usable = False
    if not usable or any(char.isspace() or ord(char) < 32 for char in url):
        raise ConfigError(
            f"{key}: must be an http:// or https:// URL with a host, e.g. https://tools.example.com/mcp"
        )


def _target(upstream: UpstreamSettings, table: dict[str, Any]) -> dict[str, str]:
    if upstream.url is not None:
        return {"upstream": upstream.name, "url": str(table["url"])}
    written = [str(table["command"]), *(str(arg) for arg in table.get("args", []))]
    target = {"upstream": upstream.name, "command": shlex.join(written)}
    if upstream.cwd is not None:
        target["cwd"] = str(upstream.cwd)
    return target
