"""Segments as configuration: save (versioned, checked), delete, read; memberships, members, exports."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from accord.consent import catalogue as consent_catalogue
from accord.db.engine import analyze_if_stale
from accord.profiles import private
from accord.segments import computed, conditions, evaluate, pushdown
from accord.segments.conditions import ConditionError
from accord.segments.models import ComputedTrait, Segment, SegmentMembership, SegmentTransition, SegmentVersion

KEY = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,99}$")
BACKFILL_CHUNK = 2000
# Profiles per backfill transaction when the database evaluates the condition (a fraction of a second).
PUSHDOWN_CHUNK = 20_000


class SegmentError(ValueError):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def check_key(key: str) -> None:
    if not KEY.match(key):
        raise SegmentError(
            422, "invalid_segment", "a segment key is 1-100 of a-z, 0-9, _ . - and starts with a letter or digit"
        )


def check_condition(session: Session, key: str, document: Any) -> dict[str, Any]:
    """The condition in its stored form; ConditionError (with a JSON path) if it cannot be used: malformed,
    naming a segment that does not exist or that reads this one (a cycle), or an unknown consent purpose."""
    node = conditions.parse(document, new=True)
    others = {row.key: row for row in session.scalars(select(Segment))}
    for path, part in conditions.walk(node):
        if isinstance(part, conditions.SegmentCondition):
            if part.segment == key:
                raise ConditionError(f"{path}.segment", "a segment cannot read its own membership")
            if part.segment not in others:
                raise ConditionError(f"{path}.segment", f"no segment {part.segment!r}")
            if key in _reads(others, part.segment):
                raise ConditionError(f"{path}.segment", f"segment {part.segment!r} reads {key!r}: a cycle")
        elif isinstance(part, conditions.ComputedCondition) and session.get(ComputedTrait, part.computed) is None:
            raise ConditionError(f"{path}.computed", f"no computed trait {part.computed!r}")
        elif (
            isinstance(part, conditions.ConsentCondition)
            and consent_catalogue.get_purpose(session, part.consent.purpose) is None
        ):
            raise ConditionError(f"{path}.consent.purpose", f"no purpose {part.consent.purpose!r} in the catalogue")
    return conditions.dump(node)


def _reads(segments: dict[str, Segment], start: str) -> set[str]:
    """Every segment `start` reads, transitively."""
    seen: set[str] = set()
    frontier = [start]
    while frontier:
        row = segments.get(frontier.pop())
        if row is None:
            continue
        for _, part in conditions.walk(conditions.parse(row.condition)):
            if isinstance(part, conditions.SegmentCondition) and part.segment not in seen:
                seen.add(part.segment)
                frontier.append(part.segment)
    return seen


def _next_version(session: Session, key: str) -> int:
    latest = session.scalar(select(func.max(SegmentVersion.version)).where(SegmentVersion.key == key))
    return int(latest or 0) + 1


def create(
    session: Session, *, key: str, name: str, description: str, condition: Any, actor: str, now: datetime
) -> Segment:
    check_key(key)
    if session.get(Segment, key) is not None:
        raise SegmentError(409, "segment_exists", f"segment {key!r} exists; change it with PUT")
    stored = check_condition(session, key, condition)
    version = _next_version(session, key)
    row = Segment(
        key=key,
        name=name or key,
        description=description,
        version=version,
        condition=stored,
        status="backfilling",
        backfill_after=None,
        backfill_done=0,
        backfill_total=evaluate.count_profiles(session),
        created_at=now,
        updated_at=now,
        actor=actor[:100],
    )
    session.add(row)
    session.add(_version(row, now))
    session.flush()
    return row


def _version(row: Segment, now: datetime) -> SegmentVersion:
    return SegmentVersion(
        key=row.key,
        version=row.version,
        name=row.name,
        description=row.description,
        condition=row.condition,
        created_at=now,
        actor=row.actor,
    )


def change(
    session: Session,
    *,
    key: str,
    name: str | None,
    description: str | None,
    condition: Any | None,
    actor: str,
    now: datetime,
) -> Segment:
    """A new version; a changed condition backfills again (members are kept until re-evaluated)."""
    row = get(session, key, lock=True)
    if condition is not None:
        stored = check_condition(session, key, condition)
        if stored != row.condition:
            row.condition = stored
            _restart_backfill(row, session)
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
    """Delete a segment and its memberships (no exit records: the segment itself is gone). Refused while
    another segment reads it. Returns how many memberships went."""
    row = get(session, key, lock=True)
    readers = sorted(
        other.key
        for other in session.scalars(select(Segment).where(Segment.key != key))
        if key in conditions.references(conditions.parse(other.condition)).segments
    )
    readers += [f"journey {k}" for k in _journeys().readers(session, segment=key)]
    if readers:
        raise SegmentError(409, "segment_in_use", f"segment {key!r} is read by {', '.join(readers[:10])}")
    session.add(
        SegmentVersion(
            key=key,
            version=_next_version(session, key),
            name=row.name,
            description=row.description,
            condition=None,
            created_at=now,
            actor=actor[:100],
        )
    )
    gone = size(session, key)
    session.execute(delete(SegmentMembership).where(SegmentMembership.segment_key == key))
    session.delete(row)
    session.flush()
    return gone


def _restart_backfill(row: Segment, session: Session) -> None:
    row.status = "backfilling"
    row.backfill_after = None
    row.backfill_done = 0
    row.backfill_total = evaluate.count_profiles(session)
    journeys = _journeys()
    journeys.restart_backfills(session, journeys.readers(session, segment=row.key))


def _journeys() -> Any:
    """accord.journeys.service, imported here: journeys read segments (a cycle at the top)."""
    from accord.journeys import service as journeys

    return journeys


def get(session: Session, key: str, *, lock: bool = False) -> Segment:
    query = select(Segment).where(Segment.key == key)
    if lock and session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update()
    row = session.scalar(query) if KEY.match(key) else None
    if row is None:
        raise SegmentError(404, "segment_not_found", f"no segment {key[:100]!r}")
    return row


def listing(session: Session) -> Sequence[Segment]:
    return session.scalars(select(Segment).order_by(Segment.key)).all()


def versions(session: Session, key: str) -> Sequence[SegmentVersion]:
    if not KEY.match(key):
        raise SegmentError(404, "segment_not_found", f"no segment {key[:100]!r}")
    rows = session.scalars(
        select(SegmentVersion).where(SegmentVersion.key == key).order_by(SegmentVersion.version.desc())
    ).all()
    if not rows:
        raise SegmentError(404, "segment_not_found", f"no segment {key[:100]!r}")
    return rows


def size(session: Session, key: str) -> int:
    return int(
        session.scalar(select(func.count()).select_from(SegmentMembership).where(SegmentMembership.segment_key == key))
        or 0
    )


def sizes(session: Session, keys: Sequence[str]) -> dict[str, int]:
    m = SegmentMembership
    rows = session.execute(
        select(m.segment_key, func.count()).where(m.segment_key.in_(list(keys))).group_by(m.segment_key)
    )
    return {key: int(n) for key, n in rows}


# --- backfill and sweep -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Progress:
    key: str
    done: int
    total: int
    finished: bool


def backfill_step(session: Session, key: str, *, now: datetime, limit: int | None = None) -> Progress:
    """Evaluate the segment for the next `limit` profiles (in id order) and record the progress. A segment
    of trait comparisons and event counts (without property filters) that no other segment reads is
    evaluated by the database (accord.segments.pushdown), in larger chunks; any other in Python, where for
    a segment no other reads the database first leaves out the profiles that cannot be in it
    (`pushdown.candidates`) and are not in it now."""
    row = get(session, key, lock=True)
    if row.status != "backfilling":
        return Progress(key, row.backfill_done, row.backfill_total, True)
    analyze_if_stale(session, ("profiles", "events"))  # what each step's plans walk
    segments = evaluate.active(session)
    item = segments.by_key.get(key)
    where = narrowed = None
    if item is not None and segments.closure({key}) == {key}:  # no other segment reads this one
        # Personal traits are encrypted (accord.profiles.private): conditions on them run in Python.
        readable, dialect, p = private.personal(session).readable, session.get_bind().dialect.name, evaluate.PROFILES.c
        where = pushdown.predicate(item.node, p.traits, dialect, readable=readable, profile_id=p.id, now=now)
        if where is None:
            narrowed = pushdown.candidates(item.node, p.traits, dialect, readable=readable, profile_id=p.id, now=now)
    if item is not None and where is not None:
        found = evaluate.refresh_range(
            session, item, where, after=row.backfill_after, limit=limit or PUSHDOWN_CHUNK, now=now
        )
        last, end = found.last, found.end
        row.backfill_done += found.walked
    elif narrowed is not None:
        walk, most = limit or PUSHDOWN_CHUNK, limit or BACKFILL_CHUNK
        ids, found = evaluate.candidates_range(session, key, narrowed, after=row.backfill_after, walk=walk, limit=most)
        if ids:
            evaluate.refresh(session, {pid: {key} for pid in ids}, now, segments=segments)
        last, end = found.last, found.end
        row.backfill_done += found.walked
    else:
        limit = limit or BACKFILL_CHUNK
        ids, last, walked = evaluate.profiles_after(session, row.backfill_after, limit)
        lock_profiles(session, ids)
        if ids:
            evaluate.refresh(session, {pid: {key} for pid in ids}, now, segments=segments)
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
    return Progress(key, row.backfill_done, row.backfill_total, row.status == "ready")


def pending_backfills(session: Session) -> list[str]:
    return list(session.scalars(select(Segment.key).where(Segment.status == "backfilling").order_by(Segment.key)))


def sweep_step(session: Session, *, now: datetime, after: str | None, limit: int = BACKFILL_CHUNK) -> str | None:
    """Re-evaluate the segments that time alone can change (windows, consent expiry) for the next `limit`
    profiles after `after`; returns the last profile id done, or None at the end."""
    segments = evaluate.active(session)
    if not segments.timed:
        return None
    ids, last, _ = evaluate.profiles_after(session, after, limit)
    if last is None:
        return None
    lock_profiles(session, ids)
    evaluate.refresh(session, {pid: set(segments.timed) for pid in ids}, now, segments=segments)
    return last


def lock_profiles(session: Session, ids: list[str]) -> None:
    """On PostgreSQL, the rows the pipeline locks too (in id order), so a membership is written once."""
    if ids:
        evaluate.lock_profiles(session, evaluate.PROFILES.c.id.in_(ids))


# --- memberships, members, exports --------------------------------------------------------------------------


def profile_memberships(session: Session, profile_id: str) -> list[tuple[SegmentMembership, Segment]]:
    rows = session.execute(
        select(SegmentMembership, Segment)
        .join(Segment, Segment.key == SegmentMembership.segment_key)
        .where(SegmentMembership.profile_id == profile_id)
        .order_by(SegmentMembership.segment_key)
    )
    return [(membership, segment) for membership, segment in rows]


def transitions(
    session: Session, profile_id: str, *, limit: int, before: int | None = None
) -> Sequence[SegmentTransition]:
    query = select(SegmentTransition).where(SegmentTransition.profile_id == profile_id)
    if before is not None:
        query = query.where(SegmentTransition.id < before)
    return session.scalars(query.order_by(SegmentTransition.id.desc()).limit(limit)).all()


def members(session: Session, key: str, *, after: str | None, limit: int) -> Sequence[SegmentMembership]:
    get(session, key)
    query = select(SegmentMembership).where(SegmentMembership.segment_key == key)
    if after is not None and "\x00" in after:
        raise SegmentError(400, "invalid_cursor", "after is not a cursor this API gave out")
    if after is not None:
        query = query.where(SegmentMembership.profile_id > after)
    return session.scalars(query.order_by(SegmentMembership.profile_id).limit(limit)).all()


@dataclass(frozen=True, slots=True)
class Exported:
    profile_id: str
    entered_at: datetime
    traits: dict[str, Any]


def export(
    session: Session, key: str, *, purpose: str, channel: str, traits: Sequence[str], now: datetime
) -> Iterator[Exported]:
    """The members the consent policy lets out for this purpose and channel, with the traits asked for.
    Members without a valid basis are left out; nobody leaves without one."""
    get(session, key)
    view = None if "\x00" in purpose else consent_catalogue.get_purpose(session, purpose)
    if view is None:
        raise SegmentError(404, "unknown_purpose", f"no purpose {purpose[:100]!r} in the catalogue")
    if "\x00" in channel or not consent_catalogue.channel_exists(session, channel):
        raise SegmentError(404, "unknown_channel", f"no channel {channel[:60]!r}")
    check = conditions.ConsentCondition(consent=conditions.ConsentRef(purpose=purpose, channel=channel))
    compiled = evaluate.Compiled("", 0, check, conditions.references(check))
    after: str | None = None
    while True:
        page = members(session, key, after=after, limit=evaluate.CHUNK)
        if not page:
            return
        facts = evaluate.load_facts(session, [m.profile_id for m in page], [compiled], now)
        for membership in page:
            found = facts.get(membership.profile_id)
            if found is not None and found.allowed(purpose, channel):
                yield Exported(
                    membership.profile_id,
                    membership.entered_at,
                    {name: found.traits[name] for name in traits if name in found.traits},
                )
        after = page[-1].profile_id


# --- computed traits ---------------------------------------------------------------------------------------


def computed_get(session: Session, key: str) -> ComputedTrait:
    row = session.get(ComputedTrait, key) if KEY.match(key) else None
    if row is None:
        raise SegmentError(404, "computed_trait_not_found", f"no computed trait {key[:100]!r}")
    return row


def computed_listing(session: Session) -> Sequence[ComputedTrait]:
    return session.scalars(select(ComputedTrait).order_by(ComputedTrait.key)).all()


def _readers(session: Session, key: str) -> list[str]:
    """Segments whose condition reads computed trait `key`."""
    return sorted(
        row.key
        for row in session.scalars(select(Segment))
        if key in conditions.references(conditions.parse(row.condition)).computed
    )


def computed_save(
    session: Session, *, key: str, name: str | None, definition: Any, actor: str, now: datetime, create: bool
) -> ComputedTrait:
    """Create (or change: a new version) a computed trait. A change backfills the segments that read it."""
    check_key(key)
    stored = computed.dump(computed.parse(definition, new=True))
    row = session.get(ComputedTrait, key)
    if create and row is not None:
        raise SegmentError(409, "computed_trait_exists", f"computed trait {key!r} exists; change it with PUT")
    if not create and row is None:
        raise SegmentError(404, "computed_trait_not_found", f"no computed trait {key[:100]!r}")
    if row is None:
        _refuse_sql_trait(session, key)
        row = ComputedTrait(
            key=key, name=name or key, version=1, definition=stored, created_at=now, updated_at=now, actor=actor[:100]
        )
        session.add(row)
    else:
        if stored != row.definition:
            for reader in _readers(session, key):
                _restart_backfill(get(session, reader, lock=True), session)
            journeys = _journeys()
            journeys.restart_backfills(session, journeys.readers(session, computed=key))
        row.definition = stored
        row.name = name if name is not None else row.name
        row.version += 1
        row.updated_at = now
        row.actor = actor[:100]
    session.flush()
    return row


def _refuse_sql_trait(session: Session, key: str) -> None:
    """A profile would show two different things under one name: the keys of SQL computed traits (which
    set stored traits) are not free for declarative ones, and the other way round."""
    from accord.sources.models import SqlTrait

    if session.get(SqlTrait, key) is not None:
        raise SegmentError(
            409,
            "trait_key_conflict",
            f"{key!r} is the key of a SQL computed trait (accord computed-trait, /api/v1/sql-traits); "
            "give the computed trait another key, or delete that one first",
        )


def computed_remove(session: Session, *, key: str) -> None:
    row = computed_get(session, key)
    readers = _readers(session, key) + [f"journey {k}" for k in _journeys().readers(session, computed=key)]
    if readers:
        raise SegmentError(409, "computed_trait_in_use", f"computed trait {key!r} is read by {', '.join(readers[:10])}")
    session.delete(row)
    session.flush()


def computed_values(session: Session, profile_id: str, *, now: datetime) -> dict[str, Any]:
    """Every computed trait's value for this profile, from its stored events."""
    definitions = {row.key: computed.parse(row.definition) for row in computed_listing(session)}
    if not definitions:
        return {}
    probe = conditions.AnyOf(any=[conditions.ComputedCondition(computed=k, op="exists") for k in definitions])
    refs = evaluate.with_computed(conditions.references(probe), definitions)
    facts = evaluate.load_facts(session, [profile_id], [evaluate.Compiled("", 0, probe, refs)], now, definitions)
    found = facts.get(profile_id)
    return {key: found.computed(key) if found else None for key in definitions}


def transitions_since(
    session: Session, *, after: int, profile_id: str | None = None, segment: str | None = None, limit: int = 200
) -> Sequence[SegmentTransition]:
    """Entries and exits stored with an id above `after`, oldest first; of one profile or segment if given."""
    query = select(SegmentTransition).where(SegmentTransition.id > after)
    if profile_id is not None:
        query = query.where(SegmentTransition.profile_id == profile_id)
    if segment is not None:
        query = query.where(SegmentTransition.segment_key == segment)
    return session.scalars(query.order_by(SegmentTransition.id).limit(limit)).all()


def events_since(session: Session, profile_id: str, *, after: int, limit: int = 200) -> Sequence[Any]:
    """The profile's timeline events stored with an id above `after`, oldest first."""
    from accord.profiles.models import ProfileEvent

    return session.scalars(
        select(ProfileEvent)
        .where(ProfileEvent.profile_id == profile_id, ProfileEvent.id > after)
        .order_by(ProfileEvent.id)
        .limit(limit)
    ).all()


def sizes_over_time(session: Session, key: str, *, days: int, now: datetime) -> list[tuple[str, int]]:
    """(UTC date, members at the end of that day, or now for today) for the last `days` days, from the
    current size and the entries and exits since (those of this incarnation of the key only)."""
    row = get(session, key)
    current = size(session, key)
    today = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    first = today - timedelta(days=days - 1)
    t = SegmentTransition
    moves = session.execute(select(t.at, t.kind).where(t.segment_key == key, t.at >= max(first, row.created_at))).all()
    result = []
    for offset in range(days):
        end = min(first + timedelta(days=offset + 1), now)
        later = [kind for at, kind in moves if at > end]
        day = (first + timedelta(days=offset)).date().isoformat()
        result.append((day, current - later.count("entered") + later.count("exited")))
    return result
