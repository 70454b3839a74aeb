"""A worker gives way to other writers. On SQLite a transaction holds the write lock throughout, so while
another writer is about (the API process's audit record of each profile read) a worker commits its claims
in transactions of its batch size: the writer waits for one of those at most, not for a grown run. Once
no other writer has committed for `yield_seconds`, a transaction holds a whole claim again. On PostgreSQL
writers do not wait for a worker's transaction, and nothing changes."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass

import pytest
from sqlalchemy import func, select

from accord.audit import service as audit
from accord.audit.models import AuditRecord
from accord.audit.writer import AuditWriter, Pending
from accord.consent.capture import Capture
from accord.db.engine import Database
from accord.ingest import quarantine
from accord.pipeline.worker import Worker
from accord.runtime import Runtime
from pipeline.helpers import backlog, send, stored_events


@dataclass
class Clock:
    now: float = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def reader(rt: Runtime) -> Iterator[AuditWriter]:
    """The audit writer of an API process: a pool of its own on the same database."""
    other = Database(rt.db.url, keyring=rt.db.keyring)
    writer = AuditWriter(other, rt.signing)
    try:
        yield writer
    finally:
        writer.close()
        other.dispose()


ACTOR = audit.Actor("token", "tok_agent", "agent", "127.0.0.1")


def _read_a_profile(writer: AuditWriter) -> None:
    writer.submit(Pending(ACTOR, "profile.read", "profile", "p1")).result(timeout=60)


def _commits(rt: Runtime) -> tuple[list[int], Worker]:
    """A worker (batch 100, up to 400, a clock of the test's) and the events each of its commits stored."""
    sizes: list[int] = []
    stored = [0]

    def committed() -> None:
        now = stored_events(rt)
        sizes.append(now - stored[0])
        stored[0] = now

    worker = Worker(
        db=rt.db,
        log=rt.log,
        batch_size=100,
        max_batch_size=400,
        clock=Clock(),
        consent=Capture(key=rt.signing, settings=rt.settings),
        on_commit=committed,
    )
    return sizes, worker


def test_transactions_stay_at_the_batch_size_while_another_writer_is_about(rt: Runtime, reader: AuditWriter) -> None:
    backlog(rt, 1_500)
    sizes, worker = _commits(rt)

    assert worker.run_once() == 100
    _read_a_profile(reader)  # an agent opens a customer while the backlog drains
    assert [worker.run_once() for _ in range(2)] == [200, 400]  # claims grow as before
    assert isinstance(worker.clock, Clock)
    worker.clock.now = 9.9  # no other write since: still within yield_seconds (10)
    assert worker.run_once() == 400
    worker.clock.now = 10.0
    assert worker.run_once() == 400

    if rt.db.dialect == "sqlite":
        assert sizes == [*[100] * 11, 400]  # 100, then 200, 400 and 400 in transactions of 100
    else:
        assert sizes == [100, 200, 400, 400, 400]
    assert stored_events(rt) == 1_500
    report = audit.verify(rt.db.engine, key=rt.signing)
    assert report.ok
    assert report.records == 1


def test_the_window_counts_from_when_the_other_write_was_seen(rt: Runtime, reader: AuditWriter) -> None:
    backlog(rt, 1_500)
    sizes, worker = _commits(rt)
    assert isinstance(worker.clock, Clock)

    assert [worker.run_once() for _ in range(2)] == [100, 200]  # no other writer: one commit each
    _read_a_profile(reader)
    worker.clock.now = 8.0  # the worker's next transaction sees the write
    assert worker.run_once() == 400
    worker.clock.now = 17.9
    assert worker.run_once() == 400
    worker.clock.now = 18.0
    assert worker.run_once() == 400

    if rt.db.dialect == "sqlite":
        assert sizes == [100, 200, *[100] * 8, 400]
    else:
        assert sizes == [100, 200, 400, 400, 400]
    assert stored_events(rt) == 1_500


def test_a_writer_waiting_meanwhile_gets_in_between_the_transactions_of_a_claim(
    rt: Runtime, reader: AuditWriter
) -> None:
    """A read that comes while a long claim is under way has its record stored before the claim's last
    transaction, not after the whole claim. (Here the writer is a thread of the worker's process; the pause
    between transactions that lets another process's writer in is measured by bench/backlog.py.)"""
    backlog(rt, 100)
    records: list[int] = []  # audit records stored, at each of the worker's commits
    waiting: list[Future[None]] = []

    def committed() -> None:
        with rt.db.read() as session:
            records.append(int(session.scalar(select(func.count()).select_from(AuditRecord)) or 0))
        if len(records) == 2:  # the claim's first transaction: a read comes, and waits for the lock
            waiting.append(reader.submit(Pending(ACTOR, "profile.read", "profile", "p2")))

    worker = Worker(db=rt.db, log=rt.log, batch_size=100, max_batch_size=800, on_commit=committed)
    assert worker.run_once() == 100
    _read_a_profile(reader)
    backlog(rt, 800, first=100)
    worker.run_size = 800
    assert worker.run_once() == 800
    waiting[0].result(timeout=60)

    if rt.db.dialect == "sqlite":
        assert len(records) == 9  # 100, then 800 in transactions of 100
        assert records[-1] == 2
        assert records.index(2) < len(records) - 1  # the read's record was stored before the claim's last commit
    else:
        assert len(records) == 2


def test_a_failing_transaction_of_a_yielded_claim_goes_one_by_one(rt: Runtime, reader: AuditWriter) -> None:
    """A consent event naming no known purpose, in the claim's second transaction: the first stays
    committed, the events from the failed one on go one at a time, the bad one is quarantined."""
    backlog(rt, 250)
    bad = {"type": "track", "event": "Consent Updated", "userId": "u1", "messageId": "bad"}
    send(rt, [bad | {"properties": {"purpose": "no.such.purpose", "status": "given"}}])
    backlog(rt, 50, first=250)
    sizes, worker = _commits(rt)

    assert worker.run_once() == 100
    _read_a_profile(reader)
    # 191 events: records of 10 and the bad one, up to the claim's 200.
    assert worker.run_once() == 191
    assert worker.run_size == 100  # a transaction failed whole: the next claim is small
    assert worker.run_once() == 10

    if rt.db.dialect == "sqlite":
        assert sizes == [100, 100, *[1] * 90, 10]
    else:
        assert sizes == [100, *[1] * 190, 10]
    assert stored_events(rt) == 300
    with rt.db.read() as session:
        assert [q.message_id for q in quarantine.waiting(session)] == ["bad"]


def test_written_by_others_sees_other_connections_commits_only(rt: Runtime) -> None:
    other = Database(rt.db.url, keyring=rt.db.keyring)
    checkpoints = other.engine.raw_connection() if rt.db.dialect == "sqlite" else None

    def write(db: Database, message_id: str) -> None:
        with db.unit_of_work() as session:
            quarantine.put(session, "src", {"messageId": message_id}, "a write")

    try:

        def asks() -> bool:
            with rt.db.unit_of_work() as session:
                return rt.db.written_by_others(session)

        assert asks() is False  # a connection's first question
        write(rt.db, "own")
        assert asks() is False  # its own commit
        write(other, "other")
        assert asks() is (rt.db.dialect == "sqlite")
        assert asks() is False  # once told
        with other.unit_of_work():
            pass  # a transaction that changes nothing
        if checkpoints is not None:
            checkpoints.cursor().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        assert asks() is False
    finally:
        if checkpoints is not None:
            checkpoints.close()
        other.dispose()
