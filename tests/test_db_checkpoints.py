"""The worker's database copies its write-ahead log into the database file on a thread of its own, not in
the commits on the way from an acknowledged event to its change being visible (SQLite); PostgreSQL has
nothing to do."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import make_url

from accord.runtime import Runtime

PAGES = 2_000  # twice the log size at which SQLite's own checkpoint would run in the commit


def _write_pages(rt: Runtime) -> None:
    with rt.db.unit_of_work() as session:
        session.execute(text("CREATE TABLE IF NOT EXISTS scratch (b BLOB)"))
        session.execute(
            text(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :pages) "
                "INSERT INTO scratch SELECT randomblob(4000) FROM n"
            ),
            {"pages": PAGES},
        )


def _database_file(rt: Runtime) -> Path:
    return Path(str(make_url(rt.db.url).database))


def test_commits_leave_the_log_to_the_checkpoint_thread(rt: Runtime) -> None:
    checkpoints = rt.db.checkpoint_in_background(every=3600)  # the thread waits: the test turns it
    if rt.db.dialect == "postgresql":
        assert checkpoints is None
        return
    assert checkpoints is not None
    assert rt.db.checkpoint_in_background() is checkpoints  # once per database
    with rt.db.unit_of_work() as session:
        assert session.execute(text("PRAGMA wal_autocheckpoint")).scalar() == 0
    size = _database_file(rt).stat().st_size
    _write_pages(rt)
    assert _database_file(rt).stat().st_size == size  # committed, in the log, not copied by the commit

    busy, frames, copied = checkpoints.checkpoint()

    assert (busy, copied) == (0, frames)
    assert frames >= PAGES
    assert _database_file(rt).stat().st_size >= size + PAGES * 4000
    with rt.db.read() as session:
        assert session.execute(text("SELECT count(*) FROM scratch")).scalar() == PAGES


def test_the_thread_copies_the_log_on_its_own(rt: Runtime) -> None:
    if rt.db.checkpoint_in_background(every=0.01) is None:
        return  # PostgreSQL: the test above checks there is nothing
    size = _database_file(rt).stat().st_size
    _write_pages(rt)
    deadline = time.monotonic() + 30
    while _database_file(rt).stat().st_size < size + PAGES * 4000:
        assert time.monotonic() < deadline, "the checkpoint thread did not copy the log"
        time.sleep(0.01)


def test_a_checkpoint_that_fails_is_logged_once_and_tried_again(rt: Runtime, caplog) -> None:  # type: ignore[no-untyped-def]
    checkpoints = rt.db.checkpoint_in_background(every=3600)
    if checkpoints is None:
        return
    holder = sqlite3.connect(_database_file(rt), isolation_level=None)
    try:  # an exclusive lock: the checkpoint cannot even read the log
        holder.execute("PRAGMA locking_mode=EXCLUSIVE")
        holder.execute("BEGIN EXCLUSIVE")
        holder.execute("CREATE TABLE IF NOT EXISTS scratch (b BLOB)")
        failures = [checkpoints.checkpoint() for _ in range(2)]  # each waits out its busy timeout, 1 s
        holder.execute("ROLLBACK")
    finally:
        holder.close()
    assert failures == [(1, -1, -1)] * 2
    assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1
    assert checkpoints.checkpoint()[0] == 0


def test_the_event_logs_acknowledgements_leave_the_log_file_to_its_checkpoint_thread(rt: Runtime) -> None:
    if rt.log.db is rt.db:  # PostgreSQL: the log is a table of the one database
        assert rt.log.db.checkpoint_in_background() is None
        return
    assert rt.log.db.checkpoint_in_background(every=3600) is not None
    acks = rt.log._ack_db()  # the acknowledgements' own connection (synchronous=NORMAL)
    with acks.unit_of_work() as session:
        assert session.execute(text("PRAGMA wal_autocheckpoint")).scalar() == 0
    with rt.db.unit_of_work() as session:  # the main database checkpoints in its commits, as by default
        assert session.execute(text("PRAGMA wal_autocheckpoint")).scalar() == 1000


def test_the_workers_page_cache(rt: Runtime) -> None:
    """`keep_pages` sets each new connection's page cache (SQLite's default is 2 MiB); PostgreSQL keeps its
    own settings."""
    rt.db.keep_pages(64)
    rt.db.keep_pages(64)  # once is enough; again changes nothing
    with rt.db.unit_of_work() as session:
        if rt.db.dialect == "postgresql":
            return
        assert session.execute(text("PRAGMA cache_size")).scalar() == -64 * 1024  # negative: KiB
    rt.db.keep_pages(8)
    with rt.db.read() as session:
        assert session.execute(text("PRAGMA cache_size")).scalar() == -8 * 1024
