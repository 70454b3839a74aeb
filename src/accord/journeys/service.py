"""Journeys as configuration: save (versioned, checked), delete, read; backfill and sweep; positions,
timelines and funnels."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from accord.db.engine import analyze_if_stale
from accord.journeys import definition as definitions
from accord.journeys import machine
from accord.journeys.models import Journey, JourneyPosition, JourneyTransition, JourneyVersion
from accord.segments import conditions
from accord.segments import evaluate as segment_evaluate
from accord.segments import service as segments
from accord.segments.conditions import ConditionError

KEY = segments.KEY
BACKFILL_CHUNK = segments.BACKFILL_CHUNK


class JourneyError(ValueError):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def check_key(key: str) -> None:
    if not KEY.match(key):
        raise JourneyError(
            422, "invalid_journey", "a journey key is 1-100 of a-z, 0-9, _ . - and starts with a letter or digit"
        )


def check_definition(session: Session, document: Any) -> dict[str, Any]:
    """The definition in its stored form; ConditionError (with a JSON path) if it cannot be used: malformed,
    or naming a segment, computed trait or consent purpose that does not exist."""
    found = definitions.parse(document)
    for path, node in definitions.parts(found):
        try:
            # The segments' own check: a journey is read by no segment, so there is no cycle to find.
            segments.check_condition(session, "", conditions.dump(node))
        except ConditionError as error:
            raise ConditionError(path + error.path[1:], error.message) from None
    return definitions.dump(found)


def _next_version(session: Session, key: str) -> int:
    latest = session.scalar(select(func.max(JourneyVersion.version)).where(JourneyVersion.key == key))
    return int(latest or 0) + 1


def _version(row: Journey, now: datetime) -> JourneyVersion:
    return JourneyVersion(
        key=row.key,
        version=row.version,
        name=row.name,
        description=row.description,
        definition=row.definition,
        created_at=now,
        actor=row.actor,
    )


def create(
    session: Session, *, key: str, name: str, description: str, definition: Any, actor: str, now: datetime
) -> Journey:
    check_key(key)
    if session.get(Journey, key) is not None:
        raise JourneyError(409, "journey_exists", f"journey {key!r} exists; change it with PUT")
    stored = check_definition(session, definition)
    row = Journey(
        key=key,
        name=name or key,
        description=description,
        version=_next_version(session, key),
        definition=stored,
        status="backfilling",
        backfill_after=None,
        backfill_done=0,
        backfill_total=segment_evaluate.count_profiles(session),
        created_at=now,
        updated_at=now,
        actor=actor[:100],
    )
    session.add(row)
    session.add(_version(row, now))
    session.flush()
    return row


def change(
    session: Session,
    *,
    key: str,
    name: str | None,
    description: str | None,
    definition: Any | None,
    actor: str,
    now: datetime,
) -> Journey:
    """A new version. A changed definition backfills again: positions in stages that still exist are kept
    (and only move forward in the new order); positions in stages it no longer has are evaluated afresh."""
    row = get(session, key, lock=True)
    if definition is not None:
        stored = check_definition(session, definition)
        if stored != row.definition:
            row.definition = stored
            row.status = "backfilling"
            row.backfill_after = None
            row.backfill_done = 0
            row.backfill_total = segment_evaluate.count_profiles(session)
    if name is not None:
        row.name = name or key
    if description is not None:
        row.description = description
    row.version = _next_version(session, key)
    row.updated_at = now
    row.actor = actor[:100]
    session.add(_version(row, now))
    session.flush()
    return row


def remove(session: Session, *, key: str, actor: str, now: datetime) -> int:
    """Delete a journey and its positions (its transitions stay on the timelines). Returns how many
    positions went."""
    row = get(session, key, lock=True)
    session.add(
        JourneyVersion(
            key=key,
            version=_next_version(session, key),
            name=row.name,
            description=row.description,
            definition=None,
            created_at=now,
            actor=actor[:100],
        )
    )
    gone = session.execute(delete(JourneyPosition).where(JourneyPosition.journey_key == key))
    session.delete(row)
    session.flush()
    return int(getattr(gone, "rowcount", 0) or 0)


def get(session: Session, key: str, *, lock: bool = False) -> Journey:
    query = select(Journey).where(Journey.key == key)
    if lock and session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update()
    row = session.scalar(query) if KEY.match(key) else None
    if row is None:
        raise JourneyError(404, "journey_not_found", f"no journey {key[:100]!r}")
    return row


def listing(session: Session) -> Sequence[Journey]:
    return session.scalars(select(Journey).order_by(Journey.key)).all()


def versions(session: Session, key: str) -> Sequence[JourneyVersion]:
    rows = (
        session.scalars(
            select(JourneyVersion).where(JourneyVersion.key == key).order_by(JourneyVersion.version.desc())
        ).all()
        if KEY.match(key)
        else []
    )
    if not rows:
        raise JourneyError(404, "journey_not_found", f"no journey {key[:100]!r}")
    return rows


def counts(session: Session, keys: Sequence[str]) -> dict[str, dict[str, int]]:
    """{journey: {state: positions}}."""
    p = JourneyPosition
    rows = session.execute(
        select(p.journey_key, p.state, func.count())
        .where(p.journey_key.in_(list(keys)))
        .group_by(p.journey_key, p.state)
    )
    found: dict[str, dict[str, int]] = {}
    for key, state, n in rows:
        found.setdefault(key, {})[state] = int(n)
    return found


def readers(session: Session, *, segment: str | None = None, computed: str | None = None) -> list[str]:
    """The journeys whose definition reads this segment (or computed trait)."""
    found = []
    for row in listing(session):
        refs = definitions.references(definitions.parse(row.definition))
        if (segment is not None and segment in refs.segments) or (computed is not None and computed in refs.computed):
            found.append(row.key)
    return found


def restart_backfills(session: Session, keys: Sequence[str]) -> None:
    """Evaluate these journeys for every profile again (something they read changed: a segment's or a
    computed trait's definition). Workers run journey backfills after the segments', so they read the
    memberships the segments' own backfills wrote."""
    for key in keys:
        row = get(session, key, lock=True)
        row.status = "backfilling"
        row.backfill_after = None
        row.backfill_done = 0
        row.backfill_total = segment_evaluate.count_profiles(session)
    session.flush()


# --- backfill and sweep -----------------------------------------------------------------------------------


def backfill_step(session: Session, key: str, *, now: datetime, limit: int = BACKFILL_CHUNK) -> segments.Progress:
    """Evaluate the journey for the next `limit` profiles (in id order) and record the progress."""
    row = get(session, key, lock=True)
    if row.status != "backfilling":
        return segments.Progress(key, row.backfill_done, row.backfill_total, True)
    analyze_if_stale(session, ("profiles", "events"))  # what the walk's plans read, as a segment's backfill
    ids, last, walked = segment_evaluate.profiles_after(session, row.backfill_after, limit)
    segments.lock_profiles(session, ids)
    if ids:
        machine.refresh(session, {pid: {key} for pid in ids}, now)
    row.backfill_done += walked
    end = walked < limit
    if last is not None:
        row.backfill_after = last
    if end:
        row.status = "ready"
        row.backfill_total = row.backfill_done
    elif row.backfill_done > row.backfill_total:
        row.backfill_total = row.backfill_done
    session.flush()
    return segments.Progress(key, row.backfill_done, row.backfill_total, row.status == "ready")


def pending_backfills(session: Session) -> list[str]:
    return list(session.scalars(select(Journey.key).where(Journey.status == "backfilling").order_by(Journey.key)))


def sweep_step(session: Session, *, now: datetime, after: str | None, limit: int = BACKFILL_CHUNK) -> str | None:
    """For the next `limit` profiles after `after`: re-evaluate the journeys whose conditions time alone can
    change, and let active positions that overstayed a time limit exit. Returns the last profile id looked
    at, or None at the end."""
    journeys = machine.active(session)
    if not journeys.timed and not journeys.limited:
        return None
    ids, last, _ = segment_evaluate.profiles_after(session, after, limit)
    if last is None:
        return None
    wanted: dict[str, set[str] | None] = {pid: set(journeys.timed) for pid in ids}
    limited = sorted(journeys.limited - journeys.timed)
    if limited and ids:
        p = JourneyPosition
        query = select(p.profile_id, p.journey_key).where(
            p.journey_key.in_(limited), p.state == "active", p.profile_id > (after or ""), p.profile_id <= last
        )
        for profile_id, key in session.execute(query):
            if profile_id in wanted:
                wanted[profile_id].add(key)  # type: ignore[union-attr]
    wanted = {pid: keys for pid, keys in wanted.items() if keys}
    segments.lock_profiles(session, sorted(wanted))
    machine.refresh(session, wanted, now, journeys=journeys)
    return last


# --- positions, timelines, funnels --------------------------------------------------------------------------


def profile_positions(session: Session, profile_id: str) -> list[tuple[JourneyPosition, Journey]]:
    rows = session.execute(
        select(JourneyPosition, Journey)
        .join(Journey, Journey.key == JourneyPosition.journey_key)
        .where(JourneyPosition.profile_id == profile_id)
        .order_by(JourneyPosition.journey_key)
    )
    return [(position, journey) for position, journey in rows]


def transitions(
    session: Session, profile_id: str, *, limit: int, before: int | None = None
) -> Sequence[JourneyTransition]:
    query = select(JourneyTransition).where(JourneyTransition.profile_id == profile_id)
    if before is not None:
        query = query.where(JourneyTransition.id < before)
    return session.scalars(query.order_by(JourneyTransition.id.desc()).limit(limit)).all()


def transitions_since(
    session: Session, *, after: int, profile_id: str | None = None, journey: str | None = None, limit: int = 200
) -> Sequence[JourneyTransition]:
    """Journey transitions stored with an id above `after`, oldest first; of one profile or journey."""
    query = select(JourneyTransition).where(JourneyTransition.id > after)
    if profile_id is not None:
        query = query.where(JourneyTransition.profile_id == profile_id)
    if journey is not None:
        query = query.where(JourneyTransition.journey_key == journey)
    return session.scalars(query.order_by(JourneyTransition.id).limit(limit)).all()


@dataclass(slots=True)
class StageFigures:
    key: str
    name: str
    reached: int = 0  # at or past this stage
    entered: int = 0  # stood in this stage (not skipped)
    conversion: float | None = None  # reached the next stage / reached this one
    median_seconds_to_next: float | None = None
    timed: int = 0  # how many profiles the median is over


@dataclass(slots=True)
class Funnel:
    key: str
    version: int
    start: datetime
    end: datetime
    entered: int = 0
    active: int = 0
    completed: int = 0
    exited: int = 0
    stages: list[StageFigures] = field(default_factory=list)


def funnel(session: Session, key: str, *, start: datetime, end: datetime) -> Funnel:
    """Counts per stage, conversion between consecutive stages and median time between them, for the
    profiles that entered the journey in [start, end)."""
    row = get(session, key)
    if start >= end:
        raise JourneyError(422, "invalid_window", "from must be before to")
    compiled = definitions.compile_journey(row.key, row.version, row.definition)
    stages = compiled.definition.stages
    result = Funnel(key, row.version, start, end, stages=[StageFigures(s.key, s.name or s.key) for s in stages])
    gaps: list[list[float]] = [[] for _ in stages]
    p = JourneyPosition
    query = select(p.stage, p.state, p.path).where(p.journey_key == key, p.entered_at >= start, p.entered_at < end)
    for stage, state, path in session.execute(query.execution_options(yield_per=5000)):
        index = compiled.index.get(stage)
        if index is None:
            continue
        result.entered += 1
        setattr(result, state, getattr(result, state) + 1)
        times = [_time(path.get(s.key)) for s in stages]
        for i in range(index + 1):
            result.stages[i].reached += 1
            if times[i] is not None:
                result.stages[i].entered += 1
            if i < index and times[i] is not None and times[i + 1] is not None:
                gaps[i].append((times[i + 1] - times[i]).total_seconds())  # type: ignore[operator]
    for i, figures in enumerate(result.stages):
        if i + 1 < len(stages) and figures.reached:
            figures.conversion = round(result.stages[i + 1].reached / figures.reached, 6)
        if gaps[i]:
            figures.median_seconds_to_next = float(statistics.median(gaps[i]))
            figures.timed = len(gaps[i])
    return result


def _time(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None
