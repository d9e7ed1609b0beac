"""`delete_database_records`: delete rows of an allowed table of the target SQLite database.

The condition is parsed by `hitl_mcp.expr` and compiled to parameterised SQL over the table's real columns;
the agent's text never reaches SQLite. The delete re-derives everything from the approved arguments and
runs in one transaction that refuses when more rows match than the approver was shown.
"""

from __future__ import annotations

import math
import re
import sqlite3
from collections.abc import Mapping
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import anyio.to_thread
from pydantic import BaseModel, ConfigDict, Field

from hitl_mcp import expr
from hitl_mcp.actions.base import Action, ActionSettings, ConfigPath, Execution
from hitl_mcp.errors import ActionFailed, InvalidArguments

IDENTIFIER_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
MAX_CONDITION_LENGTH = 4000
MAX_SUMMARY_CONDITION = 200
MAX_SAMPLE_TEXT = 200
MAX_SAMPLE_BYTES = 64
BUSY_TIMEOUT_SECONDS = 5.0
CONFIG_TABLE = "[actions.delete_database_records]"


class DeleteArguments(BaseModel):
    model_config = ConfigDict(extra="forbid")

    table: str = Field(
        min_length=1,
        max_length=128,
        pattern=IDENTIFIER_PATTERN,
        description="Name of the table to delete rows from, e.g. users. It must be one of the tables the "
        "operator allows; letters, digits and '_' only.",
    )
    condition: str = Field(
        min_length=1,
        max_length=MAX_CONDITION_LENGTH,
        description="Which rows to delete, like an SQL WHERE clause over the table's columns, e.g. "
        "age < 30, or status = 'inactive' AND last_login < '2024-01-01', or id IN (3, 7), or "
        "email LIKE '%@test.com', or deleted_at IS NOT NULL. Write text in single quotes.",
    )


class DeleteSettings(ActionSettings):
    database: ConfigPath | None = Field(
        default=None,
        description="The target SQLite file rows are deleted from; relative to the config file's folder.",
    )
    allowed_tables: list[str] = Field(
        default_factory=list,
        description="Tables whose rows may be deleted. Empty (the default) allows none.",
    )
    sample_size: int = Field(default=5, ge=1, le=100, description="Matching rows shown to the approver.")


@dataclass(frozen=True)
class _Plan:
    """What the arguments ask for, checked as far as possible without opening the database."""

    database: Path
    table: str
    condition: expr.Node


@dataclass(frozen=True)
class _Target:
    """The plan resolved against the database's schema."""

    table: str  # as the schema spells it
    columns: list[str]
    where_sql: str
    params: list[object]

    @property
    def quoted_table(self) -> str:
        return expr.quote_identifier(self.table)


class DeleteRecords(Action[DeleteArguments, DeleteSettings]):
    name = "delete_database_records"
    description = (
        "Request to delete rows from a table of the application's database. This does NOT delete anything "
        "by itself: it files a request that a human must approve, and returns at once with a request id. "
        "The approver sees how many rows match and a sample of them. Only after approval are the matching "
        "rows deleted, exactly once, in one transaction - and nothing is deleted if by then more rows match "
        "than the approver was shown. Use the request id to check the outcome later. Arguments: table (one "
        "of the allowed tables) and condition, which selects rows like an SQL WHERE clause, e.g. age < 30 "
        "or status = 'inactive' AND last_login < '2024-01-01'. A condition may use the table's column "
        "names, numbers, 'single-quoted text', NULL, TRUE, FALSE, comparisons (= != <> < <= > >=), "
        "arithmetic (+ - * / %), LIKE with % and _ wildcards, IN (value, ...), IS NULL, IS NOT NULL, AND, "
        "OR, NOT and parentheses. Anything else is refused: ';', comments, function calls, subqueries, "
        "other SQL."
    )
    arguments_model = DeleteArguments
    settings_model = DeleteSettings
    preview_types: ClassVar[Mapping[str, type]] = {"matching_rows": int}

    def target(self) -> dict[str, str]:
        database = self.settings.database
        return {"database": "(none configured)" if database is None else str(database.resolve())}

    def summary(self, args: DeleteArguments) -> str:
        condition = re.sub(r"[\r\n\t\f\v]+", " ", args.condition).strip()
        if len(condition) > MAX_SUMMARY_CONDITION:
            condition = condition[: MAX_SUMMARY_CONDITION - 1].rstrip() + "…"
        return f"Delete rows from {args.table} where {condition}"

    async def preview(self, args: DeleteArguments) -> dict[str, Any]:
        plan = self._plan(args)
        return await anyio.to_thread.run_sync(self._preview, plan, args.condition)

    async def execute(self, args: DeleteArguments, execution: Execution) -> dict[str, Any]:
        shown = execution.preview.get("matching_rows")
        if not isinstance(shown, int) or isinstance(shown, bool):
            raise ActionFailed(
                "the approved preview has no row count to check against; nothing was deleted", effect="none"
            )
        try:
            plan = self._plan(args)
        except InvalidArguments as error:
            raise ActionFailed(f"{error}; nothing was deleted", effect="none") from None
        return await anyio.to_thread.run_sync(self._delete, plan, shown)

    # --- checks that need no database ---------------------------------------------------------------------

    def _plan(self, args: DeleteArguments) -> _Plan:
        database = self.settings.database
        if database is None:
            raise InvalidArguments(
                f"table: no target database is configured; set {CONFIG_TABLE} database in the config file"
            )
        allowed = self.settings.allowed_tables
        if args.table.lower() not in {table.lower() for table in allowed}:
            if not allowed:
                raise InvalidArguments(
                    f"table: '{args.table}' is not allowed; no table is until the operator lists them in "
                    f"{CONFIG_TABLE} allowed_tables"
                )
            raise InvalidArguments(
                f"table: '{args.table}' is not allowed; allowed tables: {', '.join(allowed)}"
            )
        try:
            condition = expr.parse(args.condition, max_length=MAX_CONDITION_LENGTH)
        except expr.ExpressionError as error:
            raise InvalidArguments(f"condition: {error}") from None
        return _Plan(database, args.table, condition)

    # --- database work, in a worker thread ----------------------------------------------------------------

    def _preview(self, plan: _Plan, condition_text: str) -> dict[str, Any]:
        with closing(_open(plan.database, "ro")) as connection:
            connection.execute("PRAGMA query_only = ON")
            # One read transaction, so the count and the sample come from the same snapshot.
            connection.execute("BEGIN")
            target = _resolve(connection, plan)
            try:
                count = _count(connection, target)
                cursor = connection.execute(
                    f"SELECT * FROM {target.quoted_table} WHERE {target.where_sql} LIMIT ?",
                    [*target.params, self.settings.sample_size],
                )
                names = [column[0] for column in cursor.description]
                sample = [
                    {name: _shown(value) for name, value in zip(names, row, strict=True)} for row in cursor
                ]
            except sqlite3.Error as error:
                raise InvalidArguments(f"condition: the database refused it: {error}") from None
        return {
            "table": target.table,
            "condition": condition_text,
            "where_sql": target.where_sql,
            "params": target.params,
            "matching_rows": count,
            "sample": sample,
            "columns": target.columns,
        }

    def _delete(self, plan: _Plan, shown: int) -> dict[str, Any]:
        try:
            connection = _open(plan.database, "rw")
        except InvalidArguments as error:
            raise ActionFailed(f"{error}; nothing was deleted", effect="none") from None
        with closing(connection):
            try:
                # IMMEDIATE takes the write lock now, so no row can be added between the count and the delete.
                connection.execute("BEGIN IMMEDIATE")
                target = _resolve(connection, plan)
                matching = _count(connection, target)
                if matching > shown:
                    raise ActionFailed(
                        f"{matching} rows match now but the approver was shown {shown}; nothing was deleted",
                        effect="none",
                    )
                cursor = connection.execute(
                    f"DELETE FROM {target.quoted_table} WHERE {target.where_sql}", target.params
                )
                deleted = cursor.rowcount
                connection.execute("COMMIT")
                return {"deleted": deleted, "table": target.table}
            except InvalidArguments as error:
                raise ActionFailed(f"{error}; nothing was deleted", effect="none") from None
            except sqlite3.Error as error:
                raise ActionFailed(
                    f"the database refused the delete ({error}); nothing was deleted", effect="none"
                ) from None
            finally:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")


def _open(database: Path, mode: str) -> sqlite3.Connection:
    """Open an existing database; `mode=ro`/`rw` never creates a missing file, as a plain connect would."""
    uri = f"{database.resolve().as_uri()}?mode={mode}"
    try:
        connection = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=BUSY_TIMEOUT_SECONDS)
    except sqlite3.Error as error:
        raise _unopenable(database, error) from None
    try:
        # Opening is lazy: the first read is what finds a file that is not a database.
        connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as error:
        connection.close()
        raise _unopenable(database, error) from None
    return connection


def _unopenable(database: Path, error: sqlite3.Error) -> InvalidArguments:
    return InvalidArguments(
        f"table: cannot open the target database {database} ({error}); check {CONFIG_TABLE} database"
    )


def _resolve(connection: sqlite3.Connection, plan: _Plan) -> _Target:
    row = connection.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name = ? COLLATE NOCASE", [plan.table]
    ).fetchone()
    if row is None:
        raise InvalidArguments(f"table: the database has no table '{plan.table}'")
    table: str = row[0]
    columns = [name for (name,) in connection.execute("SELECT name FROM pragma_table_info(?)", [table])]
    try:
        where_sql, params = expr.to_sql(plan.condition, columns, table=table)
    except expr.ExpressionError as error:
        raise InvalidArguments(f"condition: {error}") from None
    return _Target(table, columns, where_sql, params)


def _count(connection: sqlite3.Connection, target: _Target) -> int:
    row = connection.execute(
        f"SELECT count(*) FROM {target.quoted_table} WHERE {target.where_sql}", target.params
    ).fetchone()
    count: int = row[0]
    return count


def _shown(value: object) -> object:
    """A sample value as JSON can carry it, cut short so one huge cell cannot swamp the preview."""
    if isinstance(value, bytes):
        shown = value[:MAX_SAMPLE_BYTES].hex()
        return f"x'{shown}'" if len(value) <= MAX_SAMPLE_BYTES else f"x'{shown}…' ({len(value)} bytes)"
    if isinstance(value, str) and len(value) > MAX_SAMPLE_TEXT:
        return f"{value[:MAX_SAMPLE_TEXT]}… ({len(value)} characters)"
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return value
