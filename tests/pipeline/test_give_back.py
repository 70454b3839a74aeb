"""A claim whose transactions keep failing because another writer holds the database is given back to
the log whole (Contended), not quarantined: its events are processed once the writer lets go.

SQLite only: there a writer that cannot have the write lock within its timeout fails. On PostgreSQL a row
lock held by another transaction is waited for, and the conflicts that fail a transaction (a key another
worker inserted meanwhile, a deadlock) pass once retried; tests/identity/test_concurrency.py runs workers
against each other there."""

from __future__ import annotations

import sqlite3

import pytest

from accord.db import engine
from accord.ingest import quarantine
from accord.pipeline.worker import Worker
from accord.runtime import Runtime
from pipeline.helpers import backlog, stored_events


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_claim_that_cannot_get_the_write_lock_is_given_back_and_processed_later(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert rt.db.dialect == "sqlite"
    monkeypatch.setattr(engine, "BUSY_TIMEOUT_S", 0.05)  # each try gives up after 50 ms, not 30 s
    backlog(rt, 30)
    holder = sqlite3.connect(rt.db.engine.url.database or "", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process's writer, holding the lock throughout
    worker = Worker(db=rt.db, log=rt.log, batch_size=10)
    try:
        assert worker.run_once() == 0  # given back after RETRIES tries of its first transaction
        assert worker.run_once() == 0  # and again: the same records, still waiting
        assert rt.log.pending() == 30
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    with rt.db.read() as session:
        assert quarantine.waiting(session) == []  # nothing set aside: the data was never at fault
    assert worker.drain() == 30
    assert stored_events(rt) == 30
    assert rt.log.pending() == 0
