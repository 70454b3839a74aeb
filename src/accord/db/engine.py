"""Engine and unit of work. Services take a session and never commit; callers own the transaction."""

from __future__ import annotations

import logging
import os
import random
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from accord.config import Settings
from accord.security import keyfile
from accord.security.crypto import Keyring
from accord.security.keys import KeyringError

log = logging.getLogger(__name__)


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


# PostgreSQL's SQLSTATEs for a transaction failed because another got in the way: a serialization failure,
# a deadlock, a lock not had in time (lock_timeout, NOWAIT). Codes, since messages follow lc_messages.
DEADLOCK_SQLSTATE = "40P01"
CONFLICT_SQLSTATES = frozenset({"40001", DEADLOCK_SQLSTATE, "55P03"})
# SQLite's, which has no SQLSTATE: "database is locked", "database table is locked", busy.
CONFLICT_WORDS = ("locked", "busy")
# A unique key a row holds already: PostgreSQL's unique_violation; SQLite's UNIQUE and PRIMARY KEY constraints.
UNIQUE_SQLSTATE = "23505"
_SQLITE_UNIQUE = frozenset({sqlite3.SQLITE_CONSTRAINT_UNIQUE, sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY})


def sqlstate(error: DBAPIError) -> str | None:
    """PostgreSQL's SQLSTATE for the error; None on SQLite, which has none."""
    return getattr(error.orig, "sqlstate", None)


def conflicted(error: DBAPIError) -> bool:
    """Whether another transaction got in the way (a key it wrote meanwhile, a deadlock, a serialization
    failure, a lock it waited for past lock_timeout, a busy SQLite): the transaction is worth another try,
    after a `backoff`."""
    if isinstance(error, IntegrityError) or sqlstate(error) in CONFLICT_SQLSTATES:
        return True
    return any(word in str(error.orig).lower() for word in CONFLICT_WORDS)


def duplicate_key(error: DBAPIError) -> bool:
    """Whether a statement failed on a unique key a row holds already. After a check in the same transaction
    that the key was free, on PostgreSQL, another transaction wrote it meanwhile: the statement waited on the
    key's index for that one to commit. Not other integrity errors (foreign key, not null, check)."""
    if not isinstance(error, IntegrityError):
        return False
    return sqlstate(error) == UNIQUE_SQLSTATE or getattr(error.orig, "sqlite_errorcode", None) in _SQLITE_UNIQUE


# A table's statistics are refreshed before a long walk when more rows changed since its last ANALYZE than
# this many, and than half the rows it holds: far past autovacuum's own threshold (10%), so only a load
# that outran autovacuum (a first import, a bulk load just before) pays for an ANALYZE here.
STALE_ROWS = 10_000


def analyze_if_stale(session: Session, tables: Sequence[str]) -> list[str]:
    """PostgreSQL: ANALYZE those of `tables` whose statistics are far behind their rows, in the session's
    transaction; returns their names. The planner chose from statistics taken while a table was small: a
    segment backfill just after a bulk load read and sorted every profile after each range's boundary,
    instead of walking the key. Nothing on SQLite (its planner keeps no such statistics here)."""
    if session.get_bind().dialect.name != "postgresql":
        return []
    stale = list(
        session.scalars(
            text(
                "SELECT relname FROM pg_stat_user_tables WHERE schemaname = current_schema() "
                "AND relname = ANY(:tables) AND n_mod_since_analyze > :rows "
                "AND n_mod_since_analyze * 2 > n_live_tup ORDER BY relname"
            ),
            {"tables": list(tables), "rows": STALE_ROWS},
        )
    )
    for table in stale:  # names from the query above, which took them from the caller's own list
        session.execute(text(f'ANALYZE "{table}"'))
    return stale


def backoff(attempt: int, *, base: float, cap: float = 0.5) -> None:
    """Wait before trying a conflicted transaction again: a random while up to `base` * 2**`attempt`
    seconds, at most `cap`, so that the transactions that collided do not collide again in step."""
    time.sleep(random.uniform(0, min(cap, base * 2**attempt)))


# How often the worker's checkpoint thread runs. SQLite's own default checkpoints in the commit that
# finds the log past 1,000 pages (4 MiB), which at 1,000 events/s is about every half second.
CHECKPOINT_SECONDS = 0.25


class Database:
    """One engine and its session factory. `dialect` is "sqlite" or "postgresql"."""

    def __init__(
        self,
        url: str,
        *,
        sqlite_synchronous: str = "FULL",
        pool_size: int = 10,
        keyring: Keyring | None = None,
        autocheckpoint: bool = True,
    ) -> None:
        parsed = make_url(url)
        self.url = url
        # The keys of encryption at rest: every session carries them (`accord.security.datakeys.keyring_of`).
        self.keyring = keyring
        self.dialect = parsed.get_backend_name()
        self.synchronous = sqlite_synchronous.upper()
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
        self._checkpoints: BackgroundCheckpoints | None = None
        self._page_cache_mib: int | None = None  # None: SQLite's default (2 MiB per connection)
        if self.dialect == "sqlite":
            _configure_sqlite(self.engine, sqlite_synchronous)
            if not autocheckpoint:  # another connection checkpoints this file (`checkpoint_in_background`)
                event.listen(self.engine, "connect", _no_autocheckpoint)
        else:
            # Multi-row INSERT ... VALUES batches instead of one statement per row in executemany.
            self.engine.dialect.use_insertmanyvalues_wo_returning = True
        info = {"keyring": keyring}
        self.sessions = sessionmaker(self.engine, expire_on_commit=False, info=info)
        self._read_engine = self.engine.execution_options(accord_read_only=True)
        self.read_sessions = sessionmaker(self._read_engine, expire_on_commit=False, info=info)

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        """The database with the installation's keys; KeyringError when the key-encryption key file cannot
        open the data keys stored in it, or the blind-index key file is not the one the stored identifiers
        were indexed with (`accord.security.keyfile`). Key files made just now are then removed again."""
        kek_path, blind_path = settings.kek_path(), settings.blind_index_key_path()
        made = [path for path in (kek_path, blind_path) if not path.exists()]
        keyring = Keyring.from_settings(settings)
        db = cls(settings.sqlalchemy_url(), sqlite_synchronous=settings.sqlite_synchronous, keyring=keyring)
        try:
            keyfile.check(db.engine, keyring.provider, kek_path, created=kek_path in made)
            keyfile.check_blind_index(db, blind_path, created=blind_path in made)
        except KeyringError:
            db.dispose()
            for path in made:  # both were missing: the blind-index file made beside a refused KEK goes too
                path.unlink(missing_ok=True)
            raise
        except BaseException:
            db.dispose()
            raise
        return db

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

    @contextmanager
    def read_connection(self) -> Iterator[Connection]:
        """`read`, for Core statements only: a connection without a session (which costs more than the
        reads of a worker's claim)."""
        with self._read_engine.connect() as connection, connection.begin():
            yield connection

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

    def checkpoint_in_background(self, every: float = CHECKPOINT_SECONDS) -> BackgroundCheckpoints | None:
        """SQLite: this process's commits stop copying the write-ahead log into the database file; a thread
        of its own does it every `every` seconds instead (`BackgroundCheckpoints`). For the worker, whose
        commits are on the way from an acknowledged event to its change being visible. Nothing on
        PostgreSQL or an in-memory database."""
        path = make_url(self.url).database
        if self.dialect != "sqlite" or not path or path == ":memory:":
            return None
        if self._checkpoints is None:
            event.listen(self.engine, "connect", _no_autocheckpoint)
            self.engine.dispose()  # connections opened before would go on checkpointing: open new ones
            self._checkpoints = BackgroundCheckpoints(path, every)
        return self._checkpoints

    @property
    def checkpoints_in_background(self) -> bool:
        return self._checkpoints is not None

    def commit_without_waiting_for_disk(self) -> bool:
        """SQLite: this process's commits return without waiting for the disk (synchronous=NORMAL in WAL
        mode: still atomic and consistent, but the last ones may be lost with the machine's power) until
        `sync_to_disk` makes them durable. For the worker, whose commits the event log's acknowledgements
        wait for (`SqlEventLog.acknowledge_when_durable`). False, and nothing done, on PostgreSQL, an
        in-memory database, or one configured not to sync at all (synchronous=OFF)."""
        path = make_url(self.url).database
        if self.dialect != "sqlite" or not path or path == ":memory:" or self.synchronous == "OFF":
            return False
        if self.synchronous != "NORMAL":
            self.synchronous = "NORMAL"
            event.listen(self.engine, "connect", _commit_without_waiting)
            self.engine.dispose()  # connections opened before would go on waiting: open new ones
        return True

    def keep_pages(self, mib: int) -> None:
        """SQLite: each of this process's connections keeps up to `mib` MiB of database pages in memory
        (SQLite's own default is 2 MiB). For the worker: a run of thousands of events changes more pages
        than 2 MiB hold, and SQLite then writes changed pages out before the commit and reads pages back
        from the file again and again (a 50,000-event drain in runs of up to 4,000 read 1.2 GB with the
        default, 0.4 GB with 64 MiB). Memory is taken as pages are read, up to the bound. Nothing on
        PostgreSQL."""
        if self.dialect != "sqlite" or mib == self._page_cache_mib:
            return
        if self._page_cache_mib is None:
            event.listen(self.engine, "connect", self._keep_pages)
        self._page_cache_mib = mib
        self.engine.dispose()  # connections opened before keep SQLite's default: open new ones

    @property
    def page_cache_mib(self) -> int | None:
        """What `keep_pages` set (None: SQLite's default, or PostgreSQL)."""
        return self._page_cache_mib

    def _keep_pages(self, dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA cache_size={-1024 * int(self._page_cache_mib or 2)}")  # negative: KiB
        cursor.close()

    def written_by_others(self, session: Session) -> bool:
        """SQLite: whether another connection (the API process's audit records of reads, its edits) committed
        a change to the database since the session's connection last asked; False the first time a
        connection asks, and always on PostgreSQL. Read from `PRAGMA data_version`, which a connection's
        own commits and PASSIVE checkpoints leave alone."""
        if self.dialect != "sqlite":
            return False
        pooled = session.connection().connection
        version = pooled.driver_connection.execute("PRAGMA data_version").fetchone()[0]  # type: ignore[union-attr]
        seen = pooled.info.get(_DATA_VERSION)
        pooled.info[_DATA_VERSION] = version
        return seen is not None and seen != version

    def sync_to_disk(self) -> None:
        """SQLite: make every commit this process has made so far durable: the write-ahead log and the
        database file are synced (fsync; the pages a commit wrote are in one or the other)."""
        path = str(make_url(self.url).database)
        for name in (path + "-wal", path):
            try:
                fd = os.open(name, os.O_RDONLY)
            except FileNotFoundError:  # no log: everything was checkpointed, and checkpoints sync
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def dispose(self) -> None:
        if self._checkpoints is not None:
            self._checkpoints.close()
            self._checkpoints = None
        self.engine.dispose()


def _commit_without_waiting(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _no_autocheckpoint(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA wal_autocheckpoint=0")
    cursor.close()


class BackgroundCheckpoints:
    """A thread that checkpoints one SQLite database's write-ahead log, PASSIVE (it waits for no reader or
    writer; what it cannot copy yet it copies next time), on a connection of its own. By default SQLite
    checkpoints inside the commit that finds the log past 1,000 pages, so that one commit of a worker run
    took tens of milliseconds more (copying and syncing the pages): the tail of the latency from an
    acknowledged event to its change being visible. sqlite3 lets go of the GIL while it copies, so the
    thread costs the worker nothing but the disk. If the process dies, the next connection or checkpoint
    carries on; nothing is lost, since committed pages are in the log until copied."""

    def __init__(self, path: str, every: float) -> None:
        # A short busy timeout: a checkpoint that cannot start is tried again at the next turn anyway.
        self._connection = sqlite3.connect(path, timeout=1, isolation_level=None, check_same_thread=False)
        self._every = every
        self._failed = ""  # the last failure logged, so that a lasting one is logged once
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="accord-checkpoints", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            self.checkpoint()

    def checkpoint(self) -> tuple[int, int, int]:
        """One PASSIVE checkpoint: (1 if it was blocked, frames in the log, frames copied)."""
        try:
            busy, frames, copied = self._connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as error:  # the next turn tries again
            if str(error) != self._failed:
                self._failed = str(error)
                log.warning("background checkpoint failed: %s", error)
            return (1, -1, -1)
        self._failed = ""
        return (busy, frames, copied)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._connection.close()


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
        cursor.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
        # Deleted rows are overwritten with zeros, not left in free pages: erasure must leave nothing behind.
        cursor.execute("PRAGMA secure_delete=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        dbapi_connection = conn.connection.driver_connection
        if conn.get_execution_options().get("accord_read_only", False):
            dbapi_connection.execute("BEGIN")
            return
        try:
            begin_immediate(dbapi_connection, BUSY_TIMEOUT_S)
        except sqlite3.OperationalError as error:
            # Raised as SQLAlchemy raises the driver's errors for statements (a DBAPIError), so that callers
            # tell a database another writer held past the timeout (`conflicted`: worth another try, or
            # the worker's claim given back) from a fault in their own work. Bare, it was taken for one: a
            # worker set its batch's events aside one by one.
            raise OperationalError("BEGIN IMMEDIATE", None, error) from error


# Where a pooled connection keeps the data version it last read (`Database.written_by_others`).
_DATA_VERSION = "accord.data_version"
# How long a connection waits for a lock (the write lock, or a checkpoint's) before it gives up.
BUSY_TIMEOUT_S = 30.0
# Between tries for the write lock: from 0.2 ms, doubling, at most 1 ms.
_FIRST_PAUSE_S, LONGEST_LOCK_PAUSE_S = 0.0002, 0.001


def begin_immediate(dbapi_connection: sqlite3.Connection, timeout: float) -> None:
    """BEGIN IMMEDIATE: take the write lock, waiting for it up to `timeout` seconds in steps of at most
    1 ms. SQLite's own busy handler waits 1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, then 100 ms between
    tries: a writer that found the lock taken waited tens of milliseconds after it was free, and a worker
    that takes it again a moment after each commit kept it waiting for one 50 or 100 ms step after
    another (the audit record of every profile read waits so). Only this statement waits so; every other
    keeps the connection's busy timeout."""
    dbapi_connection.execute("PRAGMA busy_timeout=0")  # each try answers at once; the waits are ours
    try:
        deadline: float | None = None
        pause = _FIRST_PAUSE_S
        while True:
            try:
                dbapi_connection.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as error:
                if error.sqlite_errorcode != sqlite3.SQLITE_BUSY:
                    raise
                now = time.monotonic()
                if deadline is None:
                    deadline = now + timeout
                elif now >= deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, LONGEST_LOCK_PAUSE_S)
    finally:
        dbapi_connection.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
