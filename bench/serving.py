"""Real server processes for the HTTP figures, and what can be read of them from outside.

`serve` starts a process on a free loopback port, waits until the port accepts connections, and stops it
on the way out whatever happened (SIGTERM, then SIGKILL), so no run leaves a server or a port behind.
`cpu_seconds` reads a process's CPU time from /proc. `CommitCounter` reads SQLite's own count of the
write transactions committed to a WAL database by any process — the `iChange` field of the wal-index
header in the `-shm` file, which SQLite increments once for each commit that writes to the WAL (a COMMIT
that changed nothing writes no frame, needs no fsync and is not counted) — so the durable commits of a
server in another process can be counted without touching its code.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import struct
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
# The wal-index header SQLite keeps at the start of the -shm file (wal.c, WalIndexHdr), twice over: a
# reader takes it only when both copies agree. Native byte order; iVersion is always 3007000.
WAL_INDEX_VERSION = 3007000
WAL_INDEX_HEADER = struct.Struct(
    "=IIIBBHII"
)  # iVersion, unused, iChange, isInit, bigEnd, szPage, mxFrame, nPage
WAL_INDEX_HEADER_BYTES = 48


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class Served:
    url: str
    pid: int
    log: Path


@contextmanager
def serve(argv: list[str], env: dict[str, str], log: Path, port: int, cwd: Path) -> Iterator[Served]:
    """Run `argv` (which must listen on 127.0.0.1:`port` and serve /mcp), yield once the port answers."""
    with log.open("wb") as output:
        process = subprocess.Popen(argv, env=env, cwd=cwd, stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not port_open(port):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{' '.join(argv)} did not start listening on {port}: {tail}")
            time.sleep(0.05)
        yield Served(f"http://127.0.0.1:{port}/mcp", process.pid, log)
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (uvicorn shuts down cleanly, the store checkpoints and closes), SIGKILL if it lingers."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of process `pid` (all its threads) so far, from /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    # After the comm: state is field 3, utime and stime are fields 14 and 15 (1-based, man 5 proc).
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


class CommitCounter:
    """SQLite's commit counter of the WAL database `db` (the `iChange` of its -shm file), as every process
    sees it: `read()` now, `close()` when done.

    The -shm file stays open from the first read to `close()` and is read with pread: closing a descriptor
    of a file drops every POSIX lock this process holds on it, SQLite's own included, and a -shm whose
    locks vanish is taken for abandoned and reset by the next process that opens the database. So close it
    only once this process has no SQLite connection to `db` left, and open none between reads and close
    that is still open at `close()`."""

    def __init__(self, db: Path) -> None:
        self.shm = db.with_name(db.name + "-shm")
        self._fd: int | None = None

    def read(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.shm, os.O_RDONLY)
        for _ in range(100):
            head = os.pread(self._fd, 2 * WAL_INDEX_HEADER_BYTES, 0)
            first, second = head[:WAL_INDEX_HEADER_BYTES], head[WAL_INDEX_HEADER_BYTES:]
            if len(second) < WAL_INDEX_HEADER_BYTES:
                raise RuntimeError(f"{self.shm} holds no wal-index header")
            if first == second:  # not caught half-way through a writer's update
                version, _, changes, *_ = WAL_INDEX_HEADER.unpack_from(first)
                if version != WAL_INDEX_VERSION:
                    raise RuntimeError(f"{self.shm}: not a wal-index SQLite wrote (version {version})")
                return int(changes)
            time.sleep(0.001)
        raise RuntimeError(f"{self.shm}: the wal-index header kept changing while read")

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def commits_between(before: int, after: int) -> int:
    return (after - before) % 2**32


def audit_head(db: Path) -> int:
    """The newest audit record's sequence number: one record per transition, so differences count them."""
    conn = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=10)
    try:
        return int(conn.execute("SELECT coalesce(max(seq), 0) FROM audit").fetchone()[0])
    finally:
        conn.close()
