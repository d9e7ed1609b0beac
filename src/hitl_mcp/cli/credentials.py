"""The tokens `hitl login` saved, one per server, in the user's config folder: a file only its owner may
read (mode 0600), as `gh` and `gcloud` keep theirs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import platformdirs

FILE_NAME = "credentials.json"


def path() -> Path:
    return Path(platformdirs.user_config_dir("hitl-mcp", appauthor=False)) / FILE_NAME


def _read() -> dict[str, str]:
    try:
        data = json.loads(path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): v for k, v in data.items() if isinstance(v, str)}


def saved_token(server: str) -> str | None:
    return _read().get(server)


def save(server: str, token: str) -> Path:
    """Keep `token` for `server`; the file is created 0600 before anything is written to it."""
    tokens = {**_read(), server: token}
    target = path()
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = target.with_suffix(".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(tokens, out, indent=2)
    os.chmod(temporary, 0o600)  # an older file of that name kept its mode through O_TRUNC
    os.replace(temporary, target)
    return target


def remove(server: str) -> bool:
    """Forget the token saved for `server`; whether there was one."""
    tokens = _read()
    if tokens.pop(server, None) is None:
        return False
    target = path()
    if tokens:
        fd = os.open(target.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(tokens, out, indent=2)
        os.replace(target.with_suffix(".tmp"), target)
    else:
        target.unlink(missing_ok=True)
    return True
