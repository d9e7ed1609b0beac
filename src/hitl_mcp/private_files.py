"""Files only their owner may read: the store and the ledger hold tool arguments, email bodies and orders.

SQLite creates a database file with 0644 less the umask, so under the usual umask of 022 anyone on the
machine could read it. `create_private` makes the empty file first, 0600 whatever the umask, before SQLite
opens it; SQLite then gives its `-wal` and `-shm` files the database file's own mode (it copies the mode
and sets it with fchmod, past the umask), so those are private as well. An existing file is left as it is:
`hitl db status` warns when others can read it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

PRIVATE = 0o600
PRIVATE_FOLDER = 0o700


def create_private(path: Path) -> None:
    """Create `path` empty with mode 0600 unless it exists (an empty file is a new database to SQLite), and
    its folder, 0700, when it is missing: the default folder (the user's data directory) is made by nobody
    else when the store is PostgreSQL and the ledger is the first file hitl writes there."""
    try:
        path.parent.mkdir(mode=PRIVATE_FOLDER, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE)
    except OSError:
        # There already, or not makeable here (no folder, read-only): SQLite opens it or says why.
        return
    try:
        # A umask can only take bits away, never add them; fchmod makes the mode exact all the same.
        os.fchmod(fd, PRIVATE)
    finally:
        os.close(fd)


def readable_by_others(path: Path) -> int | None:
    """`path`'s permission bits when its group or others may read or write it; None when only its owner may
    (or it does not exist)."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return None
    return mode if mode & 0o066 else None
