"""The SQLite store's two ways of using a connection: reads one at a time, and writes by group commit.

A durable commit (`synchronous = FULL`) costs an fsync, far more than the transition it makes durable.
When many sessions change requests at once, `GroupCommit` lets the transitions waiting at that moment
share one: each runs in its own savepoint, so one that is refused or fails undoes only itself and
answers only its caller, and all of them are answered after the one COMMIT. A lone transition runs at
once; nothing waits for company.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import anyio
import anyio.to_thread

from hitl_mcp.metrics import PROCESS
from hitl_mcp.notify.routing import Routing
from hitl_mcp.store import sqlite_schema as schema

T = TypeVar("T")


class RoutedConnection(sqlite3.Connection):
    """A connection that carries the store's notification routing to the audit hook, which sees only
    the connection."""

    routing: Routing | None = None


def translated(error: BaseException) -> BaseException:
    """SQLite's faults as `StoreUnavailable` in words; anything else (a refusal, a bug) as it is."""
    if isinstance(error, sqlite3.OperationalError | sqlite3.DataError):
        return schema.fault(error)
    if type(error) is sqlite3.DatabaseError:  # not its subclasses: an integrity error is a bug
        return schema.fault(error)
    return error


class ConnectionThread:
    """The one thread a connection's work runs in, one call at a time, answering on the caller's loop.

    A thread of its own rather than anyio's pool: handing a call to it and hearing back costs about 0.1
    ms against anyio's 0.17 (no pool, limiter or context copy), and a cycle makes several. On an event
    loop other than asyncio's, anyio's pool is used instead. A call handed over always runs to its end:
    a caller cancelled meanwhile waits for it, as with anyio's threads."""

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue[tuple[Callable[[], Any], Any, asyncio.Future[Any]] | None]
        self._calls = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()
        self._limiter = anyio.CapacityLimiter(1)

    def _serve(self) -> None:
        while (call := self._calls.get()) is not None:
            fn, loop, future = call
            try:
                outcome: tuple[Callable[[Any], None], Any] = (future.set_result, fn())
            except BaseException as error:
                outcome = (future.set_exception, error)
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits any more
                loop.call_soon_threadsafe(_settle, future, *outcome)

    async def run(self, fn: Callable[[], T]) -> T:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # another event loop than asyncio's (anyio runs on trio too)
            return await anyio.to_thread.run_sync(fn, limiter=self._limiter)
        future: asyncio.Future[T] = loop.create_future()
        self._calls.put((fn, loop, future))
        with anyio.CancelScope(shield=True):
            await asyncio.wait([future])
        return future.result()

    def stop(self) -> None:
        """End the thread once the calls handed over have run."""
        self._calls.put(None)


def _settle(future: asyncio.Future[Any], settle: Callable[[Any], None], value: Any) -> None:
    if not future.done():
        settle(value)


class Connection:
    """One connection, used by its own thread one call at a time."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn: sqlite3.Connection | None = conn
        # Fast: an uncontended lock is taken without yielding to the loop (the thread hop yields anyway).
        self._lock = anyio.Lock(fast_acquire=True)
        self._thread = ConnectionThread("hitl-store-reader")

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        async with self._lock:
            conn = self._conn
            if conn is None:
                raise RuntimeError("the store is not open")
            try:
                return await self._thread.run(functools.partial(fn, conn))
            except Exception as error:
                found = translated(error)
                if found is error:
                    raise
                raise found from None

    async def close(self) -> None:
        async with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
                self._thread.stop()


@dataclass
class _Transition(Generic[T]):
    fn: Callable[[sqlite3.Connection], T]
    result: T | None = None
    error: BaseException | None = None
    done: bool = False


@dataclass
class CommitCounts:
    """How many transitions shared how many commits, since the store opened (for `make bench`)."""

    commits: int = 0
    transitions: int = 0
    batches: list[int] = field(default_factory=list)


class GroupCommit:
    """The writing connection: `run(fn)` applies `fn` in a write transaction and returns once it is
    durable, sharing the commit with every other transition waiting at that moment."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn: sqlite3.Connection | None = conn
        self._waiting: list[_Transition[Any]] = []
        # Held while one batch commits; whoever takes it next takes everything queued meanwhile. Fast, as
        # above: a lone transition goes straight to the thread.
        self._lock = anyio.Lock(fast_acquire=True)
        self._thread = ConnectionThread("hitl-store-writer")
        self.counts = CommitCounts()

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        transition: _Transition[T] = _Transition(fn)
        self._waiting.append(transition)
        try:
            async with self._lock:
                if not transition.done:
                    batch, self._waiting = self._waiting, []
                    conn = self._conn
                    if conn is None:
                        raise RuntimeError("the store is not open")
                    # Shielded: once a batch is in the thread it must finish, or its callers never hear.
                    with anyio.CancelScope(shield=True):
                        await self._thread.run(functools.partial(self._commit, conn, batch))
        except BaseException:
            # Cancelled before any batch took it: it must not be applied for a caller who has gone.
            if transition in self._waiting:
                self._waiting.remove(transition)
            raise
        if transition.error is not None:
            raise transition.error
        return transition.result  # type: ignore[return-value]

    def _commit(self, conn: sqlite3.Connection, batch: Sequence[_Transition[Any]]) -> None:
        started = time.perf_counter()
        try:
            # IMMEDIATE takes the write lock up front, so a conditional UPDATE never meets a concurrent
            # writer half-way and never needs a retry.
            conn.execute("BEGIN IMMEDIATE")
            if len(batch) == 1:
                # Alone, the transaction is its savepoint: a refusal rolls all of it back.
                self._apply_alone(conn, batch[0])
            else:
                for transition in batch:
                    self._apply(conn, transition)
            if conn.in_transaction:
                conn.execute("COMMIT")
                PROCESS.commit("sqlite", time.perf_counter() - started)
        except BaseException as error:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            fault = translated(error)
            for transition in batch:
                # Nothing of the batch was committed: each caller hears why, none gets a result.
                transition.result = None
                if transition.error is None:
                    transition.error = fault
        finally:
            for transition in batch:
                transition.done = True
        self.counts.commits += 1
        self.counts.transitions += len(batch)
        if len(self.counts.batches) < 100_000:
            self.counts.batches.append(len(batch))

    @staticmethod
    def _apply_alone(conn: sqlite3.Connection, transition: _Transition[Any]) -> None:
        try:
            transition.result = transition.fn(conn)
        except Exception as error:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            transition.error = translated(error)

    @staticmethod
    def _apply(conn: sqlite3.Connection, transition: _Transition[Any]) -> None:
        conn.execute("SAVEPOINT transition")
        try:
            transition.result = transition.fn(conn)
        except Exception as error:
            if not conn.in_transaction:
                # SQLite rolled the whole transaction back (a full disk, an I/O error): the batch is lost.
                raise
            conn.execute("ROLLBACK TO transition")
            conn.execute("RELEASE transition")
            transition.error = translated(error)
            return
        conn.execute("RELEASE transition")

    async def close(self) -> None:
        async with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
                self._thread.stop()
