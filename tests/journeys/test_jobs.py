"""The worker's idle jobs run journey backfills after the segments' and the journeys' sweep after the
segments' (SQLite and PostgreSQL)."""

from __future__ import annotations

import time
from datetime import timedelta

from accord.db.base import utcnow
from accord.journeys import service as journeys
from accord.journeys.models import JourneyPosition
from accord.runtime import Runtime
from accord.segments import service as segments
from accord.segments.jobs import SEGMENTS, Backfills, SegmentJobs
from journeys.test_stage_machine import TIMED, profile_of, run, track


def jobs(rt: Runtime) -> SegmentJobs:
    """The jobs as the worker loop builds them."""
    return SegmentJobs(
        rt.db,
        sweep_every=0.001,
        backfills=(SEGMENTS, Backfills("journey", journeys.pending_backfills, journeys.backfill_step)),
        sweeps=[segments.sweep_step, journeys.sweep_step],
    )


def test_idle_jobs_backfill_then_sweep_journeys(rt: Runtime) -> None:
    started = utcnow() - timedelta(hours=3)
    run(rt, [track("ra", "A", 0)], now=started)  # before the journey exists
    with rt.db.unit_of_work() as session:
        journeys.create(session, key="timed", name="t", description="", definition=TIMED, actor="t", now=started)
    idle = jobs(rt)
    for _ in range(50):
        time.sleep(0.002)
        if not idle.tick():
            with rt.db.read() as session:
                if journeys.get(session, "timed").status == "ready":
                    break
    with rt.db.read() as session:
        row = session.get(JourneyPosition, ("timed", profile_of(rt, "ra")))
        assert row is not None
        # Backfilled now, then swept: in stage "a" since the backfill, so not yet over its 2 h limit.
        assert (row.stage, row.state) == ("a", "active")
        row_id = row.profile_id
    with rt.db.unit_of_work() as session:  # as if it had entered the stage three hours ago
        found = session.get(JourneyPosition, ("timed", row_id))
        assert found is not None
        found.stage_entered_at = found.entered_at = started
    for _ in range(20):
        time.sleep(0.002)
        idle.tick()
    with rt.db.read() as session:
        found = session.get(JourneyPosition, ("timed", row_id))
        assert found is not None
        assert (found.state, found.reason) == ("exited", "time_limit")
        assert found.ended_at == started + timedelta(hours=2)
