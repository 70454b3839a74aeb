"""The sql event log: group commit, claims, acknowledgement, redelivery."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from accord.config import Settings
from accord.runtime import Runtime
from conftest import log_rows
from pipeline.helpers import process, send


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
