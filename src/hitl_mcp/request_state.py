"""The key that seals the state a 2026-07-28 question round travels with (`approval = "confirm"`): by
default one of this process alone; with `[gate] request_state_key_file`, keys every replica shares, so the
client's retry may land on any of them.

A file, not the store: a key kept beside the requests would be readable by everything that reads the
store, and replicas already share their other secrets (tokens' salts, the Slack signing secret) as
configuration. Sealing is a second wall: an unsealed state could still name only a request its caller
filed under a confirm rule, as the Gate checks."""

from __future__ import annotations

from pathlib import Path

from mcp.server.request_state import RequestStateSecurity

from hitl_mcp.config import Settings, data_dir
from hitl_mcp.errors import ConfigError
from hitl_mcp.private_files import readable_by_others

SETTING = "gate.request_state_key_file"
MIN_KEY_CHARACTERS = 32


def key_file(settings: Settings) -> Path | None:
    """The configured key file, made absolute against the config file's folder; None when not set."""
    path = settings.gate.request_state_key_file
    if path is None:
        return None
    path = path.expanduser()
    base = settings.config_path.parent if settings.config_path is not None else data_dir()
    return path if path.is_absolute() else base / path


def request_state_security(settings: Settings) -> RequestStateSecurity | None:
    """The shared keys of `[gate] request_state_key_file`; None (the SDK's per-process key) when not set.

    Refused, naming the setting, when the file is missing, unreadable, readable by others, or holds a key
    too short to be secret randomness."""
    path = key_file(settings)
    if path is None:
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else "not text"
        raise ConfigError(f"{SETTING}: cannot read {path}: {reason}") from None
    mode = readable_by_others(path)
    if mode is not None:
        raise ConfigError(
            f"{SETTING}: {path} may be read by others (mode {mode:04o}); it holds secret keys: chmod 600 it"
        )
    keys = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not keys:
        raise ConfigError(f"{SETTING}: {path} holds no key (one a line: `openssl rand -hex 32` makes one)")
    for number, key in enumerate(keys, start=1):
        if len(key) < MIN_KEY_CHARACTERS:
            raise ConfigError(
                f"{SETTING}: key {number} of {path} has {len(key)} characters, fewer than "
                f"{MIN_KEY_CHARACTERS}: make one with `openssl rand -hex 32`"
            )
    try:
        return RequestStateSecurity(keys=keys)
    except ValueError as error:  # the SDK's own check: a key repeated
        raise ConfigError(f"{SETTING}: {path}: {error}") from None
