"""Engine and unit of work. Services take a session and never commit; callers own the transaction."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from accord.config import Settings
from accord.security.crypto import Keyring


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


CONFLICT_WORDS = ("deadlock", "could not serialize", "locked", "busy")


def conflicted(error: DBAPIError) -> bool:
    """Whether another transaction got in the way (a key it wrote meanwhile, a deadlock, a serialization
    failure, a busy SQLite): the transaction is worth another try, after a `backoff`."""
    return isinstance(error, IntegrityError) or any(word in str(error.orig).lower() for word in CONFLICT_WORDS)


def backoff(attempt: int, *, base: float, cap: float = 0.5) -> None:
    """Wait before trying a conflicted transaction again: a random while up to `base` * 2**`attempt`
    seconds, at most `cap`, so that the transactions that collided do not collide again in step."""
    time.sleep(random.uniform(0, min(cap, base * 2**attempt)))


class Database:
    """One engine and its session factory. `dialect` is "sqlite" or "postgresql"."""

    def __init__(
        self, url: str, *, sqlite_synchronous: str = "FULL", pool_size: int = 10, keyring: Keyring | None = None
    ) -> None:
        parsed = make_url(url)
        self.url = url
        # The keys of encryption at rest: every session carries them (`accord.security.datakeys.keyring_of`).
        self.keyring = keyring
        self.dialect = parsed.get_backend_name()
        kwargs: dict[str, Any] = {"json_serializer": _json_dumps, "json_deserializer": orjson.loads}
        if self.dialect == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        else:
            kwargs["pool_size"] = pool_size
            kwargs["max_overflow"] = pool_size
            kwargs["pool_pre_ping"] = True
            # No server-side prepared statements: their generic plans for long IN lists (dedupe,
            # identity lookups) were 10x slower than planning each query.
            kwargs["connect_args"] = {"prepare_threshold": None}
        self.engine: Engine = create_engine(url, **kwargs)
        if self.dialect == "sqlite":
            _configure_sqlite(self.engine, sqlite_synchronous)
        else:
            # Multi-row INSERT ... VALUES batches instead of one statement per row in executemany.
            self.engine.dialect.use_insertmanyvalues_wo_returning = True
        info = {"keyring": keyring}
        self.sessions = sessionmaker(self.engine, expire_on_commit=False, info=info)
        self.read_sessions = sessionmaker(
            self.engine.execution_options(accord_read_only=True), expire_on_commit=False, info=info
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        return cls(
            settings.sqlalchemy_url(),
            sqlite_synchronous=settings.sqlite_synchronous,
            keyring=Keyring.from_settings(settings),
        )

    @contextmanager
    def unit_of_work(self) -> Iterator[Session]:
        """A session whose work commits once at the end, or rolls back on any error."""
        with self.sessions() as session, session.begin():
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A session for reads only; on SQLite it does not take the write lock."""
        with self.read_sessions() as session, session.begin():
            yield session

    def checkpoint_wal(self) -> None:
        """SQLite: copy the write-ahead log into the database file and truncate it to nothing, so that no
        older page (with data since deleted) stays behind in it. Waits for readers (busy timeout)."""
        if self.dialect != "sqlite":
            return
        connection = self.engine.raw_connection()
        try:
            connection.cursor().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        finally:
            connection.close()

    def dispose(self) -> None:
        self.engine.dispose()


def _configure_sqlite(engine: Engine, synchronous: str) -> None:
    if synchronous.upper() not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
        raise ValueError(f"ACCORD_SQLITE_SYNCHRONOUS must be OFF, NORMAL, FULL or EXTRA, not {synchronous!r}")

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy own transactions, and begin them IMMEDIATE: SQLite then takes the write
        # lock up front instead of failing a deferred read-to-write upgrade under contention.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous.upper()}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        # Deleted rows are overwritten with zeros, not left in free pages: erasure must leave nothing behind.
        cursor.execute("PRAGMA secure_delete=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        read_only = conn.get_execution_options().get("accord_read_only", False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")
