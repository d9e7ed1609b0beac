"""A paper-trading ledger: account cash, positions and orders in one SQLite file of its own.

Money is kept as integer cents so repeated debits never drift; the API speaks dollars (floats rounded to
cents) because that is what JSON and people read. An order's total is `quantity * price` rounded half-up
to the cent, computed in `Decimal` from the price's shortest repr so `0.1 * 3` costs exactly $0.30.

Orders are keyed by a client order id (the gate's request id): buying again with an id already on file
returns the first fill instead of buying twice, which is what makes a retried execution safe.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any, TypeVar

import anyio.to_thread

from hitl_mcp.errors import ActionFailed
from hitl_mcp.private_files import create_private

T = TypeVar("T")

BUSY_TIMEOUT_SECONDS = 30.0

_CENT = Decimal("0.01")

_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS account (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        cash_cents INTEGER NOT NULL CHECK (cash_cents >= 0)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS positions (
        symbol TEXT PRIMARY KEY,
        quantity INTEGER NOT NULL CHECK (quantity >= 0)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS orders (
        client_order_id TEXT PRIMARY KEY,
        symbol TEXT NOT NULL,
        quantity INTEGER NOT NULL CHECK (quantity > 0),
        price REAL NOT NULL CHECK (price > 0),
        total_cents INTEGER NOT NULL CHECK (total_cents >= 0),
        cash_after_cents INTEGER NOT NULL,
        position_after INTEGER NOT NULL,
        filled_at TEXT NOT NULL
    )
    """,
)


def to_cents(dollars: float) -> int:
    """Dollars to whole cents, half-up, from the float's shortest repr (so 0.1 is ten cents, not 9.99...)."""
    return int((Decimal(repr(dollars)) / _CENT).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def order_total_cents(quantity: int, price: float) -> int:
    """What `quantity` shares at `price` cost, in cents, rounded half-up."""
    return int((Decimal(repr(price)) * quantity / _CENT).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def cents_to_dollars(cents: int) -> float:
    return float(Decimal(cents) * _CENT)


def format_dollars(cents: int) -> str:
    """`$15,000.00` — Decimal formatting, so even totals past float precision print exactly."""
    return f"${Decimal(cents) * _CENT:,.2f}"


@dataclass(frozen=True)
class Fill:
    """One executed order, as recorded. `cash_after`/`position_after` are as of this order's fill."""

    order_id: str
    symbol: str
    quantity: int
    price: float
    total: float
    cash_after: float
    position_after: int
    filled_at: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Ledger:
    """The paper-trading account in the SQLite file at `path`, created on first write with `starting_cash`.

    An existing file keeps its own cash: `starting_cash` only seeds a new ledger. Reads never create the file.
    Writes, and reads that may wait, run in worker threads on connections of their own (previews read on
    the event loop when they need not wait: see `_read`), so one `Ledger` is safe to share between tasks,
    threads and processes; SQLite's locks (WAL, `BEGIN IMMEDIATE`, busy timeout) serialise the writers.
    """

    def __init__(self, path: Path, starting_cash: float) -> None:
        if starting_cash < 0:
            raise ValueError("starting_cash must not be negative")
        self.path = Path(path)
        self.starting_cash_cents = to_cents(starting_cash)
        self._local = threading.local()
        # Orders from this process go one at a time through one thread and its connection: writers of one
        # process meeting in SQLite's lock would wait in its busy handler's sleeps instead.
        self._write_limiter: anyio.CapacityLimiter | None = None
        # The event loop's own reader (see `_read`), with the inode of the file it opened.
        self._loop_reader: tuple[sqlite3.Connection, int] | None = None

    # -- public API ---------------------------------------------------------------------------------------

    async def snapshot(self, symbol: str) -> tuple[float, int]:
        """(cash, position in `symbol`) now; a missing ledger reads as starting cash and no shares."""
        cash_cents, position = await self.snapshot_cents(symbol)
        return cents_to_dollars(cash_cents), position

    async def snapshot_cents(self, symbol: str) -> tuple[int, int]:
        """`snapshot` with cash in exact cents. Side-effect free: never creates or writes the file."""
        return await self._read(lambda conn: self._cash_and_position(conn, symbol))

    async def cash(self) -> float:
        cash_cents, _ = await self._read(lambda conn: self._cash_and_position(conn, ""))
        return cents_to_dollars(cash_cents)

    async def position(self, symbol: str) -> int:
        _, position = await self._read(lambda conn: self._cash_and_position(conn, symbol))
        return position

    async def orders(self) -> list[Fill]:
        """Every order, oldest first."""

        def read(conn: sqlite3.Connection | None) -> list[Fill]:
            if conn is None:
                return []
            rows = conn.execute("SELECT * FROM orders ORDER BY rowid").fetchall()
            return [_fill_from_row(row) for row in rows]

        return await self._read(read)

    async def buy(self, client_order_id: str, symbol: str, quantity: int, price: float) -> Fill:
        """Buy `quantity` of `symbol` at `price`, once per `client_order_id`.

        A second call with the same id returns the first fill unchanged (and refuses if the order differs).
        Refuses with `ActionFailed`, writing nothing, when the account cannot pay.
        """
        if quantity <= 0 or not price > 0:
            raise ValueError("quantity and price must be positive")
        if self._write_limiter is None:
            self._write_limiter = anyio.CapacityLimiter(1)
        return await anyio.to_thread.run_sync(
            self._buy_sync, client_order_id, symbol, quantity, price, limiter=self._write_limiter
        )

    # -- internals ----------------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so the write lock is taken before the
        # balance is read and two buyers can never both see the same cash.
        create_private(self.path)  # orders and cash are the owner's; SQLite would make the file 0644
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_SECONDS * 1000)}")
        # WAL lets previews read while a buy holds the write lock; the mode is stored in the file.
        conn.execute("PRAGMA journal_mode = WAL")
        return conn

    def _writer(self) -> sqlite3.Connection:
        """This worker thread's write connection, opened once: opening one (and asking for WAL) costs
        several times the order's own transaction."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    def _ensure_schema(self, conn: sqlite3.Connection) -> None:
        """Create the tables and seed the cash; run inside the caller's write transaction.

        Done on every write rather than once per instance: it is a few lookups in sqlite_master, and it keeps
        a ledger file that was removed or replaced underneath us from being written without tables.
        """
        for statement in _SCHEMA:
            conn.execute(statement)
        conn.execute(
            "INSERT OR IGNORE INTO account (id, cash_cents) VALUES (1, ?)", (self.starting_cash_cents,)
        )

    async def _read(self, query: Callable[[sqlite3.Connection | None], T]) -> T:
        # A preview is two reads by primary key of a local WAL file: microseconds once a connection is
        # open, less than handing them to a worker thread costs. So they run on the event loop, on a
        # connection that never waits for a lock; a ledger not open here yet, replaced underneath, or
        # busy (a checkpoint, a recovery) is read in a worker thread, which may wait for it.
        kept = self._loop_reader
        try:
            inode: int | None = self.path.stat().st_ino
        except FileNotFoundError:
            inode = None
        except OSError:
            inode = -1  # unreadable here: the worker thread's read says why
        if kept is not None:
            if kept[1] == inode:
                try:
                    return _in_snapshot(kept[0], query)
                except sqlite3.OperationalError:
                    pass
            self._loop_reader = None
            kept[0].close()
        if inode is None:
            return query(None)  # no ledger yet: nothing to read

        def read_and_open() -> tuple[T, tuple[sqlite3.Connection, int] | None]:
            result = self._read_sync(query)
            try:
                return result, self._open_reader(0.0)
            except sqlite3.OperationalError:  # busy now: the next read tries again
                return result, None

        result, opened = await anyio.to_thread.run_sync(read_and_open)
        if opened is not None:
            if self._loop_reader is None:
                self._loop_reader = opened
            else:  # another task opened one meanwhile
                opened[0].close()
        return result

    def _read_sync(self, query: Callable[[sqlite3.Connection | None], T]) -> T:
        """Run `query` on a read-only connection, or with None when there is no ledger yet."""
        conn = self._reader()
        if conn is None:
            return query(None)
        return _in_snapshot(conn, query)

    def _reader(self) -> sqlite3.Connection | None:
        """This worker thread's read-only connection, kept while the file is the same one (a file removed
        or replaced underneath is opened afresh); None while there is no ledger with its tables yet."""
        kept: tuple[sqlite3.Connection, int] | None = getattr(self._local, "reader", None)
        try:
            inode = self.path.stat().st_ino
        except FileNotFoundError:
            return None
        if kept is not None and kept[1] == inode:
            return kept[0]
        if kept is not None:
            kept[0].close()
            self._local.reader = None
        opened = self._open_reader(BUSY_TIMEOUT_SECONDS)
        if opened is None:
            return None
        self._local.reader = opened
        return opened[0]

    def _open_reader(self, busy_timeout: float) -> tuple[sqlite3.Connection, int] | None:
        """A read-only connection to the ledger and the file's inode; None while there is no ledger with
        its tables yet."""
        try:
            inode = self.path.stat().st_ino
        except FileNotFoundError:
            return None
        # mode=ro: a preview must not create or change the ledger, not even by accident.
        conn = sqlite3.connect(
            f"{self.path.resolve().as_uri()}?mode=ro",
            uri=True,
            timeout=busy_timeout,
            isolation_level=None,
            check_same_thread=False,
        )
        conn.row_factory = sqlite3.Row
        try:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.Error:
            conn.close()
            raise
        # A file another process has only just created may not have its tables yet: look again next time.
        if not {"account", "positions", "orders"} <= tables:
            conn.close()
            return None
        return conn, inode

    def _cash_and_position(self, conn: sqlite3.Connection | None, symbol: str) -> tuple[int, int]:
        if conn is None:
            return self.starting_cash_cents, 0
        account = conn.execute("SELECT cash_cents FROM account WHERE id = 1").fetchone()
        position = conn.execute("SELECT quantity FROM positions WHERE symbol = ?", (symbol,)).fetchone()
        cash_cents = self.starting_cash_cents if account is None else int(account[0])
        return cash_cents, 0 if position is None else int(position[0])

    def _buy_sync(self, client_order_id: str, symbol: str, quantity: int, price: float) -> Fill:
        total_cents = order_total_cents(quantity, price)
        conn = self._writer()
        conn.execute("BEGIN IMMEDIATE")
        try:
            self._ensure_schema(conn)
            fill = self._buy_in_transaction(conn, client_order_id, symbol, quantity, price, total_cents)
        except BaseException:
            if conn.in_transaction:
                conn.rollback()
            raise
        conn.execute("COMMIT")
        return fill

    def _buy_in_transaction(
        self,
        conn: sqlite3.Connection,
        client_order_id: str,
        symbol: str,
        quantity: int,
        price: float,
        total_cents: int,
    ) -> Fill:
        existing = conn.execute(
            "SELECT * FROM orders WHERE client_order_id = ?", (client_order_id,)
        ).fetchone()
        if existing is not None:
            fill = _fill_from_row(existing)
            if (fill.symbol, fill.quantity, fill.price) != (symbol, quantity, price):
                raise ActionFailed(
                    f"client order id {client_order_id} was already used for a different order "
                    f"({fill.quantity} {fill.symbol} at {fill.price})",
                    effect="none",
                )
            return fill
        cash_cents, position = self._cash_and_position(conn, symbol)
        if cash_cents < total_cents:
            raise ActionFailed(
                f"insufficient cash: the order costs {format_dollars(total_cents)} "
                f"but the account holds {format_dollars(cash_cents)}",
                effect="none",
            )
        cash_after = cash_cents - total_cents
        position_after = position + quantity
        filled_at = datetime.now(UTC).isoformat()
        conn.execute("UPDATE account SET cash_cents = ? WHERE id = 1", (cash_after,))
        conn.execute(
            "INSERT INTO positions (symbol, quantity) VALUES (?, ?) "
            "ON CONFLICT (symbol) DO UPDATE SET quantity = excluded.quantity",
            (symbol, position_after),
        )
        conn.execute(
            "INSERT INTO orders (client_order_id, symbol, quantity, price, total_cents, cash_after_cents, "
            "position_after, filled_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (client_order_id, symbol, quantity, price, total_cents, cash_after, position_after, filled_at),
        )
        return Fill(
            order_id=client_order_id,
            symbol=symbol,
            quantity=quantity,
            price=price,
            total=cents_to_dollars(total_cents),
            cash_after=cents_to_dollars(cash_after),
            position_after=position_after,
            filled_at=filled_at,
        )


def _in_snapshot(conn: sqlite3.Connection, query: Callable[[sqlite3.Connection | None], T]) -> T:
    """`query` in one read transaction: one snapshot for every statement it runs."""
    conn.execute("BEGIN")
    try:
        return query(conn)
    finally:
        if conn.in_transaction:
            conn.execute("COMMIT")


def _fill_from_row(row: sqlite3.Row) -> Fill:
    return Fill(
        order_id=row["client_order_id"],
        symbol=row["symbol"],
        quantity=int(row["quantity"]),
        price=float(row["price"]),
        total=cents_to_dollars(int(row["total_cents"])),
        cash_after=cents_to_dollars(int(row["cash_after_cents"])),
        position_after=int(row["position_after"]),
        filled_at=row["filled_at"],
    )
