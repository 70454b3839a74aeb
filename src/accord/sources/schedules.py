"""Schedules: recurring imports of a table or query, and recurring computed traits.

Each API process (`accord up`, `accord serve`) checks every `ACCORD_SCHEDULE_POLL_SECONDS` for schedules
that are due. A due schedule is claimed by moving its `next_at` on in one conditional UPDATE, so that of
several processes exactly one runs it. A table schedule names the environment variable holding the
database URL: the URL, with its credentials, is never stored.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from accord.db.base import utcnow
from accord.db.engine import Database
from accord.ingest.spec import contains_nul
from accord.log.port import EventLog
from accord.profiles.computed import ComputedTraitError
from accord.sources import imports
from accord.sources.mapping import Mapping, parse_mapping
from accord.sources.models import Schedule
from accord.sources.sql_traits import SqlTraitError, unquoted

log = structlog.get_logger(__name__)
NAME = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]{0,99}$")
MIN_EVERY = 60
MAX_EVERY = 366 * 24 * 3600
# A failed table run's result ends with this and the run's id: its error is read there (decrypted).
ERROR_WITH_RUN = "the error is kept with the run: accord import show "


class ScheduleError(ValueError):
    """A schedule that cannot be kept; the message says why (with an HTTP status and a code for the API)."""

    def __init__(self, message: str, status: int = 422, code: str = "invalid_schedule") -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _check(name: str, every_seconds: int) -> None:
    if not NAME.match(name):
        raise ScheduleError("a schedule's name is 1 to 100 letters, digits, _, . or -")
    if not MIN_EVERY <= every_seconds <= MAX_EVERY:
        raise ScheduleError(f"every must be from {MIN_EVERY // 60} minute to 366 days")


def _add(
    session: Session, name: str, kind: str, spec: dict[str, Any], every_seconds: int, now: datetime, actor: str
) -> Schedule:
    _check(name, every_seconds)
    if session.get(Schedule, name) is not None:
        raise ScheduleError(f"a schedule named {name!r} exists already", 409, "schedule_exists")
    row = Schedule(
        name=name,
        kind=kind,
        spec=spec,
        every_seconds=every_seconds,
        next_at=now,
        enabled=True,
        created_at=now,
        version=1,
        updated_at=now,
        actor=actor[:100],
    )
    session.add(row)
    session.flush()
    return row


def table_spec(
    *,
    url_env: str,
    table: str | None,
    query: str | None,
    cursor: str | None,
    mapping: Mapping,
    source_id: str,
) -> dict[str, Any]:
    """A table schedule's stored spec: the URL's environment variable's name, never the URL."""
    if not ENV_NAME.match(url_env):
        raise ScheduleError("the URL's environment variable is upper-case letters, digits and _")
    if url_env.startswith("ACCORD_"):
        raise ScheduleError("the URL's environment variable may not be one of Accord's own settings (ACCORD_...)")
    if (table is None) == (query is None):
        raise ScheduleError("give a table or a query (one of them)")
    if table is not None and not 0 < len(table) <= 200:
        raise ScheduleError("a table's name is 1 to 200 characters")
    if query is not None and not 0 < len(query) <= 100_000:
        raise ScheduleError("a query is 1 to 100,000 characters")
    if cursor is not None and not 0 < len(cursor) <= 200:
        raise ScheduleError("a cursor column's name is 1 to 200 characters")
    if contains_nul([table, query, cursor, mapping.document()]):
        raise ScheduleError("a table schedule may not hold a NUL character (\\u0000)")
    return {
        "url_env": url_env,
        "table": table,
        "query": query,
        "cursor": cursor,
        "mapping": mapping.document(),
        "source_id": source_id,
    }


def add_table(
    session: Session,
    *,
    name: str,
    every_seconds: int,
    url_env: str,
    table: str | None,
    query: str | None,
    cursor: str | None,
    mapping: Mapping,
    source_id: str,
    now: datetime,
    actor: str = "cli",
) -> Schedule:
    spec = table_spec(url_env=url_env, table=table, query=query, cursor=cursor, mapping=mapping, source_id=source_id)
    return _add(session, name, "table", spec, every_seconds, now, actor)


def _sql_trait(session: Session, trait: str) -> None:
    from accord.sources import sql_traits

    if not sql_traits.exists(session, trait):
        raise ScheduleError(
            f"no SQL computed trait {trait[:100]!r}: define it first (accord computed-trait, /api/v1/sql-traits)",
            404,
            "sql_trait_not_found",
        )


def add_computed(
    session: Session, *, name: str, every_seconds: int, trait: str, now: datetime, actor: str = "cli"
) -> Schedule:
    """Run the SQL computed trait `trait` (as it stands at each run) every `every_seconds`."""
    _sql_trait(session, trait)
    return _add(session, name, "computed", {"trait": trait}, every_seconds, now, actor)


def get(session: Session, name: str) -> Schedule:
    row = session.get(Schedule, name) if NAME.match(name) else None
    if row is None:
        raise ScheduleError(f"no schedule named {name[:100]!r}", 404, "schedule_not_found")
    return row


def change(
    session: Session,
    *,
    name: str,
    every_seconds: int | None,
    enabled: bool | None,
    spec: dict[str, Any] | None,
    actor: str,
    now: datetime,
    expected_version: int | None = None,
) -> Schedule:
    """Change a schedule (a new version when anything differs). A computed schedule's spec is {"trait"}."""
    row = get(session, name)
    if expected_version is not None and expected_version != row.version:
        raise ScheduleError(
            f"{name!r} is at version {row.version}, not {expected_version}: read it again", 409, "version_conflict"
        )
    if every_seconds is not None:
        _check(name, every_seconds)
    if spec is not None and row.kind == "computed":
        _sql_trait(session, str(spec.get("trait")))
    changed = False
    if every_seconds is not None and every_seconds != row.every_seconds:
        row.every_seconds = every_seconds
        row.next_at = min(row.next_at, now + timedelta(seconds=every_seconds))
        changed = True
    if enabled is not None and enabled != row.enabled:
        row.enabled = enabled
        changed = True
    if spec is not None and spec != row.spec:
        row.spec = spec
        changed = True
    if changed:
        row.version += 1
        row.updated_at = now
        row.actor = actor[:100]
    session.flush()
    return row


def list_schedules(session: Session) -> Sequence[Schedule]:
    return session.scalars(select(Schedule).order_by(Schedule.name)).all()


def remove(session: Session, name: str) -> None:
    session.delete(get(session, name))
    session.flush()


@dataclass(frozen=True, slots=True)
class Outcome:
    name: str
    status: str  # done, failed
    result: str


def run_due(db: Database, event_log: EventLog, *, data_dir: Path, now: datetime | None = None) -> list[Outcome]:
    """Run every schedule that is due and that this process claims; returns what each did."""
    now = now or utcnow()
    with db.read() as session:
        due = [
            (s.name, s.next_at)
            for s in session.scalars(select(Schedule).where(Schedule.enabled.is_(True), Schedule.next_at <= now))
        ]
    outcomes = [_claim_and_run(db, event_log, name, next_at, data_dir, now) for name, next_at in due]
    return [o for o in outcomes if o is not None]


def run_now(db: Database, event_log: EventLog, *, name: str, data_dir: Path, now: datetime | None = None) -> Outcome:
    """Run one schedule now, whether due or not (and then every N minutes from now)."""
    now = now or utcnow()
    with db.read() as session:
        next_at = get(session, name).next_at
    outcome = _claim_and_run(db, event_log, name, next_at, data_dir, now)
    if outcome is None:
        raise ScheduleError(f"schedule {name!r} was started by someone else just now", 409, "run_in_progress")
    return outcome


def _claim_and_run(
    db: Database, event_log: EventLog, name: str, next_at: datetime, data_dir: Path, now: datetime
) -> Outcome | None:
    with db.unit_of_work() as session:
        row = session.get(Schedule, name)
        if row is None:
            return None
        claimed = session.execute(
            update(Schedule)
            .where(Schedule.name == name, Schedule.next_at == next_at)
            .values(next_at=now + timedelta(seconds=row.every_seconds), last_started_at=now)
        )
        if claimed.rowcount != 1:  # type: ignore[attr-defined]
            return None  # another process took it
        kind, spec = row.kind, dict(row.spec)
    try:
        status, result = _run(db, event_log, kind, spec, data_dir, now)
    except (SqlTraitError, ComputedTraitError) as error:  # ours: a trait's run masks what DuckDB quoted itself
        status, result = "failed", f"{type(error).__name__}: {str(error)[:500]}"
    except Exception as error:  # a schedule's failure is recorded, never raised into the poller
        # Kept in clear: quoted parts of the message (a value the run choked on, say) are left out.
        status, result = "failed", f"{type(error).__name__}: {unquoted(str(error))[:500]}"
    with db.unit_of_work() as session:
        session.execute(
            update(Schedule).where(Schedule.name == name).values(last_status=status, last_result=result[:2000])
        )
    return Outcome(name, status, result)


def _run(
    db: Database, event_log: EventLog, kind: str, spec: dict[str, Any], data_dir: Path, now: datetime
) -> tuple[str, str]:
    if kind == "computed":
        from accord.sources import sql_traits

        done = sql_traits.run_now(db, event_log, key=spec["trait"], folder=data_dir / "imports", now=now)
        return "done", (
            f"run {done.run_id}: rows {done.rows}, appended {done.appended}, unchanged {done.unchanged}, "
            f"skipped {done.skipped}"
        )
    from accord.sources import tables

    url = os.environ.get(str(spec["url_env"]))
    if not url:
        return "failed", f"the environment variable {spec['url_env']} holding the database URL is not set"
    run = tables.run_table_import(
        db,
        event_log,
        source_id=spec["source_id"],
        mapping=parse_mapping(spec["mapping"]),
        spec=tables.TableSpec(url=url, table=spec.get("table"), query=spec.get("query"), cursor=spec.get("cursor")),
        data_dir=data_dir,
    )
    summary = f"run {run.id}: read {run.read}, imported {run.imported}, rejected {run.rejected}"
    # The error stays with the run only, sealed under its key (it may quote a value of the table): not copied.
    if run.error:
        summary += f"; {ERROR_WITH_RUN}{run.id}"
    return ("done" if run.status == "done" else "failed"), summary


class SchedulePoller:
    """The thread of an API process that runs due schedules."""

    def __init__(
        self, db: Database, event_log: EventLog, *, data_dir: Path, every: float, rejects_days: int = 30
    ) -> None:
        self.db = db
        self.rejects_days = rejects_days
        self.log = event_log
        self.data_dir = data_dir
        self.every = every
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.every <= 0:
            return
        self._thread = threading.Thread(target=self._loop, name="accord-schedules", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            try:
                run_due(self.db, self.log, data_dir=self.data_dir)
                with self.db.unit_of_work() as session:
                    imports.purge_rejects(session, finished_before=utcnow() - timedelta(days=self.rejects_days))
            except Exception as error:  # the database went away, say: try again next time
                log.warning("schedules poll failed", error=type(error).__name__)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
