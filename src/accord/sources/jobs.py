"""Import runs started over the API: each executes in a thread of the API process.

On shutdown the threads are asked to stop at their next chunk; their runs are left `interrupted`, and
`accord imports resume RUN` (or a later request) carries them on from their checkpoint.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import structlog
from sqlalchemy import or_, select, update

from accord.db.base import utcnow
from accord.db.engine import Database
from accord.log.port import EventLog
from accord.sources import imports
from accord.sources.connectors import Input, InputError
from accord.sources.models import ImportRun

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

    def start_task(self, name: str, task: Callable[[], object]) -> None:
        """Run `task` (a SQL computed trait's or a schedule's run asked for over the API) in a thread."""

        def guarded() -> None:
            try:
                task()
            except Exception as error:  # recorded with the trait or schedule; the type only here (PII)
                log.warning("background run failed", task=name, error=type(error).__name__)

        thread = threading.Thread(target=guarded, name=f"accord-{name}", daemon=True)
        with self._lock:
            self._threads = {k: t for k, t in self._threads.items() if t.is_alive()}
            self._threads[name] = thread
        thread.start()

    def _run(self, run_id: str, source: Input) -> None:
        try:
            run = imports.Runner(self.db, self.log, stop=self._stop).execute(run_id, source)
            if run.kind == "replay":
                with self.db.unit_of_work() as session:
                    imports.mark_replayed(session, run)
        except Exception as error:  # the thread must not die silently; rows are PII, so the type only
            log.warning("import job failed", run=run_id, error=type(error).__name__)

    def resume_interrupted(self) -> None:
        """Carry on, in the background, the upload and replay runs that no process is running (the API
        process that ran them stopped). Each is claimed atomically, so that several API processes
        resume each run once; an upload whose file is on another host is left to that host."""
        threading.Thread(target=self._resume_all, name="accord-import-resume", daemon=True).start()

    def _resume_all(self) -> None:
        try:
            now = utcnow()
            with self.db.read() as session:
                candidates = session.scalars(
                    select(ImportRun.id).where(
                        ImportRun.kind.in_(("upload", "replay")),
                        ImportRun.status.in_(("queued", "running", "interrupted")),
                    )
                ).all()
            for run_id in candidates:
                if self._stop.is_set():
                    return
                with self.db.unit_of_work() as session:
                    claimed = session.execute(
                        update(ImportRun)
                        .where(
                            ImportRun.id == run_id,
                            ImportRun.status.in_(("queued", "running", "interrupted")),
                            # Not heard of for a while: an interrupted run, a running one whose heartbeat
                            # stopped, or one queued long ago (a fresh one belongs to the process starting it).
                            or_(
                                ImportRun.status == "interrupted",
                                (ImportRun.status == "running") & (ImportRun.heartbeat_at < now - imports.STALE_AFTER),
                                (ImportRun.status == "queued") & (ImportRun.created_at < now - imports.STALE_AFTER),
                            ),
                        )
                        .values(status="running", heartbeat_at=now)
                    )
                    if claimed.rowcount != 1:  # type: ignore[attr-defined]
                        continue
                    run = session.get(ImportRun, run_id)
                    assert run is not None
                    try:
                        source = imports.input_for(session, run)
                    except (imports.ImportFailed, InputError):
                        run.status = "interrupted"  # its file is elsewhere: leave it to its host
                        continue
                log.info("resuming import run", run=run_id)
                self.start(run_id, source)
        except Exception as error:  # resuming is best effort; `accord imports resume` remains
            log.warning("resuming import runs failed", error=type(error).__name__)

    def wait(self, run_id: str, timeout: float | None = None) -> None:
        thread = self._threads.get(run_id)
        if thread is not None:
            thread.join(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        for thread in list(self._threads.values()):
            thread.join(timeout)
