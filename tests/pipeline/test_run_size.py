"""A worker's runs grow while the log holds a backlog and shrink back once it is drained: bigger runs
commit once for more events. Every event is stored either way."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from accord.config import Settings
from accord.consent.capture import Capture
from accord.ingest import quarantine
from accord.pipeline.worker import Worker
from accord.runtime import Runtime
from pipeline.helpers import backlog, send, stored_events


def _runs(worker: Worker) -> list[int]:
    sizes = []
    while handled := worker.run_once():
        sizes.append(handled)
    return sizes


def test_runs_double_while_the_backlog_lasts_then_start_small_again(rt: Runtime) -> None:
    backlog(rt, 1_500)
    worker = Worker(db=rt.db, log=rt.log, batch_size=100, max_batch_size=400)

    assert _runs(worker) == [100, 200, 400, 400, 400]
    assert worker.run_size == 100  # the empty claim: back to the batch size

    backlog(rt, 30, first=1_500)  # a trickle: less than half a run
    assert _runs(worker) == [30]
    backlog(rt, 60, first=1_530)  # half a run or more: the next one is bigger
    assert _runs(worker) == [60]
    assert worker.run_size == 100  # the claim after it found nothing
    assert stored_events(rt) == 1_590


def test_a_grown_run_that_fails_whole_is_followed_by_a_small_one(rt: Runtime) -> None:
    """A consent event naming no known purpose fails its run, which goes one event at a time and
    quarantines it; the claims after it start again from the batch size."""
    backlog(rt, 800)
    bad = {"type": "track", "event": "Consent Updated", "userId": "u1", "messageId": "bad"}
    send(rt, [bad | {"properties": {"purpose": "no.such.purpose", "status": "given"}}])
    backlog(rt, 700, first=801)
    worker = Worker(
        db=rt.db,
        log=rt.log,
        batch_size=100,
        max_batch_size=400,
        consent=Capture(key=rt.signing, settings=rt.settings),
    )

    # The fourth run (391 events: records of 10 around the bad one) failed whole and went one by one.
    assert _runs(worker) == [100, 200, 400, 391, 100, 200, 110]
    assert stored_events(rt) == 1_500
    with rt.db.read() as session:
        assert [q.message_id for q in quarantine.waiting(session)] == ["bad"]


@pytest.mark.parametrize("ceiling", [None, 50, 100])
def test_runs_stay_at_the_batch_size_without_a_larger_ceiling(rt: Runtime, ceiling: int | None) -> None:
    backlog(rt, 300)
    worker = Worker(db=rt.db, log=rt.log, batch_size=100, max_batch_size=ceiling)

    assert _runs(worker) == [100, 100, 100]
    assert stored_events(rt) == 300


@pytest.mark.parametrize("setting", ["worker_batch_size", "worker_max_batch_size", "worker_cache_mib"])
@pytest.mark.parametrize("value", [0, -5])
def test_sizes_below_one_are_refused(setting: str, value: int) -> None:
    with pytest.raises(ValidationError, match=setting):
        Settings(**{setting: value})  # type: ignore[arg-type]
