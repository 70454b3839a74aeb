"""Another transaction gets in the way of Accord's: the API answers 503 `database_busy` with Retry-After,
not 500, writes nothing, and the same request sent again passes.

On SQLite, another process holds the write lock past the busy timeout; a worker then gives its claim back
to the log whole (Contended), not quarantined, and processes it once the writer lets go. On PostgreSQL a
row lock another transaction holds is waited for, however long; what fails the request's transaction
there is a deadlock PostgreSQL aborts it to break (SQLSTATE 40P01), a serialization failure (40001, at
SERIALIZABLE) or a lock not had within a configured lock_timeout (55P03); and an insert of a key another
transaction inserted meanwhile waits for that one, then fails with a unique violation (23505) once it
commits: two writers that both found the key free (a retry then meets the key taken: 409). Those tests
make each happen for real, with connections of their own, and wait for each step on pg_stat_activity and
pg_blocking_pids, never on a sleep. tests/identity/test_concurrency.py runs workers against each other on
PostgreSQL."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url
from structlog.testing import capture_logs

from accord.audit import service as audit
from accord.audit.models import AuditRecord
from accord.db import engine, migrate
from accord.db.base import utcnow
from accord.ingest import quarantine
from accord.pipeline.worker import Worker
from accord.runtime import Runtime
from accord.segments import service as segments
from conftest import LiveAccord, make_settings, running_accord
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


GOLD = {"key": "gold", "name": "Gold", "condition": {"trait": "plan", "op": "eq", "value": "gold"}}
RENAMED = {"name": "Gold members"}
WAIT_S = 60.0  # how long a test waits for a backend to block on a lock: generous, for a loaded machine


def _outside(rt: Runtime, *, autocommit: bool = False) -> psycopg.Connection[Any]:
    """Another process's connection to Accord's database: outside its pool, without the options its URL
    may carry. Not autocommit: its first statement begins a transaction that lasts until it ends."""
    url = make_url(rt.db.url).set(drivername="postgresql", query={})
    return psycopg.connect(url.render_as_string(hide_password=False), autocommit=autocommit)


def _blocked_by(watcher: psycopg.Connection[Any], holder: int) -> int:
    """The backend that waits for a lock backend `holder` holds, once one does."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        found = watcher.execute(
            "SELECT pid FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))", (holder,)
        ).fetchone()
        if found is not None:
            return int(found[0])
        time.sleep(0.01)
    raise AssertionError(f"no backend waited for backend {holder}'s locks within {WAIT_S} s")


def _end(watcher: psycopg.Connection[Any], *connections: psycopg.Connection[Any]) -> None:
    """End the outside connections, their transactions rolled back, even one a failed test left blocked in a
    statement (its thread then ends too), and then the watcher."""
    pids = [connection.info.backend_pid for connection in connections]
    watcher.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", (pids,))
    for connection in (*connections, watcher):
        connection.close()


@contextmanager
def _live_with(backend: str, request: pytest.FixtureRequest, tmp_path: Path, options: str) -> Iterator[LiveAccord]:
    """A live Accord whose connections carry `options` in the database URL, as an operator sets
    lock_timeout or the isolation level in ACCORD_DATABASE_URL."""
    settings = make_settings(backend, tmp_path, request)
    url = make_url(settings.sqlalchemy_url()).update_query_dict({"options": options})
    rt = Runtime.create(settings.model_copy(update={"database_url": url.render_as_string(hide_password=False)}))
    try:
        migrate.upgrade(rt.db)
        with running_accord(rt) as live:
            yield live
    finally:
        rt.close()


def _created_ready(live: LiveAccord) -> None:
    """Segment gold, its backfill over: the worker no longer touches its row."""
    with live.api() as api:
        assert api.post("/api/v1/segments", json=GOLD).status_code == 201
        deadline = time.monotonic() + WAIT_S
        while api.get("/api/v1/segments/gold").json()["backfill"]["status"] != "ready":
            assert time.monotonic() < deadline, "the backfill of an empty database did not end"
            time.sleep(0.01)


def _busy(answer: httpx.Response, logs: list[dict[str, Any]], error: str, **where: str) -> None:
    """503 database_busy with Retry-After, and only the error's type logged (its message may quote data),
    with `where` it was (a constraint's name)."""
    assert answer.status_code == 503, answer.text
    assert answer.json()["code"] == "database_busy"
    assert answer.headers["Retry-After"] == "1"
    assert [entry for entry in logs if entry["log_level"] != "info"] == [
        {"event": "database busy", "error": error, "log_level": "warning", **where}
    ]


def _unchanged_then_renamed_when_sent_again(live: LiveAccord) -> None:
    """Nothing of the refused change was written (no version, no audit record), and the same request
    sent again passes."""
    with live.api() as api:
        assert api.get("/api/v1/segments/gold").json()["version"] == 1
        assert [v["version"] for v in api.get("/api/v1/segments/gold/versions").json()["data"]] == [1]
        assert _updates_audited(live) == 0
        again = api.put("/api/v1/segments/gold", json=RENAMED)
    assert again.status_code == 200, again.text
    assert (again.json()["name"], again.json()["version"]) == ("Gold members", 2)
    assert _updates_audited(live) == 1
    assert audit.verify(live.rt.db.engine, key=live.rt.signing).ok


def _updates_audited(live: LiveAccord) -> int:
    with live.rt.db.read() as session:
        count = select(func.count()).select_from(AuditRecord).where(AuditRecord.action == "segment.update")
        return int(session.scalar(count) or 0)


@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_request_postgresql_picks_as_a_deadlocks_victim_answers_503_and_passes_when_sent_again(
    live: LiveAccord,
) -> None:
    """A segment change locks the segment's row, writes its new version, then locks the audit chain's head.
    Another transaction holds the head and asks for the segment's row: a deadlock. The request must be the
    one PostgreSQL aborts, so it must close the cycle: PostgreSQL looks for a deadlock once per wait, in a
    backend that has waited deadlock_timeout (1 s by default), and aborts the one that finds it. So a third
    transaction's uncommitted row under the version's key holds the request between its two locks while the
    other asks for the segment's row; the third lets go, the request waits for the head and finds the cycle;
    the other, told to look only after a minute, never does first."""
    _created_ready(live)
    watcher = _outside(live.rt, autocommit=True)
    holder, pause = _outside(live.rt), _outside(live.rt)
    with ThreadPoolExecutor(2) as threads:
        try:
            holder.execute("SET deadlock_timeout = '60s'")
            holder.execute("SELECT seq FROM audit_chain_head WHERE id = 1 FOR UPDATE")
            pause.execute(
                "INSERT INTO segment_versions (key, version, name, description, condition, created_at, actor) "
                "VALUES ('gold', 2, 'Gold', '', NULL, now(), 'outside')"
            )
            with capture_logs() as logs, live.api() as api:
                answer = threads.submit(api.put, "/api/v1/segments/gold", json=RENAMED)
                request_pid = _blocked_by(watcher, pause.info.backend_pid)  # it has the segment's row
                wants_row = threads.submit(holder.execute, "SELECT key FROM segments WHERE key = 'gold' FOR UPDATE")
                assert _blocked_by(watcher, request_pid) == holder.info.backend_pid
                pause.rollback()  # the request goes on, to the head the holder has
                _busy(answer.result(timeout=WAIT_S), logs, "DeadlockDetected")
            assert wants_row.result(timeout=WAIT_S).fetchall() == [("gold",)]  # the request let go of it
        finally:
            _end(watcher, holder, pause)
    _unchanged_then_renamed_when_sent_again(live)


@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_request_that_waits_past_lock_timeout_answers_503_and_passes_when_sent_again(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """lock_timeout set for Accord's connections: a request that cannot have a row lock within it is refused
    as busy (SQLSTATE 55P03), after its first writes were flushed."""
    with _live_with(backend, request, tmp_path, "-c lock_timeout=100ms") as live:
        _created_ready(live)
        watcher, holder = _outside(live.rt, autocommit=True), _outside(live.rt)
        try:
            holder.execute("SELECT seq FROM audit_chain_head WHERE id = 1 FOR UPDATE")
            with capture_logs() as logs, live.api() as api:
                _busy(api.put("/api/v1/segments/gold", json=RENAMED), logs, "LockNotAvailable")
        finally:
            _end(watcher, holder)
        _unchanged_then_renamed_when_sent_again(live)


@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_request_postgresql_cannot_serialize_answers_503_and_passes_when_sent_again(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Accord's connections at SERIALIZABLE: a request waiting for a row that another transaction changes
    and commits meanwhile fails with a serialization failure (SQLSTATE 40001)."""
    with _live_with(backend, request, tmp_path, "-c default_transaction_isolation=serializable") as live:
        _created_ready(live)
        watcher, writer = _outside(live.rt, autocommit=True), _outside(live.rt)
        with ThreadPoolExecutor(1) as threads:
            try:
                writer.execute("UPDATE segments SET updated_at = updated_at WHERE key = 'gold'")
                with capture_logs() as logs, live.api() as api:
                    answer = threads.submit(api.put, "/api/v1/segments/gold", json=RENAMED)
                    _blocked_by(watcher, writer.info.backend_pid)
                    writer.commit()  # a change the request's snapshot does not see: it cannot lock the row
                    _busy(answer.result(timeout=WAIT_S), logs, "SerializationFailure")
            finally:
                _end(watcher, writer)
        _unchanged_then_renamed_when_sent_again(live)


def _created_audited(live: LiveAccord) -> list[str]:
    """The actors of the audit records of segment gold's creation."""
    with live.rt.db.read() as session:
        rows = session.scalars(
            select(AuditRecord.actor_type).where(
                AuditRecord.action == "segment.create", AuditRecord.target_id == "gold"
            )
        )
        return list(rows)


@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_create_that_races_another_for_the_same_key_answers_503_and_409_when_sent_again(live: LiveAccord) -> None:
    """Two writers create segment gold at once, the command line and the API: both find the key free, both
    insert. PostgreSQL holds the second insert on the key's unique index until the first writer commits, then
    fails it with a unique violation (SQLSTATE 23505). A passing state, as a deadlock is: 503 with
    Retry-After, nothing of the request written; sent again, it meets the service's own check: 409."""
    watcher = _outside(live.rt, autocommit=True)
    with capture_logs() as logs, live.api() as api, ThreadPoolExecutor(1) as threads:
        try:
            with live.rt.db.unit_of_work() as other:  # what `accord segment put gold --new` does, left open
                created = segments.create(
                    other,
                    key="gold",
                    name="Gold",
                    description="",
                    condition=GOLD["condition"],
                    actor="cli",
                    now=utcnow(),
                )
                audit.record_audit(
                    other,
                    key=live.rt.signing,
                    actor=audit.CLI,
                    action="segment.create",
                    target_type="segment",
                    target_id="gold",
                    details={"version": created.version},
                )
                answer = threads.submit(api.post, "/api/v1/segments", json=GOLD)
                waiting = _blocked_by(watcher, int(other.scalar(text("SELECT pg_backend_pid()"))))
                [(query,)] = watcher.execute("SELECT query FROM pg_stat_activity WHERE pid = %s", (waiting,)).fetchall()
                assert query.startswith("INSERT INTO segments "), query  # the request's, not a worker's
            # The command line's transaction committed: the request's insert fails on the key.
            _busy(answer.result(timeout=WAIT_S), logs, "UniqueViolation", constraint="pk_segments")
        finally:
            watcher.close()
        again = api.post("/api/v1/segments", json=GOLD)
        assert again.status_code == 409, again.text
        assert again.json()["code"] == "segment_exists"
        assert api.get("/api/v1/segments/gold").json()["actor"] == "cli"
        assert [v["actor"] for v in api.get("/api/v1/segments/gold/versions").json()["data"]] == ["cli"]
        assert [s["key"] for s in api.get("/api/v1/segments").json()["data"]] == ["gold"]
    assert _created_audited(live) == ["cli"]
    assert audit.verify(live.rt.db.engine, key=live.rt.signing).ok
