"""The worker loop: claim log records, process their events, acknowledge, commit. Any number may run."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from datetime import timedelta

import structlog
from sqlalchemy.exc import DBAPIError, IntegrityError

from accord import metrics
from accord.db.engine import Database
from accord.ingest import quarantine
from accord.log.port import Delivery, EventLog
from accord.pipeline.process import Item, Outcome, StaleRead, process_events

log = structlog.get_logger(__name__)
RETRIES = 5


@dataclass(slots=True)
class Worker:
    db: Database
    log: EventLog
    batch_size: int = 500
    poll_interval: float = 0.05
    wake: threading.Event | None = None
    retention: timedelta = timedelta(days=7)
    purge_every: float = 300.0

    def run(self, stop: threading.Event) -> None:
        log.info("worker started", batch_size=self.batch_size)
        next_purge = time.monotonic()
        while not stop.is_set():
            if time.monotonic() >= next_purge:
                self.purge()
                next_purge = time.monotonic() + self.purge_every
            try:
                handled = self.run_once()
            except Exception:
                log.exception("worker run failed; retrying")
                handled = 0
                stop.wait(1.0)
            if handled == 0:
                if self.wake is not None:
                    self.wake.wait(self.poll_interval)
                    self.wake.clear()
                else:
                    stop.wait(self.poll_interval)
        log.info("worker stopped")

    def purge(self) -> int:
        """Drop processed log records past the retention; the event store keeps the events."""
        try:
            with self.db.unit_of_work() as session:
                removed = self.log.purge(session, retention=self.retention)
        except DBAPIError as error:  # another worker purging at the same time is harmless
            log.warning("log purge failed", error=type(error).__name__)
            return 0
        if removed:
            log.info("log purged", records=removed)
        return removed

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
        """One transaction's worth of work; returns how many events it handled (0: log empty)."""
        for attempt in range(RETRIES):
            try:
                return self._batch()
            except (StaleRead, IntegrityError, DBAPIError) as error:
                if isinstance(error, DBAPIError) and not isinstance(error, IntegrityError) and not _transient(error):
                    log.warning("batch failed", error=type(error).__name__)
                    break
                metrics.WORKER_RETRIES.inc()
                time.sleep(random.uniform(0, 0.01 * 2**attempt))
            except Exception as error:  # a fault in one event's processing: isolate it below
                log.warning("batch failed", error=type(error).__name__)
                break
        log.warning("processing this batch's events one by one")
        return self._one_by_one()

    def _batch(self) -> int:
        with self.db.unit_of_work() as session:
            deliveries = self.log.claim(session, self.batch_size)
            if not deliveries:
                return 0
            outcome = process_events(session, _items(deliveries), lock_rows=self.db.dialect == "postgresql")
            self.log.acknowledge(session, deliveries)
        _count(outcome)
        return outcome.processed + outcome.duplicates + outcome.quarantined

    def _one_by_one(self) -> int:
        """The slow path: each event in its own savepoint, so one poison event cannot block the rest."""
        outcome = Outcome()
        with self.db.unit_of_work() as session:
            deliveries = self.log.claim(session, self.batch_size)
            for source_id, event in _items(deliveries):
                try:
                    with session.begin_nested():
                        single = process_events(
                            session, [(source_id, event)], lock_rows=self.db.dialect == "postgresql"
                        )
                except Exception as error:
                    quarantine.put(session, source_id, event, error)
                    outcome.quarantined += 1
                    continue
                outcome.processed += single.processed
                outcome.duplicates += single.duplicates
                outcome.quarantined += single.quarantined
                outcome.merges += single.merges
            self.log.acknowledge(session, deliveries)
        _count(outcome)
        return outcome.processed + outcome.duplicates + outcome.quarantined


def _items(deliveries: list[Delivery]) -> list[Item]:
    return [(d.source_id, event) for d in deliveries for event in d.events]


def _transient(error: DBAPIError) -> bool:
    text = str(error.orig).lower()
    return any(word in text for word in ("deadlock", "could not serialize", "locked", "busy"))


def _count(outcome: Outcome) -> None:
    metrics.EVENTS_PROCESSED.inc(outcome.processed)
    metrics.EVENTS_DUPLICATE.inc(outcome.duplicates)
    metrics.EVENTS_QUARANTINED.inc(outcome.quarantined)
    metrics.MERGES.inc(outcome.merges)
