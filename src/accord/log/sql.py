"""The sql adapter of the event log: a table in the main database, written with group commit.

Appends from many requests are gathered by one writer thread and committed together, so each
acknowledged request costs a share of one fsync rather than one of its own.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from datetime import datetime, timedelta

import orjson
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session

from accord.db.base import utcnow
from accord.db.engine import Database
from accord.ingest.spec import encode_events
from accord.log.models import LogRecord
from accord.log.port import Delivery, NewRecord

_STOP = object()


class SqlEventLog:
    def __init__(self, db: Database, *, max_group: int = 256) -> None:
        self.db = db
        self.max_group = max_group
        self._queue: queue.SimpleQueue[tuple[NewRecord, Future[None]] | object] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._lock = threading.Lock()
        self.appended = threading.Event()  # set after each commit: wakes an in-process worker

    # -- appending -------------------------------------------------------------------------------
    def append(self, record: NewRecord) -> None:
        self.submit(record).result()

    def submit(self, record: NewRecord) -> Future[None]:
        """Queue a record for the next group commit; the future resolves once it is durable."""
        self._ensure_writer()
        future: Future[None] = Future()
        self._queue.put((record, future))
        return future

    def _ensure_writer(self) -> None:
        if self._writer is None:
            with self._lock:
                if self._writer is None:
                    self._writer = threading.Thread(target=self._write_loop, name="accord-log-writer", daemon=True)
                    self._writer.start()

    def close(self) -> None:
        if self._writer is not None:
            self._queue.put(_STOP)
            self._writer.join(timeout=10)
            self._writer = None

    def _write_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            group = [item]
            stop = False
            while len(group) < self.max_group:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    stop = True
                    break
                group.append(more)
            self._write_group(group)  # type: ignore[arg-type]
            if stop:
                return

    def _write_group(self, group: list[tuple[NewRecord, Future[None]]]) -> None:
        try:
            rows = [
                {
                    "source_id": record.source_id,
                    "received_at": record.received_at,
                    "event_count": len(record.events),
                    "payload": encode_events(record.events),
                }
                for record, _ in group
            ]
            with self.db.unit_of_work() as session:
                session.execute(insert(LogRecord), rows)
        except Exception as error:  # every waiting request must hear of the failure; the writer lives on
            for _, future in group:
                future.set_exception(error)
            return
        for _, future in group:
            future.set_result(None)
        self.appended.set()

    # -- consuming -------------------------------------------------------------------------------
    def claim(self, session: Session, max_events: int) -> list[Delivery]:
        query = (
            select(LogRecord.seq, LogRecord.source_id, LogRecord.event_count, LogRecord.payload)
            .where(LogRecord.processed_at.is_(None))
            .order_by(LogRecord.seq)
            .limit(min(max(1, max_events), 64))
        )
        if self.db.dialect == "postgresql":
            query = query.with_for_update(skip_locked=True)
        deliveries: list[Delivery] = []
        total = 0
        for seq, source_id, count, payload in session.execute(query):
            if deliveries and total + count > max_events:
                break
            deliveries.append(Delivery(seq=seq, source_id=source_id, events=orjson.loads(payload)))
            total += count
        return deliveries

    def acknowledge(self, session: Session, deliveries: list[Delivery]) -> None:
        if deliveries:
            session.execute(
                update(LogRecord).where(LogRecord.seq.in_([d.seq for d in deliveries])).values(processed_at=utcnow())
            )

    def pending(self, session: Session) -> int:
        total = session.scalar(
            select(func.coalesce(func.sum(LogRecord.event_count), 0)).where(LogRecord.processed_at.is_(None))
        )
        return int(total or 0)

    def purge(self, session: Session, *, retention: timedelta, now: datetime | None = None) -> int:
        """Delete processed records older than the retention; returns how many went."""
        cutoff = (now or utcnow()) - retention
        result = session.execute(
            delete(LogRecord).where(LogRecord.processed_at.is_not(None), LogRecord.processed_at < cutoff)
        )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]
