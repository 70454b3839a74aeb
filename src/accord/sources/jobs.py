"""Import runs started over the API: each executes in a thread of the API process.

On shutdown the threads are asked to stop at their next chunk; their runs are left `interrupted`, and
`accord imports resume RUN` (or a later request) carries them on from their checkpoint.
"""

from __future__ import annotations

import threading

import structlog

from accord.db.engine import Database
from accord.log.port import EventLog
from accord.sources import imports
from accord.sources.connectors import Input

log = structlog.get_logger(__name__)


class ImportJobs:
    def __init__(self, db: Database, event_log: EventLog) -> None:
        self.db = db
        self.log = event_log
        self._stop = threading.Event()
        self._threads: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()

    def start(self, run_id: str, source: Input) -> None:
        thread = threading.Thread(target=self._run, args=(run_id, source), name=f"accord-import-{run_id}", daemon=True)
        with self._lock:
            self._threads = {k: t for k, t in self._threads.items() if t.is_alive()}
            self._threads[run_id] = thread
        thread.start()

    def _run(self, run_id: str, source: Input) -> None:
        try:
            run = imports.Runner(self.db, self.log, stop=self._stop).execute(run_id, source)
            if run.kind == "replay":
                with self.db.unit_of_work() as session:
                    imports.mark_replayed(session, run)
        except Exception as error:  # the thread must not die silently; rows are PII, so the type only
            log.warning("import job failed", run=run_id, error=type(error).__name__)

    def wait(self, run_id: str, timeout: float | None = None) -> None:
        thread = self._threads.get(run_id)
        if thread is not None:
            thread.join(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        for thread in list(self._threads.values()):
            thread.join(timeout)
