"""`delete_database_records` against real SQLite files."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from hitl_mcp.actions.base import Execution
from hitl_mcp.actions.delete_records import DeleteArguments, DeleteRecords, DeleteSettings
from hitl_mcp.errors import ActionFailed, ConfigError, InvalidArguments

USERS = [
    (1, "ann@test.com", 25, "active", None, b"\x00\xff"),
    (2, "bob@test.com", 41, "inactive", None, None),
    (3, "cid@corp.com", 29, "inactive", "2024-02-01", None),
    (4, "dee@corp.com", 52, "active", None, None),
    (5, "eve@test.com", 17, "active", None, None),
]


@pytest.fixture
def database(tmp_path: Path) -> Path:
    path = tmp_path / "app.db"
    with closing(sqlite3.connect(path)) as connection, connection:
        connection.execute(
            "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT, age INTEGER, status TEXT, "
            "deleted_at TEXT, avatar BLOB)"
        )
        connection.executemany("INSERT INTO users VALUES (?, ?, ?, ?, ?, ?)", USERS)
        connection.execute("CREATE TABLE secrets (id INTEGER PRIMARY KEY, value TEXT)")
        connection.execute("INSERT INTO secrets VALUES (1, 'keep me')")
    return path


@pytest.fixture
def action(database: Path) -> DeleteRecords:
    return DeleteRecords(DeleteSettings(database=database, allowed_tables=["users", "ghosts"]))


def arguments(condition: str, table: str = "users") -> DeleteArguments:
    return DeleteArguments(table=table, condition=condition)


def dump(path: Path) -> str:
    with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as connection:
        return "\n".join(connection.iterdump())


def run(path: Path, statement: str) -> None:
    # sqlite3's own context manager commits but does not close.
    with closing(sqlite3.connect(path)) as connection, connection:
        connection.execute(statement)


def raw_bytes(path: Path) -> bytes:
    return path.read_bytes()


def user_ids(path: Path) -> list[int]:
    with closing(sqlite3.connect(path)) as connection:
        return [row[0] for row in connection.execute("SELECT id FROM users ORDER BY id")]


async def approved(action: DeleteRecords, args: DeleteArguments) -> tuple[dict[str, Any], Execution]:
    preview = await action.preview(args)
    return preview, Execution(request_id="req-1", preview=preview)


# --- preview ------------------------------------------------------------------------------------------------


async def test_preview_counts_and_samples_the_matching_rows(action: DeleteRecords) -> None:
    preview = await action.preview(arguments("age < 30"))

    assert preview["matching_rows"] == 3
    assert preview["table"] == "users"
    assert preview["condition"] == "age < 30"
    assert preview["where_sql"] == '("age" < ?)'
    assert preview["params"] == [30]
    assert preview["columns"] == ["id", "email", "age", "status", "deleted_at", "avatar"]
    assert sorted(row["id"] for row in preview["sample"]) == [1, 3, 5]
    assert preview["sample"][0] == {
        "id": 1,
        "email": "ann@test.com",
        "age": 25,
        "status": "active",
        "deleted_at": None,
        "avatar": "x'00ff'",
    }


async def test_preview_sample_is_capped_by_the_sample_size(database: Path) -> None:
    action = DeleteRecords(DeleteSettings(database=database, allowed_tables=["users"], sample_size=2))

    preview = await action.preview(arguments("id > 0"))

    assert preview["matching_rows"] == 5
    assert len(preview["sample"]) == 2


async def test_preview_changes_nothing_on_disk(action: DeleteRecords, database: Path) -> None:
    before = raw_bytes(database)

    await action.preview(arguments("status = 'inactive' AND (deleted_at IS NOT NULL OR age > 40)"))

    assert raw_bytes(database) == before


async def test_table_and_column_names_match_case_insensitively(action: DeleteRecords) -> None:
    preview = await action.preview(arguments("AGE < 20 and Email like '%@TEST.com'", table="Users"))

    assert preview["table"] == "users"
    assert preview["where_sql"] == '(("age" < ?) AND ("email" LIKE ?))'
    assert preview["matching_rows"] == 1


def test_summary_keeps_the_condition_on_one_line(action: DeleteRecords) -> None:
    assert action.summary(arguments("age < 30")) == "Delete rows from users where age < 30"
    assert action.summary(arguments("age < 30\n  AND status = 'x'")) == (
        "Delete rows from users where age < 30   AND status = 'x'"
    )
    long = action.summary(arguments("id IN (" + ", ".join(["1"] * 300) + ")"))
    assert long.startswith("Delete rows from users where id IN (1, 1")
    assert long.endswith("…")
    assert len(long) < 240


# --- refusals -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "condition", "message"),
    [
        ("users", "1=1; DROP TABLE users", "condition: unexpected ';' at position 3: only one condition"),
        ("users", "age < 30 -- and the rest", "condition: comments are not allowed (position 9)"),
        ("users", "age < 30 /* x */", "condition: comments are not allowed (position 9)"),
        ("users", "id IN (SELECT id FROM secrets)", "condition: subqueries are not allowed (position 7)"),
        ("users", "lower(email) = 'ann@test.com'", "condition: function calls are not allowed: 'lower'"),
        (
            "users",
            "agee < 30",
            "condition: unknown column 'agee' at position 0 (did you mean 'age'?); columns",
        ),
        ("users", "rowid = 1", "condition: unknown column 'rowid' at position 0"),
        ("users", "   ", "condition: the condition is empty"),
        ("users", "age < 30) OR (1 = 1", "condition: unbalanced parentheses"),
        ("ghosts", "id = 1", "table: the database has no table 'ghosts'"),
        ("secrets", "id = 1", "table: 'secrets' is not allowed; allowed tables: users, ghosts"),
        ("sqlite_master", "1 = 1", "table: 'sqlite_master' is not allowed"),
    ],
)
async def test_bad_requests_are_refused_saying_why_and_change_nothing(
    action: DeleteRecords, database: Path, table: str, condition: str, message: str
) -> None:
    before = dump(database)

    with pytest.raises(InvalidArguments) as caught:
        await action.preview(arguments(condition, table))

    assert str(caught.value).startswith(message)
    assert dump(database) == before


async def test_unknown_column_names_the_table_and_its_columns(action: DeleteRecords) -> None:
    with pytest.raises(InvalidArguments) as caught:
        await action.preview(arguments("nickname = 'x'"))
    assert str(caught.value) == (
        "condition: unknown column 'nickname' at position 0; columns of users: age, avatar, deleted_at, "
        "email, id, status"
    )


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"table": "users", "condition": ""}, "condition: String should have at least 1 character"),
        ({"table": "users; DROP TABLE users", "condition": "id = 1"}, "table: String should match pattern"),
        ({"table": '"users"', "condition": "id = 1"}, "table: String should match pattern"),
        (
            {"table": "users", "condition": "x" * 4001},
            "condition: String should have at most 4000 characters",
        ),
        ({"table": "users", "condition": "id = 1", "limit": 1}, "limit: Extra inputs are not permitted"),
    ],
)
def test_malformed_arguments_are_refused_naming_the_field(
    action: DeleteRecords, raw: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidArguments) as caught:
        action.parse(raw)
    assert str(caught.value).startswith(message)


async def test_missing_database_config_is_refused_naming_the_key() -> None:
    action = DeleteRecords(DeleteSettings(allowed_tables=["users"]))

    with pytest.raises(InvalidArguments) as caught:
        await action.preview(arguments("id = 1"))

    assert str(caught.value) == (
        "table: no target database is configured; set [actions.delete_database_records] database in the "
        "config file"
    )


async def test_no_allowed_tables_refuses_every_table(database: Path) -> None:
    action = DeleteRecords(DeleteSettings(database=database))

    with pytest.raises(InvalidArguments) as caught:
        await action.preview(arguments("id = 1"))

    assert str(caught.value) == (
        "table: 'users' is not allowed; no table is until the operator lists them in "
        "[actions.delete_database_records] allowed_tables"
    )


async def test_missing_database_file_is_refused_and_not_created(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.db"
    action = DeleteRecords(DeleteSettings(database=path, allowed_tables=["users"]))

    with pytest.raises(InvalidArguments, match=r"^table: cannot open the target database"):
        await action.preview(arguments("id = 1"))
    with pytest.raises(ActionFailed, match=r"nothing was deleted$"):
        await action.execute(arguments("id = 1"), Execution("req-1", {"matching_rows": 1}))

    assert not path.exists()


async def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"not a database at all, just some text" * 100)
    action = DeleteRecords(DeleteSettings(database=path, allowed_tables=["users"]))

    with pytest.raises(InvalidArguments, match=r"^table: cannot open the target database .*notes\.txt"):
        await action.preview(arguments("id = 1"))


def test_settings_resolve_the_database_against_the_config_folder(tmp_path: Path) -> None:
    settings = DeleteRecords.configure({"database": "app.db", "allowed_tables": ["users"]}, tmp_path)

    assert isinstance(settings, DeleteSettings)
    assert settings.database == tmp_path / "app.db"
    with pytest.raises(ConfigError, match=r"actions\.delete_database_records\.sample_size"):
        DeleteRecords.configure({"sample_size": 0}, tmp_path)


# --- execute ------------------------------------------------------------------------------------------------


async def test_execute_deletes_exactly_the_matching_rows(action: DeleteRecords, database: Path) -> None:
    args = arguments("status = 'inactive' OR email LIKE 'eve@%'")
    _, execution = await approved(action, args)

    result = await action.execute(args, execution)

    assert result == {"deleted": 3, "table": "users"}
    assert user_ids(database) == [1, 4]


async def test_execute_refuses_when_more_rows_match_than_were_shown(
    action: DeleteRecords, database: Path
) -> None:
    args = arguments("age < 30")
    preview, execution = await approved(action, args)
    assert preview["matching_rows"] == 3
    run(database, "INSERT INTO users (id, email, age) VALUES (6, 'fay@test.com', 12)")
    before = dump(database)

    with pytest.raises(ActionFailed) as caught:
        await action.execute(args, execution)

    assert str(caught.value) == "4 rows match now but the approver was shown 3; nothing was deleted"
    assert dump(database) == before


async def test_execute_with_fewer_matching_rows_reports_what_it_deleted(
    action: DeleteRecords, database: Path
) -> None:
    args = arguments("age < 30")
    _, execution = await approved(action, args)
    run(database, "DELETE FROM users WHERE id = 5")

    result = await action.execute(args, execution)

    assert result == {"deleted": 2, "table": "users"}
    assert user_ids(database) == [2, 4]


async def test_execute_rederives_the_sql_from_the_arguments(action: DeleteRecords, database: Path) -> None:
    forged = {"matching_rows": 100, "where_sql": "1 = 1", "params": [], "table": "secrets"}

    result = await action.execute(arguments("id = 2"), Execution("req-1", forged))

    assert result == {"deleted": 1, "table": "users"}
    assert user_ids(database) == [1, 3, 4, 5]
    assert "INSERT INTO \"secrets\" VALUES(1,'keep me');" in dump(database)


@pytest.mark.parametrize(
    ("condition", "preview"),
    [
        ("1=1; DROP TABLE users", {"matching_rows": 5}),
        ("id IN (SELECT id FROM users)", {"matching_rows": 5}),
        ("id = 1", {}),
        ("id = 1", {"matching_rows": "5"}),
    ],
)
async def test_execute_refuses_what_preview_would_refuse(
    action: DeleteRecords, database: Path, condition: str, preview: dict[str, object]
) -> None:
    before = dump(database)

    with pytest.raises(ActionFailed, match=r"nothing was deleted$"):
        await action.execute(arguments(condition), Execution("req-1", preview))

    assert dump(database) == before


async def test_execute_refuses_when_the_table_lost_a_column_since_the_preview(
    action: DeleteRecords, database: Path
) -> None:
    args = arguments("deleted_at IS NOT NULL")
    _, execution = await approved(action, args)
    run(database, "ALTER TABLE users DROP COLUMN deleted_at")
    before = dump(database)

    with pytest.raises(ActionFailed, match=r"^condition: unknown column 'deleted_at'.*nothing was deleted$"):
        await action.execute(args, execution)

    assert dump(database) == before
