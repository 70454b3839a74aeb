"""The worker loop: claim log records, process their events, commit, acknowledge. Any number may run.

Effects commit before the claim is acknowledged; a crash in between redelivers the records, and the
processor drops what is already stored (dedupe by messageId), so every event takes effect once.
"""

from __future__ import annotations

import base64
import gc
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

import structlog
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from accord import metrics
from accord.consent.capture import Capture
from accord.db.engine import DEADLOCK_SQLSTATE, LONGEST_LOCK_PAUSE_S, Database, backoff, conflicted, sqlstate
from accord.ingest import quarantine
from accord.journeys import service as journeys
from accord.log.port import Delivery, EventLog
from accord.pipeline.process import Item, Outcome, StaleRead, process_events
from accord.segments import histories
from accord.segments import service as segments
from accord.segments.jobs import SEGMENTS, Backfills, SegmentJobs

log = structlog.get_logger(__name__)
RETRIES = 8  # attempts of one transaction that other workers conflict with (backoff up to 0.5 s)
# Between the transactions of a claim while yielding: the write lock stays free for two of a waiting
# writer's tries (SQLite's lock is not fair: a worker that begins again at once would mostly win it).
YIELD_PAUSE_S = 2 * LONGEST_LOCK_PAUSE_S


class Wake(Protocol):
    """What an idle worker waits on besides its poll interval: a `threading.Event`, or a socket."""

    def wait(self, timeout: float | None = None) -> bool: ...

    def clear(self) -> None: ...


@dataclass(slots=True)
class Worker:
    db: Database
    log: EventLog
    batch_size: int = 500
    # While claims come back at least half full (a backlog), each run takes twice the last, up to this
    # many events: fewer commits per event. None: runs stay at batch_size.
    max_batch_size: int | None = None
    poll_interval: float = 0.05
    wake: Wake | None = None
    consent: Capture | None = None
    # Transactions PostgreSQL aborted as deadlocked (40P01; the lock order should make it 0). None on SQLite,
    # whose writers queue for its one write lock.
    deadlocks: int = 0
    segment_sweep_seconds: float = 60.0  # when idle: segment and journey backfills; this often, the sweep
    on_commit: Callable[[], None] | None = None  # after each commit of effects: wakes the live streams
    # On SQLite a transaction holds the write lock throughout. Once another writer has committed (the API's
    # audit record of a profile read, a marketer's edit), a claim commits in transactions of at most
    # batch_size events, until none has for this many seconds: the writers wait for one such transaction
    # at most, not for a grown run.
    yield_seconds: float = 10.0
    clock: Callable[[], float] = time.monotonic
    run_size: int = field(default=0, init=False)  # events the next claim asks for
    others_wrote_at: float | None = field(default=None, init=False)  # when another writer was last seen

    def __post_init__(self) -> None:
        self.run_size = self.batch_size

    def run(self, stop: threading.Event) -> None:
        log.info(
            "worker started",
            batch_size=self.batch_size,
            max_batch_size=self.max_batch_size,
            yield_seconds=self.yield_seconds,
            page_cache_mib=self.db.page_cache_mib,
        )
        jobs = SegmentJobs(
            self.db,
            sweep_every=self.segment_sweep_seconds,
            backfills=(SEGMENTS, Backfills("journey", journeys.pending_backfills, journeys.backfill_step)),
            sweeps=[segments.sweep_step, journeys.sweep_step],
        )
        while not stop.is_set():
            try:
                handled = self.run_once()
                if handled == 0 and jobs.tick():
                    self._committed()
                    continue
            except Exception as error:  # the database went away, say: wait, then carry on
                log.warning("worker run failed; retrying", error=type(error).__name__)
                handled = 0
                stop.wait(1.0)
            if handled == 0:
                histories.prune()  # nothing opened stays past its time while no run comes
                if self.wake is not None:
                    self.wake.wait(self.poll_interval)
                    self.wake.clear()
                else:
                    stop.wait(self.poll_interval)
        log.info("worker stopped")

    def drain(self, max_runs: int = 1_000_000) -> int:
        """Process until the log is empty; returns the events handled. For tests, tools and benches."""
        total = 0
        for _ in range(max_runs):
            handled = self.run_once()
            if handled == 0:
                break
            total += handled
        return total

    def run_once(self) -> int:
        """One claim's worth of work; returns how many events it handled (0: nothing to claim, or the claim
        was given back because other workers kept conflicting with it: its records are delivered again)."""
        size = self.run_size
        with self.log.claim(size) as claim:
            self.run_size = self._next_run_size(size, sum(len(d.events) for d in claim.deliveries))
            if not claim.deliveries:
                return 0
            unreadable = [d for d in claim.deliveries if d.unreadable is not None]
            items = _items(claim.deliveries)
            try:
                with collector_paused():
                    outcome = self._process(items) if items else Outcome()
            except Contended:
                log.warning("batch given back after repeated conflicts with other workers")
                return 0
            if unreadable:
                outcome.quarantined += self._set_aside(unreadable)
            claim.acknowledge()
        _count(outcome)
        return outcome.processed + outcome.duplicates + outcome.quarantined + outcome.suppressed

    def _next_run_size(self, size: int, taken: int) -> int:
        """The next claim's size: double while the claims come back at least half full (the log holds a
        backlog), back to batch_size once one does not. Bigger runs write each index page and commit once
        for more events, so a backlog drains faster; on SQLite a run holds the write lock throughout, so
        the API's writers may wait up to a run's length meanwhile."""
        ceiling = max(self.batch_size, self.max_batch_size or self.batch_size)
        return min(size * 2, ceiling) if taken * 2 >= size else self.batch_size

    def _attempt(self, items: list[Item]) -> tuple[Outcome, int]:
        """Process `items` in one transaction, or their first batch_size while other writers are about
        (`_yielding`); returns the outcome and how many items it took. Retried while other workers
        conflict with it (a profile merged meanwhile, an identifier inserted meanwhile, a deadlock, a
        serialization failure). Contended when they still do after RETRIES; any other error is raised as
        it is."""
        lock_rows = self.db.dialect == "postgresql"
        for attempt in range(RETRIES):
            try:
                with self.db.unit_of_work() as session:
                    taken = items[: self.batch_size] if self._yielding(session) else items
                    outcome = process_events(session, taken, lock_rows=lock_rows, consent=self.consent)
                self._committed()
                return outcome, len(taken)
            except (StaleRead, DBAPIError) as error:
                if isinstance(error, DBAPIError) and sqlstate(error) == DEADLOCK_SQLSTATE:
                    self.deadlocks += 1
                if isinstance(error, DBAPIError) and not conflicted(error):
                    raise
                metrics.WORKER_RETRIES.inc()
                backoff(attempt, base=0.01)
        raise Contended(f"{len(items)} events conflicted with other workers {RETRIES} times")

    def _yielding(self, session: Session) -> bool:
        """Whether this transaction should stay at batch_size: another writer committed since this
        worker's last transaction (SQLite only), or did less than yield_seconds ago."""
        now = self.clock()
        if self.db.written_by_others(session):
            self.others_wrote_at = now
        return self.others_wrote_at is not None and now - self.others_wrote_at < self.yield_seconds

    def _committed(self) -> None:
        if self.on_commit is not None:
            self.on_commit()

    def _process(self, items: list[Item]) -> Outcome:
        """The claim's events, in one transaction or (`_yielding`) several in order; the events of a
        transaction that fails whole, and all after them, go one by one."""
        outcome = Outcome()
        while items:
            try:
                done, taken = self._attempt(items)
            except Contended:
                if len(items) == 1:
                    raise
            except Exception as error:  # a fault in one event's processing: isolate it below
                log.warning("batch failed", error=type(error).__name__)
            else:
                outcome.add(done)
                items = items[taken:]
                if items:  # the transaction gave way: so does the next begin
                    time.sleep(YIELD_PAUSE_S)
                continue
            log.warning("processing this batch's events one by one")
            self.run_size = self.batch_size  # a grown run that failed whole is not asked for again
            outcome.add(self._one_by_one(items))
            break
        return outcome

    def _one_by_one(self, items: list[Item]) -> Outcome:
        """The slow path: each event in a transaction of its own, so one poison event cannot block the rest
        and no transaction gathers the locks of many events (taken out of order, they deadlock with other
        workers). An event whose processing fails is quarantined with its error; one that other workers
        keep conflicting with is not (its data is fine): Contended, and the claim is given back."""
        outcome = Outcome()
        for item in items:
            try:
                single, _ = self._attempt([item])
            except Contended:
                raise
            except Exception as error:
                with self.db.unit_of_work() as session:
                    quarantine.put(session, item[0], item[1], error)
                outcome.quarantined += 1
                continue
            outcome.add(single)
        return outcome

    def _set_aside(self, deliveries: list[Delivery]) -> int:
        """Quarantine records that could not be read, each as one entry holding the stored bytes (base64)
        and the reason, so that the log behind them moves on and nothing is deleted unseen."""
        with self.db.unit_of_work() as session:
            for delivery in deliveries:
                log.error("event log record cannot be read; set aside in the quarantine", seq=delivery.seq)
                entry = {
                    "messageId": f"accord-log-record-{delivery.seq}",
                    "accord_unreadable_log_record": {
                        "seq": delivery.seq,
                        "payload_base64": base64.b64encode(delivery.raw).decode(),
                    },
                }
                quarantine.put(session, delivery.source_id, entry, f"UnreadableLogRecord: {delivery.unreadable}")
        return len(deliveries)


class _CollectorPause:
    """Python's cyclic collector waits while any thread is inside `collector_paused()`, and runs again (if
    it ran before) once the last one leaves. A run's events, profiles and rows live until the run ends:
    collections in the middle walked them again and again (about 4% of a backlog's drain), and once the
    run is over reference counting frees nearly all of them, so the next collection finds little. Cycles
    made meanwhile wait for that next collection."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inside = 0
        self._resume = False

    @contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._inside == 0:
                self._resume = gc.isenabled()
                gc.disable()
            self._inside += 1
        try:
            yield
        finally:
            with self._lock:
                self._inside -= 1
                if self._inside == 0 and self._resume:
                    gc.enable()


collector_paused = _CollectorPause()


class Contended(Exception):
    """Other workers kept conflicting with this work; it is given back to the log, not quarantined."""


def _items(deliveries: list[Delivery]) -> list[Item]:
    return [(d.source_id, event) for d in deliveries if d.unreadable is None for event in d.events]


def _count(outcome: Outcome) -> None:
    metrics.EVENTS_PROCESSED.inc(outcome.processed)
    metrics.EVENTS_DUPLICATE.inc(outcome.duplicates)
    metrics.EVENTS_QUARANTINED.inc(outcome.quarantined)
    metrics.EVENTS_SUPPRESSED.inc(outcome.suppressed)
    metrics.MERGES.inc(outcome.merges)
