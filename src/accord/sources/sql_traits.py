"""SQL computed traits kept as definitions: define, change (a new version), delete, preview and run now.
The API, the CLI and the schedules call these; accord.profiles.computed runs the query.

A SQL trait's key is the trait it sets. It may not be the key of a declarative computed trait (accord
computed, /api/v1/computed-traits): a profile would then show two different things under one name, so
each side refuses the other's keys.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from accord.db.engine import Database
from accord.log.port import EventLog
from accord.profiles import computed, private
from accord.sources.models import Schedule, SqlTrait

KEY_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,99}$"
KEY = re.compile(KEY_PATTERN)
MAX_DESCRIPTION = 2000
STALE_RUN = timedelta(hours=1)  # a claim older than this belongs to a process that died
PREVIEWS = threading.BoundedSemaphore(1)
RUNS = threading.Lock()
QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


def unquoted(message: str) -> str:
    """An error message with its quoted parts (the values a query or run choked on) replaced by '...'."""
    return QUOTED.sub("'...'", message)


class SqlTraitError(Exception):
    """A request about SQL traits that cannot be met: an HTTP status, a code and a message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def get(session: Session, key: str) -> SqlTrait:
    row = session.get(SqlTrait, key) if KEY.match(key) else None
    if row is None:
        raise SqlTraitError(404, "sql_trait_not_found", f"no SQL computed trait {key[:100]!r}")
    return row


def listing(session: Session) -> Sequence[SqlTrait]:
    return session.scalars(select(SqlTrait).order_by(SqlTrait.key)).all()


def exists(session: Session, key: str) -> bool:
    return bool(KEY.match(key)) and session.get(SqlTrait, key) is not None


def _refuse_declarative(session: Session, key: str) -> None:
    from accord.segments.models import ComputedTrait

    if session.get(ComputedTrait, key) is not None:
        raise SqlTraitError(
            409,
            "trait_key_conflict",
            f"{key!r} is the key of a declarative computed trait (accord computed, /api/v1/computed-traits); "
            "give the SQL computed trait another key, or delete that one first",
        )


def save(
    session: Session,
    *,
    key: str,
    sql: str,
    pii: bool,
    description: str | None,
    actor: str,
    now: datetime,
    create: bool | None,
    expected_version: int | None = None,
) -> SqlTrait:
    """Define (`create` True), change (False) or either (None) a SQL trait. A change that alters anything
    is a new version; saving what is stored already changes nothing. A trait declared `pii` here (new, or
    not `pii` before) is personal data from now on: the values profiles hold already move to their
    encrypted traits in this transaction (accord.profiles.private)."""
    try:
        query = computed.check(key, sql)
    except computed.ComputedTraitError as error:
        raise SqlTraitError(422, "invalid_sql_trait", str(error)) from None
    if description is not None and len(description) > MAX_DESCRIPTION:
        raise SqlTraitError(422, "invalid_sql_trait", f"a description is at most {MAX_DESCRIPTION} characters")
    if description is not None and "\x00" in description:
        raise SqlTraitError(422, "invalid_sql_trait", "a description may not hold a NUL character (\\u0000)")
    row = session.get(SqlTrait, key)
    was_pii = row is not None and row.pii
    if create is True and row is not None:
        raise SqlTraitError(409, "sql_trait_exists", f"SQL computed trait {key!r} exists; change it with PUT")
    if create is False and row is None:
        raise SqlTraitError(404, "sql_trait_not_found", f"no SQL computed trait {key[:100]!r}")
    if row is None:
        _refuse_declarative(session, key)
        row = SqlTrait(
            key=key,
            sql=query,
            pii=pii,
            description=description or "",
            version=1,
            created_at=now,
            updated_at=now,
            actor=actor[:100],
        )
        session.add(row)
    else:
        if expected_version is not None and expected_version != row.version:
            raise SqlTraitError(
                409, "version_conflict", f"{key!r} is at version {row.version}, not {expected_version}: read it again"
            )
        wanted = (query, pii, row.description if description is None else description)
        if wanted != (row.sql, row.pii, row.description):
            row.sql, row.pii, row.description = wanted
            row.version += 1
            row.updated_at = now
            row.actor = actor[:100]
    session.flush()
    if row.pii and not was_pii:
        private.seal_stored(session, [key])
    return row


def schedules_of(session: Session, key: str) -> list[str]:
    return [
        s.name
        for s in session.scalars(select(Schedule).where(Schedule.kind == "computed").order_by(Schedule.name))
        if s.spec.get("trait") == key
    ]


def remove(session: Session, *, key: str) -> None:
    row = get(session, key)
    users = schedules_of(session, key)
    if users:
        raise SqlTraitError(
            409, "sql_trait_in_use", f"SQL computed trait {key!r} is run by schedule {', '.join(users[:10])}"
        )
    session.delete(row)
    session.flush()


def preview(db: Database, *, sql: str, masked: bool, folder: Path, limit: int) -> list[tuple[str | None, Any]]:
    """The first rows of a query. Each preview copies the whole view, so a process makes one at a time and
    refuses another meanwhile (429) rather than queueing snapshots."""
    if not PREVIEWS.acquire(blocking=False):
        raise SqlTraitError(429, "preview_busy", "another preview is running in this process; try again shortly")
    try:
        return computed.preview_computed_trait(db, sql=sql, folder=folder, masked=masked, limit=limit)
    except computed.ComputedTraitError as error:
        raise SqlTraitError(422, "invalid_sql_trait", str(error)) from None
    finally:
        PREVIEWS.release()


@dataclass(frozen=True, slots=True)
class Claimed:
    key: str
    version: int
    sql: str
    pii: bool
    run_id: str


def claim(db: Database, key: str, *, now: datetime) -> Claimed:
    """Take the trait for one run (404 if it is unknown, 409 if a run of it is under way). A trait declared
    `pii` first has any value still stored in clear moved to the encrypted traits: one a worker wrote while
    the trait was being declared so."""
    with db.unit_of_work() as session:
        row = get(session, key)
        taken = session.execute(
            update(SqlTrait)
            .where(
                SqlTrait.key == key,
                or_(SqlTrait.running_since.is_(None), SqlTrait.running_since < now - STALE_RUN),
            )
            .values(running_since=now)
        )
        if taken.rowcount != 1:  # type: ignore[attr-defined]
            raise SqlTraitError(409, "run_in_progress", f"a run of {key!r} is under way; try again when it is done")
        moved = private.seal_stored(session, [row.key]) if row.pii else 0
        claimed = Claimed(row.key, row.version, row.sql, row.pii, computed.new_run_id())
    if moved:
        db.checkpoint_wal()  # no older page with the values in clear stays behind (SQLite)
    return claimed


def run(db: Database, log: EventLog, claimed: Claimed, *, folder: Path, now: datetime) -> computed.ComputedRun:
    """Run a claimed trait to its end; the outcome (counts, or the error) is kept with the trait."""
    try:
        with RUNS:  # one snapshot at a time per process: runs asked for together wait their turn
            done = computed.run_computed_trait(
                db,
                log,
                name=claimed.key,
                sql=claimed.sql,
                folder=folder,
                now=now,
                pii=claimed.pii,
                run_id=claimed.run_id,
            )
    except computed.ComputedTraitError as error:
        # DuckDB's messages quote the values they choke on ("Could not convert string 'ann@...'"): a trait
        # that reads personal data keeps them out of what it stores (auditors read it).
        message = unquoted(str(error)) if claimed.pii else str(error)
        _finish(db, claimed, now, "failed", {"version": claimed.version, "error": message[:500]})
        raise computed.ComputedTraitError(message) from None
    except Exception as error:
        _finish(db, claimed, now, "failed", {"version": claimed.version, "error": type(error).__name__})
        raise
    result = {
        "version": claimed.version,
        "rows": done.rows,
        "appended": done.appended,
        "unchanged": done.unchanged,
        "skipped": done.skipped,
        "seconds": done.seconds,
    }
    _finish(db, claimed, now, "done", result)
    return done


def _finish(db: Database, claimed: Claimed, now: datetime, status: str, result: dict[str, Any]) -> None:
    with db.unit_of_work() as session:
        session.execute(
            update(SqlTrait)
            .where(SqlTrait.key == claimed.key)
            .values(
                running_since=None,
                last_run_id=claimed.run_id,
                last_run_at=now,
                last_status=status,
                last_result=result,
            )
        )


def run_now(db: Database, log: EventLog, *, key: str, folder: Path, now: datetime) -> computed.ComputedRun:
    """Claim and run, as the CLI and the schedules do."""
    return run(db, log, claim(db, key, now=now), folder=folder, now=now)
