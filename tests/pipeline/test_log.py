"""The sql event log: group commit, claims, acknowledgement and retention."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from accord.db.base import utcnow
from accord.pipeline.worker import Worker
from accord.runtime import Runtime
from conftest import log_rows
from pipeline.helpers import process, send


def test_concurrent_appends_are_all_durable(rt: Runtime) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda i: send(rt, [{"type": "track", "userId": f"u{i}", "event": "E"}]), range(200)))
    assert log_rows(rt) == 200
    with rt.db.read() as session:
        assert rt.log.pending(session) == 200


def test_purge_drops_only_processed_records_past_retention(rt: Runtime) -> None:
    send(rt, [{"type": "track", "userId": "u1", "event": "Old"}])
    process(rt)
    send(rt, [{"type": "track", "userId": "u1", "event": "Waiting"}])
    with rt.db.unit_of_work() as session:
        assert rt.log.purge(session, retention=timedelta(days=7)) == 0
    with rt.db.unit_of_work() as session:
        assert rt.log.purge(session, retention=timedelta(days=7), now=utcnow() + timedelta(days=8)) == 1
    assert log_rows(rt) == 1
    with rt.db.read() as session:
        assert rt.log.pending(session) == 1


def test_worker_purge_uses_its_retention(rt: Runtime) -> None:
    send(rt, [{"type": "track", "userId": "u1", "event": "E"}])
    process(rt)
    assert Worker(db=rt.db, log=rt.log, retention=timedelta(days=1)).purge() == 0
    assert Worker(db=rt.db, log=rt.log, retention=timedelta(seconds=-1)).purge() == 1
