"""Group commit for the audit records of reads: a read of personal data changes nothing, so its record
rides in no transaction of its own choosing. One writer thread gathers the records of concurrent reads
and appends them in one transaction; each read is answered once its record is durable.

Waiting happens on a future, not on the database: on SQLite a worker's transaction holds the write lock
for a batch at a time, and readers blocked on that lock in the request thread pool would starve every
other request (ingest included) of threads.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from accord.audit.service import Actor, record_audit
from accord.consent.keys import SigningKey
from accord.db.base import utcnow
from accord.db.engine import Database

_STOP = object()


@dataclass(frozen=True, slots=True)
class Pending:
    actor: Actor
    action: str
    target_type: str | None
    target_id: str | None
    details: dict[str, Any] = field(default_factory=dict)


class AuditWriter:
    def __init__(self, db: Database, key: SigningKey, *, max_group: int = 512) -> None:
        self.db = db
        self.key = key
        self.max_group = max_group
        self._queue: queue.SimpleQueue[tuple[Pending, Future[None]] | object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, record: Pending) -> Future[None]:
        """Queue a record for the next group commit; the future resolves once it is durable."""
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._loop, name="accord-audit-writer", daemon=True)
                    self._thread.start()
        future: Future[None] = Future()
        self._queue.put((record, future))
        return future

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout=10)
            self._thread = None

    def _loop(self) -> None:
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
            self._write(group)  # type: ignore[arg-type]
            if stop:
                return

    def _write(self, group: list[tuple[Pending, Future[None]]]) -> None:
        try:
            with self.db.unit_of_work() as session:
                now = utcnow()
                for record, _ in group:
                    record_audit(
                        session,
                        key=self.key,
                        actor=record.actor,
                        action=record.action,
                        target_type=record.target_type,
                        target_id=record.target_id,
                        details=record.details,
                        now=now,
                    )
        except Exception as error:  # every waiting read must hear of it (and answer 500); the writer lives on
            for _, future in group:
                future.set_exception(error)
            return
        for _, future in group:
            future.set_result(None)
