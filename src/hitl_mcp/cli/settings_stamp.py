"""What `hitl list` keeps of the settings its last full load found, so that the next listing can skip
loading them.

Loading the settings validates the whole config (pydantic models, about 0.2 s: most of a listing's time).
What that load concludes depends only on the config file's bytes, the environment, the working folder (a
relative HITL_DB) and hitl's own code. So a full `hitl list` that loaded them writes down, under a digest
of all four, the one thing a listing needs (where the SQLite store is, and how long to wait for its lock),
and a later listing that finds the same digest reads the store without loading the settings. Change any
of the four and the digest differs: the full load runs again, with its errors. The store's own state (its
file, its schema) is checked on every listing, never taken from here.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass

STAMP_FILE = "list-settings.json"
# What a shell changes from one command to the next, and no setting reads: the last command's path (`_`)
# and the folder before the last `cd`. The rest of the environment counts, whatever its name, since the
# config may read any variable (`${VAR}`).
SHELL_BOOKKEEPING = frozenset({"_", "OLDPWD"})


@dataclass(frozen=True)
class Remembered:
    """What the full load of the settings found, as a listing needs it."""

    db_path: str
    busy_timeout: float
    schema_version: int
    """The schema this code reads, and the application id its stores carry: a file that differs is left
    to the full path, which says why it cannot be read."""
    application_id: int


def fingerprint(env: Mapping[str, str]) -> str | None:
    """The digest of what a load of the settings reads; None when the config file cannot be read (the
    full load then says why)."""
    digest = hashlib.sha256()
    read = sorted((name, value) for name, value in env.items() if name not in SHELL_BOOKKEEPING)
    digest.update(json.dumps(read).encode())
    digest.update(b"\0" + os.getcwd().encode() + b"\0")
    config = env.get("HITL_CONFIG")
    if config:
        try:
            with open(os.path.expanduser(config), "rb") as file:
                digest.update(file.read())
        except OSError:
            return None
    digest.update(_code())
    return digest.hexdigest()


def _code() -> bytes:
    """Which hitl reads the settings: the interpreter, and each module's size and time of change (an
    upgrade or an edit changes them)."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parts = [sys.executable, package]
    for folder, folders, files in os.walk(package):
        folders[:] = sorted(name for name in folders if name != "__pycache__")
        for name in sorted(files):
            if name.endswith(".py"):
                found = os.stat(os.path.join(folder, name))
                parts.append(f"{folder}/{name} {found.st_size} {found.st_mtime_ns}")
    return "\n".join(parts).encode()


def _stamp_path() -> str:
    from platformdirs import user_cache_dir

    return os.path.join(user_cache_dir("hitl-mcp", appauthor=False), STAMP_FILE)


def recall(digest: str) -> Remembered | None:
    """What the last full load found, if it read what a load would read now."""
    try:
        with open(_stamp_path(), encoding="utf-8") as file:
            kept = json.load(file)
        if kept.get("fingerprint") != digest:
            return None
        return Remembered(
            db_path=str(kept["db_path"]),
            busy_timeout=float(kept["busy_timeout"]),
            schema_version=int(kept["schema_version"]),
            application_id=int(kept["application_id"]),
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        # Missing, half-written by an older hitl, or not ours: the full path answers and writes it anew.
        return None


def remember(digest: str, found: Remembered) -> None:
    """Keep what a full load found under `digest`; a cache, so a folder that cannot be written to only
    costs the next listing its speed."""
    if recall(digest) == found:
        return  # a listing the quick path handed over (an executing request, say) changes nothing here
    import tempfile

    path = _stamp_path()
    kept = {"fingerprint": digest, **found.__dict__}
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        # Written beside it and renamed over it: a listing running meanwhile reads the old one or this.
        handle, temporary = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".list-settings-")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as file:
                json.dump(kept, file)
            os.replace(temporary, path)
        except BaseException:
            os.unlink(temporary)
            raise
    except OSError:
        return
