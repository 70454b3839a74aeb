"""Several workers merging overlapping profiles at once: no deadlock, no identifier or event lost, and the
same partition as one worker gives. On PostgreSQL the workers really run in parallel (row locks); on
SQLite they take turns on the write lock."""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy import func, select

from accord.identity.models import Identity
from accord.ingest.models import QuarantinedEvent
from accord.pipeline.worker import Worker
from accord.profiles.models import ProfileEvent
from accord.runtime import Runtime
from pipeline.helpers import process, reset, send, snapshot

HOT = "hot@example.com"


def hot_events(count: int) -> list[dict[str, Any]]:
    """Many people, whose devices overlap, and one email that every tenth identify carries."""
    events: list[dict[str, Any]] = []
    for i in range(count):
        event: dict[str, Any] = {
            "type": "identify" if i % 2 == 0 else "track",
            "messageId": f"m{i}",
            "timestamp": f"2026-05-0{1 + i % 3}T10:{i % 60:02d}:{(i * 7) % 60:02d}Z",
            "anonymousId": f"device-{i % 30}",
        }
        if i % 2 == 0:
            event["userId"] = f"user-{i % 17}"
            event["traits"] = {"email": HOT if i % 10 == 0 else f"u{i % 17}@example.com", "n": i}
        else:
            event["event"] = "Tick"
        events.append(event)
    return events


def counts(rt: Runtime) -> tuple[int, int, int]:
    with rt.db.read() as session:
        return (
            int(session.scalar(select(func.count()).select_from(ProfileEvent)) or 0),
            int(session.scalar(select(func.count()).select_from(Identity)) or 0),
            int(session.scalar(select(func.count()).select_from(QuarantinedEvent)) or 0),
        )


def test_parallel_workers_with_a_hot_identifier(rt: Runtime) -> None:
    events = hot_events(480)
    # Out of time order on purpose, so that late events re-derive conflicted clusters under contention.
    shuffled = events[::-1][::2] + events[::-1][1::2]
    for start in range(0, len(shuffled), 8):
        send(rt, shuffled[start : start + 8])
    process(rt)
    expected, expected_counts = snapshot(rt), counts(rt)
    assert expected_counts == (480, 17 + 30 + 17 + 1, 0)

    reset(rt)
    for start in range(0, len(shuffled), 8):
        send(rt, shuffled[start : start + 8])
    workers = [Worker(db=rt.db, log=rt.log, batch_size=24) for _ in range(4)]
    errors: list[BaseException] = []

    def work(worker: Worker) -> None:
        try:
            worker.drain()
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=work, args=(w,)) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=240)
    assert not errors
    assert sum(w.deadlocks for w in workers) == 0
    # A claim that kept conflicting with the other workers was given back to the log, not quarantined:
    # one worker finishes it, as the next free worker would.
    process(rt)
    assert rt.log.pending() == 0
    assert counts(rt) == expected_counts  # every event and identifier stored once, nothing quarantined
    assert snapshot(rt) == expected
