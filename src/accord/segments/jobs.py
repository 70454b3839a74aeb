"""Work the worker loop does when the log is idle: backfills, a chunk at a time, and the periodic sweep
that lets time-window memberships lapse without new events. Segments' by default; journeys register
theirs through the same two hooks (`backfills`, `sweeps`), run after the segments' (they read memberships)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import structlog
from sqlalchemy.orm import Session

from accord.db.base import utcnow
from accord.db.engine import Database
from accord.segments import service

log = structlog.get_logger(__name__)
CHECK_EVERY = 0.5  # seconds between looks for pending backfills when there are none


@dataclass(frozen=True, slots=True)
class Backfills:
    """One kind of backfill: what is pending, and one chunk of it."""

    kind: str
    pending: Callable[[Session], list[str]]
    step: Callable[..., service.Progress]  # (session, key, *, now) -> Progress


Sweep = Callable[..., str | None]  # (session, *, now, after) -> the last profile id done, or None at the end
SEGMENTS = Backfills("segment", service.pending_backfills, service.backfill_step)


@dataclass(slots=True)
class SegmentJobs:
    db: Database
    sweep_every: float = 60.0
    backfills: Sequence[Backfills] = (SEGMENTS,)
    sweeps: Sequence[Sweep] = field(default_factory=lambda: [service.sweep_step])
    _next_check: float = 0.0
    _next_sweep: float = 0.0
    _sweeping: bool = False
    _sweep: int = 0  # which of `sweeps` runs
    _sweep_after: str | None = None

    def __post_init__(self) -> None:
        self._next_sweep = time.monotonic() + self.sweep_every

    def tick(self) -> bool:
        """Do one chunk of due work; True if there was some (call again soon)."""
        clock = time.monotonic()
        if clock >= self._next_check:
            with self.db.unit_of_work() as session:
                for kind in self.backfills:
                    pending = kind.pending(session)
                    if pending:
                        step = kind.step(session, pending[0], now=utcnow())
                        if step.finished:
                            log.info("backfilled", kind=kind.kind, key=step.key, profiles=step.done)
                        return True
            self._next_check = clock + CHECK_EVERY
        if self.sweep_every > 0 and self.sweeps and (self._sweeping or clock >= self._next_sweep):
            with self.db.unit_of_work() as session:
                last = self.sweeps[self._sweep](session, now=utcnow(), after=self._sweep_after)
            self._sweep_after = last
            if last is None:
                self._sweep += 1
                if self._sweep >= len(self.sweeps):
                    self._sweep = 0
                    self._sweeping = False
                    self._next_sweep = clock + self.sweep_every
                    return False
            self._sweeping = True
            return True
        return False
