"""Another process holds the database's write lock past the busy timeout: a worker gives its claim back to
the log whole (Contended), not quarantined, and processes it once the writer lets go; the API answers 503
with Retry-After, not 500.

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
from conftest import LiveAccord
from pipeline.helpers import backlog, stored_events


def _hold(rt: Runtime) -> sqlite3.Connection:
    """Another process's writer: a connection of its own holding the write lock until it ends."""
    holder = sqlite3.connect(rt.db.engine.url.database or "", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    return holder


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_claim_that_cannot_get_the_write_lock_is_given_back_and_processed_later(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert rt.db.dialect == "sqlite"
    monkeypatch.setattr(engine, "BUSY_TIMEOUT_S", 0.05)  # each try gives up after 50 ms, not 30 s
    backlog(rt, 30)
    holder = _hold(rt)
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


@pytest.mark.parametrize("backend", ["sqlite"])
def test_the_api_answers_503_with_retry_after_while_another_writer_holds_the_database(
    live: LiveAccord, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine, "BUSY_TIMEOUT_S", 0.05)
    segment = {"key": "gold", "name": "Gold", "condition": {"trait": "plan", "op": "eq", "value": "gold"}}
    holder = _hold(live.rt)
    try:
        with live.api() as api:
            answer = api.post("/api/v1/segments", json=segment)
        assert answer.status_code == 503
        assert answer.json()["code"] == "database_busy"
        assert answer.headers["Retry-After"] == "1"
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    with live.api() as api:
        assert api.post("/api/v1/segments", json=segment).status_code == 201  # the same request, now free
