"""A throwaway PostgreSQL cluster for the suite, from the machine's own server binaries.

One cluster per test session, started on a free loopback port in a temporary folder (`initdb`, `pg_ctl`;
run as the `postgres` user when the suite runs as root, which PostgreSQL refuses to run as), and a fresh
database per test, copied from a template that already holds the store's schema. Where no binaries are
found the PostgreSQL tests skip, saying so — except under CI=true, where a missing PostgreSQL fails.
(pytest-postgresql does much of this, but starts the server as the user running the tests: as root,
initdb refuses.)

    python -m tests.postgres_cluster      # start one by hand, print its URL, stop on Ctrl-C
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import anyio
import asyncpg
import pytest

from hitl_mcp.store import postgres_schema

TEMPLATE = "hitl_template"
PREFIX = "hitl-pg-"
_numbers = itertools.count(1)


def binaries() -> Path | None:
    """The folder holding initdb and pg_ctl: on PATH, or Debian's /usr/lib/postgresql/N/bin."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(os.path.realpath(found)).parent
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(folder) / "initdb").exists():
            return Path(folder)
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Cluster:
    """A running cluster: `url(name)` reaches a database in it as the superuser `postgres`."""

    def __init__(self, bin_dir: Path, *, durable: bool = False) -> None:
        self.bin = bin_dir
        # Named for the process that owns it, so a later session can stop it if that process was killed.
        self.folder = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-"))
        self.data = self.folder / "data"
        self.port = free_port()
        self.durable = durable
        self._as: list[str] = []
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.folder, owner.pw_uid, owner.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]

    def _run(self, *args: str) -> None:
        done = subprocess.run([*self._as, *args], capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed: {done.stdout}{done.stderr}")

    def start(self) -> Cluster:
        self._run(
            str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
            "--no-sync", "--locale=C.UTF-8",
        )  # fmt: skip
        # Tests are not about surviving a power cut: without fsync the suite is several times faster.
        # Benchmarks start theirs durable, as a server would run.
        options = [
            f"-p {self.port}",
            "-c listen_addresses=127.0.0.1",
            f"-k {self.folder}",
            "-c max_connections=400",
            *(
                []
                if self.durable
                else ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
            ),
        ]
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.folder / "server.log"),
            "-o", " ".join(options), "-w", "-t", "60", "start",
        )  # fmt: skip
        return self

    def halt(self) -> None:
        """Stop the server as an operator's `pg_ctl stop -m fast` would, keeping its data for `resume`."""
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def resume(self) -> None:
        """Start a halted server again, on the same port with the same options (pg_ctl reads them back
        from postmaster.opts when asked to restart a server that is not running)."""
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.folder / "server.log"),
            "-w", "-t", "60", "restart",
        )  # fmt: skip

    def stop(self) -> None:
        try:
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, *, schema: bool = True) -> str:
        """A new database (with the store's schema, or empty) and its URL."""
        name = f"hitl_test_{os.getpid()}_{next(_numbers)}"
        anyio.run(self._create, name, TEMPLATE if schema else "template0")
        return self.url(name)

    async def _create(self, name: str, template: str) -> None:
        conn = await asyncpg.connect(self.url())
        try:
            await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        finally:
            await conn.close()

    def make_template(self) -> None:
        anyio.run(self._make_template)

    async def _make_template(self) -> None:
        conn = await asyncpg.connect(self.url())
        try:
            await conn.execute(f'CREATE DATABASE "{TEMPLATE}" TEMPLATE template0')
        finally:
            await conn.close()
        conn = await asyncpg.connect(self.url(TEMPLATE))
        try:
            await postgres_schema.upgrade(conn, TEMPLATE)
        finally:
            await conn.close()


def reap(bin_dir: Path) -> None:
    """Stop the clusters of sessions that were killed before they could stop their own."""
    for folder in Path(tempfile.gettempdir()).glob(f"{PREFIX}*-*"):
        owner = folder.name.removeprefix(PREFIX).partition("-")[0]
        if not owner.isdigit() or _alive(int(owner)):
            continue
        if (folder / "data" / "postmaster.pid").exists():
            stop = [str(bin_dir / "pg_ctl"), "-D", str(folder / "data"), "-m", "immediate", "-w", "stop"]
            runner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
            subprocess.run([*runner, *stop], capture_output=True, timeout=60, check=False)
        shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def start_cluster(*, durable: bool = False) -> Cluster | None:
    found = binaries()
    if found is None:
        return None
    reap(found)
    cluster = Cluster(found, durable=durable).start()
    try:
        cluster.make_template()
    except BaseException:
        cluster.stop()
        raise
    return cluster


def missing(reason: str) -> None:
    """Skip, saying why — or, in CI, fail: there a PostgreSQL that is missing is a broken setup."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and {reason}: .ci/run installs PostgreSQL (apt-get install postgresql)")
    pytest.skip(reason)


def started_cluster() -> Cluster:
    """A new cluster, or a skip (a failure under CI) saying why there is none."""
    cluster = start_cluster()
    if cluster is None:
        missing("no PostgreSQL server binaries (initdb, pg_ctl) on PATH or in /usr/lib/postgresql/*/bin")
        raise AssertionError("unreachable")
    return cluster


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[Cluster]:
    cluster = started_cluster()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(postgres_cluster: Cluster) -> str:
    """A fresh database holding the store's current schema."""
    return postgres_cluster.create_database()


@pytest.fixture
def pg_empty_url(postgres_cluster: Cluster) -> str:
    """A fresh, empty database."""
    return postgres_cluster.create_database(schema=False)


if __name__ == "__main__":
    started = start_cluster(durable=True)
    if started is None:
        sys.exit("no PostgreSQL server binaries found")
    print(started.create_database(schema=False), flush=True)
    try:
        sys.stdin.read()
    except KeyboardInterrupt:
        pass
    finally:
        started.stop()
