"""Segment work the worker loop does when the log is idle: backfills, a chunk at a time, and the periodic
sweep that lets time-window memberships lapse without new events."""

from __future__ import annotations

import time
from dataclasses import dataclass

import structlog

from accord.db.base import utcnow
from accord.db.engine import Database
from accord.segments import service

log = structlog.get_logger(__name__)
CHECK_EVERY = 0.5  # seconds between looks for pending backfills when there are none


@dataclass(slots=True)
class SegmentJobs:
    db: Database
    sweep_every: float = 60.0
    _next_check: float = 0.0
    _next_sweep: float = 0.0
    _sweeping: bool = False
    _sweep_after: str | None = None

    def __post_init__(self) -> None:
        self._next_sweep = time.monotonic() + self.sweep_every

    def tick(self) -> bool:
        """Do one chunk of due work; True if there was some (call again soon)."""
        clock = time.monotonic()
        if clock >= self._next_check:
            with self.db.unit_of_work() as session:
                pending = service.pending_backfills(session)
                if pending:
                    step = service.backfill_step(session, pending[0], now=utcnow())
                    if step.finished:
                        log.info("segment backfilled", segment=step.key, profiles=step.done)
                    return True
            self._next_check = clock + CHECK_EVERY
        if self.sweep_every > 0 and (self._sweeping or clock >= self._next_sweep):
            with self.db.unit_of_work() as session:
                last = service.sweep_step(session, now=utcnow(), after=self._sweep_after)
            self._sweeping = last is not None
            self._sweep_after = last
            if last is None:
                self._next_sweep = clock + self.sweep_every
            return self._sweeping
        return False
