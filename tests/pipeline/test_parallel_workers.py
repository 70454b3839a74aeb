"""Several workers on one database: no lost or doubled event, the same profiles as one worker makes."""

from __future__ import annotations

import threading
from typing import Any

from accord.pipeline.worker import Worker
from accord.runtime import Runtime
from pipeline.helpers import process, reset, send, snapshot


def overlapping_events(count: int) -> list[dict[str, Any]]:
    """Customers whose devices and ids overlap, with one hot identifier shared by many events."""
    events: list[dict[str, Any]] = []
    for i in range(count):
        event: dict[str, Any] = {
            "type": "identify" if i % 3 == 0 else "track",
            "messageId": f"m{i}",
            "timestamp": f"2026-05-01T10:{i % 60:02d}:{i % 59:02d}Z",
            "anonymousId": f"device-{i % 40}",
        }
        if i % 3 == 0:
            event["userId"] = f"user-{i % 25}"
            event["traits"] = {"n": i, "email": "shared@example.com" if i % 50 == 0 else f"u{i % 25}@example.com"}
        else:
            event["event"] = "Tick"
        events.append(event)
    return events


def test_parallel_workers_match_a_single_worker(rt: Runtime) -> None:
    events = overlapping_events(600)
    for start in range(0, len(events), 10):
        send(rt, events[start : start + 10])
    process(rt)
    expected = snapshot(rt)

    reset(rt)
    for start in range(0, len(events), 10):
        send(rt, events[start : start + 10])
    errors: list[BaseException] = []

    def work() -> None:
        try:
            Worker(db=rt.db, log=rt.log, batch_size=40).drain()
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    process(rt)  # whatever a worker left after giving up a conflict
    assert snapshot(rt) == expected
    assert rt.log.pending() == 0
