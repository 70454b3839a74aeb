"""The sql event log: group commit, claims, acknowledgement, redelivery."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from accord.config import Settings
from accord.runtime import Runtime
from conftest import log_rows
from pipeline.helpers import process, send, snapshot


def test_concurrent_appends_are_all_durable(rt: Runtime) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda i: send(rt, [{"type": "track", "userId": f"u{i}", "event": "E"}]), range(200)))
    assert log_rows(rt) == 200
    assert rt.log.pending() == 200


def test_processed_records_leave_the_log(rt: Runtime) -> None:
    send(rt, [{"type": "track", "userId": "u1", "event": "E"}, {"type": "track", "userId": "u2", "event": "E"}])
    assert process(rt) == 2
    assert log_rows(rt) == 0
    assert rt.log.pending() == 0


def test_an_unacknowledged_claim_is_delivered_again(rt: Runtime) -> None:
    send(rt, [{"type": "track", "userId": "u1", "event": "E", "messageId": "m1"}])
    seen: list[str] = []

    def die_while_processing() -> None:
        with rt.log.claim(100) as claim:
            seen.extend(d.events[0]["messageId"] for d in claim.deliveries)
            raise RuntimeError("the worker died before acknowledging")

    with pytest.raises(RuntimeError):
        die_while_processing()
    assert seen == ["m1"]
    assert rt.log.pending() == 1
    with rt.log.claim(100) as claim:
        assert [d.events[0]["messageId"] for d in claim.deliveries] == ["m1"]
        claim.acknowledge()
    assert rt.log.pending() == 0


def test_a_claim_stays_within_its_size(rt: Runtime) -> None:
    for i in range(5):
        send(rt, [{"type": "track", "userId": f"u{i}", "event": "E"} for _ in range(10)])
    with rt.log.claim(25) as claim:
        assert sum(len(d.events) for d in claim.deliveries) == 20
    with rt.log.claim(1) as claim:  # a record bigger than the claim still comes whole
        assert sum(len(d.events) for d in claim.deliveries) == 10


def test_sqlite_keeps_the_log_in_a_file_of_its_own(settings: Settings) -> None:
    if settings.database_url:
        assert settings.log_url() == settings.sqlalchemy_url()
    else:
        assert settings.log_url().endswith("accord-log.db")
        assert settings.sqlalchemy_url().endswith("accord.db")


def _fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The files synced from now on, in order (os.fsync, the edge to the disk, recorded and then called)."""
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return synced


def test_acknowledgements_wait_until_the_workers_commits_are_on_disk(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not rt.log.acknowledge_when_durable(rt.db, every=3600):  # the thread waits: the test turns it
        assert rt.db.dialect == "postgresql"  # a claim is deleted in its own transaction there
        return
    with rt.db.read() as session:
        assert session.execute(text("PRAGMA synchronous")).scalar() == 1  # NORMAL: no fsync per commit
    send(rt, [{"type": "track", "userId": "u1", "event": "E"}])
    send(rt, [{"type": "track", "userId": "u2", "event": "E"}])
    synced = _fsyncs(monkeypatch)
    database = str(make_url(rt.db.url).database)

    assert process(rt, batch_size=1) == 2  # two claims, the second past the first's undeleted record

    assert log_rows(rt) == 2  # processed, not deleted yet
    assert rt.log.pending() == 2
    assert database + "-wal" not in synced
    with rt.log.claim(100) as claim:
        assert claim.deliveries == []  # nothing is handed out twice meanwhile
    assert rt.log.delete_acknowledged() == 2
    assert synced[:2] == [database + "-wal", database]  # the worker's commits were synced first
    assert log_rows(rt) == 0
    assert rt.log.delete_acknowledged() == 0


def test_records_wait_for_the_disk_to_come_back(rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    if not rt.log.acknowledge_when_durable(rt.db, every=3600):
        return  # PostgreSQL: the test above checks there is nothing to wait for
    send(rt, [{"type": "track", "userId": "u1", "event": "E"}])
    assert process(rt) == 1

    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        rt.log.delete_acknowledged()
    assert log_rows(rt) == 1  # not deleted: its effects are not known to be on disk
    monkeypatch.undo()
    assert rt.log.delete_acknowledged() == 1
    assert log_rows(rt) == 0


def test_records_not_deleted_when_the_worker_dies_come_back_and_change_nothing(settings: Settings, rt: Runtime) -> None:
    if not rt.log.acknowledge_when_durable(rt.db, every=3600):
        return  # PostgreSQL: a claim is deleted in its own transaction
    events = [
        {"type": "identify", "userId": f"u{i}", "messageId": f"m{i}", "traits": {"plan": "gold"}} for i in range(5)
    ]
    send(rt, events)
    assert process(rt) == 5
    before = snapshot(rt)

    restarted = Runtime.create(settings)  # the worker died before deleting: a new process finds them
    try:
        assert restarted.log.pending() == 5
        assert process(restarted) == 5  # delivered again, dropped as already stored
        assert snapshot(restarted) == before
        assert restarted.log.pending() == 0
    finally:
        restarted.close()


def test_closing_the_log_deletes_what_was_acknowledged(rt: Runtime) -> None:
    if not rt.log.acknowledge_when_durable(rt.db, every=3600):
        return
    send(rt, [{"type": "track", "userId": "u1", "event": "E"}])
    assert process(rt) == 1
    rt.log.close()  # as a worker that stops
    assert log_rows(rt) == 0


def test_the_thread_deletes_acknowledged_records_on_its_own(rt: Runtime) -> None:
    if not rt.log.acknowledge_when_durable(rt.db, every=0.01):
        return
    send(rt, [{"type": "track", "userId": "u1", "event": "E"}])
    assert process(rt) == 1
    deadline = time.monotonic() + 30
    while log_rows(rt):
        assert time.monotonic() < deadline, "the acknowledgements were not deleted"
        time.sleep(0.01)


def test_a_deletion_asked_for_while_the_thread_deletes_waits_for_it(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A caller (closing, a benchmark counting what is left) finds nothing acknowledged left behind."""
    if not rt.log.acknowledge_when_durable(rt.db, every=3600):
        return
    send(rt, [{"type": "track", "userId": "u1", "event": "E"}])
    assert process(rt) == 1
    syncing, go_on = threading.Event(), threading.Event()
    real = os.fsync

    def slow_disk(fd: int) -> None:  # the thread's sync, held until the test lets it go on
        syncing.set()
        go_on.wait(30)
        real(fd)

    monkeypatch.setattr(os, "fsync", slow_disk)
    thread = threading.Thread(target=rt.log.delete_acknowledged)  # as the acknowledgements' thread
    thread.start()
    assert syncing.wait(30)
    caller = threading.Thread(target=rt.log.delete_acknowledged)
    caller.start()
    caller.join(0.5)
    assert caller.is_alive()  # waits for the deletion under way instead of returning with nothing to do
    go_on.set()
    caller.join(30)
    thread.join(30)
    assert log_rows(rt) == 0
