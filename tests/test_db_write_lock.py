"""On SQLite a transaction that writes takes the write lock when it begins (BEGIN IMMEDIATE), and when
another connection holds it, waits in short steps of its own instead of SQLite's busy handler's growing
sleeps (`db.engine.begin_immediate`): the audit record of a profile read no longer waits 50 or 100 ms
for a worker that takes the lock back a moment after each commit. PostgreSQL has no such lock."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from accord.db.engine import BUSY_TIMEOUT_S, Database, begin_immediate


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "accord.db"


@pytest.fixture
def db(path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{path}")
    with database.unit_of_work() as session:
        session.execute(text("CREATE TABLE t (n INTEGER)"))
    yield database
    database.dispose()


def _holder(path: Path) -> sqlite3.Connection:
    """Another process's connection, as the worker's is: it holds the write lock until it commits."""
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    connection.execute("BEGIN IMMEDIATE")
    connection.execute("INSERT INTO t VALUES (1)")
    return connection


def _busy_timeout(connection: sqlite3.Connection) -> int:
    return int(connection.execute("PRAGMA busy_timeout").fetchone()[0])


def test_a_writer_waits_for_the_lock_and_then_writes(db: Database, path: Path) -> None:
    holder = _holder(path)
    waiting = threading.Timer(0.05, holder.commit)
    waiting.start()
    try:
        with db.unit_of_work() as session:  # begins while the lock is held: waits until the commit
            session.execute(text("INSERT INTO t VALUES (2)"))
    finally:
        waiting.join()
        holder.close()
    with db.read() as session:
        assert session.execute(text("SELECT n FROM t ORDER BY n")).scalars().all() == [1, 2]
        # The connection's busy timeout (for every other statement) is back once the lock is taken.
        assert session.execute(text("PRAGMA busy_timeout")).scalar() == int(BUSY_TIMEOUT_S * 1000)


def test_a_lock_held_past_the_timeout_is_an_error_and_the_busy_timeout_is_back(path: Path, db: Database) -> None:
    holder = _holder(path)
    waiter = sqlite3.connect(path, isolation_level=None)
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            begin_immediate(waiter, 0.05)
        assert not waiter.in_transaction
        assert _busy_timeout(waiter) == 50
        holder.commit()
        begin_immediate(waiter, 0.05)  # free now: taken at the first try
        assert waiter.in_transaction
        waiter.execute("INSERT INTO t VALUES (3)")
        waiter.commit()
    finally:
        waiter.close()
        holder.close()
    with db.read() as session:
        assert session.execute(text("SELECT n FROM t ORDER BY n")).scalars().all() == [1, 3]


def test_an_error_other_than_a_taken_lock_is_raised_at_once(path: Path, db: Database) -> None:
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("BEGIN")
        with pytest.raises(sqlite3.OperationalError, match="within a transaction"):
            begin_immediate(connection, BUSY_TIMEOUT_S)
        assert _busy_timeout(connection) == int(BUSY_TIMEOUT_S * 1000)
    finally:
        connection.close()


def test_reads_do_not_take_the_write_lock(db: Database, path: Path) -> None:
    holder = _holder(path)
    try:
        with db.read() as session:  # answers while a writer holds the lock (WAL)
            assert session.execute(text("SELECT count(*) FROM t")).scalar() == 0
    finally:
        holder.close()
