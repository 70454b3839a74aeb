"""The journey stage machine: evaluating journeys against stored profiles and writing what changed.

A position only moves forward. Each evaluation, at a moment `now`, of a profile that is in a journey
(`active`) or not yet in it:
1. an active profile that overstayed a time limit (of its stage, or of the journey) exits, at the moment the
   limit ran out;
2. otherwise the last stage after its current one (any stage, if not in the journey) whose condition holds
   becomes its stage (skipping the ones between); a profile not in the journey enters it so;
3. an active profile then completes the journey if the goal holds (with no goal: on reaching the last
   stage), or else exits if the exit condition holds.
A completed or exited profile stays so. Conditions read the profile as stored, through the segments'
facts (traits, events, computed traits, segment memberships, consent), so streaming, backfill, the sweep
and a batch recompute give the same answer for the same moment and the same positions before it.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Delete, Select, Table, delete, select
from sqlalchemy.orm import Session

from accord.db.base import listed, listed_pairs, one_of_bound, pair_of_bound
from accord.db.bulk import insert_rows
from accord.journeys.definition import Compiled, compile_journey
from accord.journeys.models import Journey, JourneyPosition, JourneyTransition
from accord.segments import computed as computed_traits
from accord.segments import evaluate as segment_evaluate
from accord.segments.conditions import Facts

POSITIONS = cast(Table, JourneyPosition.__table__)
TRANSITIONS = cast(Table, JourneyTransition.__table__)
CHUNK = segment_evaluate.CHUNK


@dataclass(frozen=True, slots=True)
class Position:
    stage: str
    stage_entered_at: datetime
    entered_at: datetime
    state: str = "active"  # active | completed | exited
    ended_at: datetime | None = None
    reason: str | None = None
    path: Mapping[str, str] = field(default_factory=dict)  # stage key -> ISO time it was entered


@dataclass(frozen=True, slots=True)
class Move:
    """A change of position: a journey transition."""

    journey: str
    profile_id: str
    kind: str  # entered | advanced | completed | exited
    stage: str
    from_stage: str | None
    reason: str | None
    at: datetime


def deadline(journey: Compiled, position: Position) -> datetime | None:
    """When an active position overstays: the earlier of its stage's and the journey's limit."""
    found: list[datetime] = []
    index = journey.index.get(position.stage)
    if index is not None and journey.stage_limits[index] is not None:
        found.append(position.stage_entered_at + cast(Any, journey.stage_limits[index]))
    if journey.limit is not None:
        found.append(position.entered_at + journey.limit)
    return min(found) if found else None


def step(
    journey: Compiled, profile_id: str, position: Position | None, facts: Facts, now: datetime
) -> tuple[Position | None, list[Move]]:
    """The position after evaluating the journey for one profile at `now`, and the moves that took it there.
    A position in a stage the journey no longer has counts as no position."""
    if position is not None and position.stage not in journey.index:
        position = None
    if position is not None and position.state != "active":
        return position, []
    moves: list[Move] = []
    if position is not None:
        limit = deadline(journey, position)
        if limit is not None and now > limit:
            ended = replace(position, state="exited", ended_at=limit, reason="time_limit")
            return ended, [Move(journey.key, profile_id, "exited", position.stage, position.stage, "time_limit", limit)]
    stages, tests = journey.definition.stages, journey.stage_tests
    current = -1 if position is None else journey.index[position.stage]
    target = next((i for i in range(len(stages) - 1, current, -1) if tests[i](facts, now)), None)
    if target is not None:
        key = stages[target].key
        if position is None:
            position = Position(key, now, now, path={key: now.isoformat()})
            moves.append(Move(journey.key, profile_id, "entered", key, None, None, now))
        else:
            moves.append(Move(journey.key, profile_id, "advanced", key, position.stage, None, now))
            position = replace(position, stage=key, stage_entered_at=now, path={**position.path, key: now.isoformat()})
    if position is None:
        return None, moves
    goal, exit_ = journey.goal_test, journey.exit_test
    reached_end = journey.index[position.stage] == len(stages) - 1
    if (goal is not None and goal(facts, now)) or (goal is None and reached_end):
        reason = "goal" if goal is not None else "last_stage"
        position = replace(position, state="completed", ended_at=now, reason=reason)
        moves.append(Move(journey.key, profile_id, "completed", position.stage, position.stage, reason, now))
    elif exit_ is not None and exit_(facts, now):
        position = replace(position, state="exited", ended_at=now, reason="exit")
        moves.append(Move(journey.key, profile_id, "exited", position.stage, position.stage, "exit", now))
    return position, moves


def rank(journey: Compiled, position: Position) -> tuple[int, int, int]:
    """How far a position got, for choosing between two profiles' positions when they merge."""
    return (position.state == "completed", journey.index.get(position.stage, -1), position.state == "active")


# --- the journeys in force ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Active:
    """The journeys in force, compiled, with the indexes streaming uses."""

    stamp: tuple[Any, ...] = ()
    by_key: dict[str, Compiled] = field(default_factory=dict)
    by_trait: dict[str, set[str]] = field(default_factory=dict)
    by_event: dict[str, set[str]] = field(default_factory=dict)
    by_segment: dict[str, set[str]] = field(default_factory=dict)
    consent: set[str] = field(default_factory=set)
    timed: set[str] = field(default_factory=set)  # conditions time alone can change (windows, consent expiry)
    limited: set[str] = field(default_factory=set)  # with a time limit
    computed: dict[str, computed_traits.ComputedDefinition] = field(default_factory=dict)
    # what each journey reads, in the form the segments' load_facts takes
    reads: dict[str, segment_evaluate.Compiled] = field(default_factory=dict)


_cache: dict[str, Active] = {}
_lock = threading.Lock()


def active(session: Session, cache: segment_evaluate.FactsCache | None = None) -> Active:
    """The journeys in force: one small read, with the segments' stamps (none when `cache` holds them);
    compiled again only after a change. With `cache`, the segments in force are those the segments'
    evaluation in the same run read."""
    j = Journey.__table__.c
    if cache is None:
        cache = segment_evaluate.FactsCache()  # the stamps read once, for the journeys and the segments
    stamp = segment_evaluate.stamps(session, cache).journeys
    if not stamp:
        return Active()
    segments = segment_evaluate.active(session, cache)  # its stamp has the computed traits' too
    stamp += segments.stamp
    bind = str(session.get_bind().engine.url)
    cached = _cache.get(bind)
    if cached is not None and cached.stamp == stamp:
        return cached
    rows = session.execute(select(j.key, j.version, j.definition).order_by(j.key)).all()
    result = compile_all(
        [(key, version, document) for key, version, document in rows], stamp, segments.computed, segments.timed
    )
    with _lock:
        _cache[bind] = result
    return result


def compile_all(
    rows: list[tuple[str, int, Any]],
    stamp: tuple[Any, ...] = (),
    definitions: Mapping[str, computed_traits.ComputedDefinition] | None = None,
    timed_segments: Iterable[str] = (),
) -> Active:
    """The journeys, indexed. A journey reading a segment that time alone can change is timed too: the
    segments' sweep may move its members, and the journeys' sweep (which runs after) follows."""
    timed_segments = set(timed_segments)
    result = Active(stamp=stamp, computed=dict(definitions or {}))
    for key, version, document in rows:
        journey = compile_journey(key, version, document)
        journey = replace(journey, refs=segment_evaluate.with_computed(journey.refs, result.computed))
        result.by_key[key] = journey
        result.reads[key] = segment_evaluate.Compiled(
            key, version, journey.definition.stages[0].condition, journey.refs
        )
        for trait in journey.refs.traits:
            result.by_trait.setdefault(trait, set()).add(key)
        for event in journey.refs.events:
            result.by_event.setdefault(event, set()).add(key)
        for segment in journey.refs.segments:
            result.by_segment.setdefault(segment, set()).add(key)
        if journey.refs.purposes:
            result.consent.add(key)
            result.timed.add(key)  # a grant can lapse
        if journey.refs.timed or journey.refs.segments & timed_segments:
            result.timed.add(key)
        if journey.limited:
            result.limited.add(key)
    return result


# --- reading and writing positions -------------------------------------------------------------------------


def _chunks(values: list[Any], size: int = CHUNK) -> Iterable[list[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _position(row: Any) -> Position:
    return Position(
        stage=row.stage,
        stage_entered_at=row.stage_entered_at,
        entered_at=row.entered_at,
        state=row.state,
        ended_at=row.ended_at,
        reason=row.reason,
        path=dict(row.path or {}),
    )


@functools.cache
def _statements(dialect: str) -> tuple[Select[Any], Delete]:
    """Reading the positions of some profiles, and deleting some (journey, profile) positions: built once
    per dialect (building costs SQLAlchemy more than running on a small run), the values bound on
    execution."""
    p = POSITIONS.c
    return (
        select(POSITIONS).where(one_of_bound(p.profile_id, "ids", dialect)),
        delete(POSITIONS).where(pair_of_bound(p.journey_key, p.profile_id, "pairs", dialect)),
    )


def positions(
    session: Session, profile_ids: Iterable[str], keys: Iterable[str] | None = None
) -> dict[str, dict[str, Position]]:
    """{profile id: {journey key: position}} as stored (of the journeys `keys`, or all)."""
    wanted = set(keys) if keys is not None else None
    connection = session.connection()
    dialect = connection.dialect.name
    query, _ = _statements(dialect)
    stored: dict[str, dict[str, Position]] = {}
    for chunk in _chunks(sorted(set(profile_ids))):
        for row in connection.execute(query, {"ids": listed(chunk, dialect)}):
            if wanted is None or row.journey_key in wanted:
                stored.setdefault(row.profile_id, {})[row.journey_key] = _position(row)
    return stored


@dataclass(slots=True)
class Changes:
    moves: list[Move] = field(default_factory=list)
    written: dict[tuple[str, str], Position | None] = field(default_factory=dict)  # (journey, profile) -> now
    stored: set[tuple[str, str]] = field(default_factory=set)  # (journey, profile) with a position row, as read


def refresh(
    session: Session,
    wanted: Mapping[str, set[str] | None],
    now: datetime,
    *,
    journeys: Active | None = None,
    gone: Iterable[str] = (),
    cache: segment_evaluate.FactsCache | None = None,
) -> Changes:
    """Evaluate, for each profile in `wanted`, the journeys named (None: all), and write what changed.
    Profiles in `gone` were merged away: each of their positions goes to the profile they now belong to
    where it got further than that profile's own (evaluated afresh if it is in `wanted`)."""
    journeys = journeys or active(session)
    changes = Changes()
    if not journeys.by_key:
        return changes
    gone = sorted(set(gone))
    per_profile = {
        pid: set(journeys.by_key) if keys is None else {k for k in keys if k in journeys.by_key}
        for pid, keys in wanted.items()
    }
    per_profile = {pid: keys for pid, keys in per_profile.items() if keys}
    read = {*gone, *per_profile}  # of these, every position is in `stored`
    stored = positions(session, read) if read else {}
    changes.stored.update((key, pid) for pid, found in stored.items() for key in found)
    carried = _carry(session, gone, stored, read, journeys, changes, cache) if gone else {}
    if per_profile:
        for pid, theirs in carried.items():
            stored.setdefault(pid, {}).update(theirs)
        needed = [journeys.by_key[k] for k in sorted({k for keys in per_profile.values() for k in keys})]
        facts = load_facts(session, list(per_profile), needed, now, journeys, cache)
        for profile_id, keys in per_profile.items():
            found = facts.get(profile_id)
            if found is None:
                continue
            current = stored.get(profile_id, {})
            for key in sorted(keys):
                before = current.get(key)
                after, moves = step(journeys.by_key[key], profile_id, before, found, now)
                if after != before:
                    changes.written[(key, profile_id)] = after
                changes.moves.extend(moves)
    _write(session, changes, journeys)
    return changes


def load_facts(
    session: Session,
    profile_ids: list[str],
    needed: list[Compiled],
    now: datetime,
    journeys: Active,
    cache: segment_evaluate.FactsCache | None = None,
) -> dict[str, Facts]:
    """The facts these journeys read, for the live profiles among `profile_ids`: the segments' facts, and
    the profiles' segment memberships as stored."""
    items = [journeys.reads[j.key] for j in needed]
    facts = segment_evaluate.load_facts(session, profile_ids, items, now, journeys.computed, cache)
    if any(j.refs.segments for j in needed):
        for profile_id, keys in segment_evaluate.memberships(session, facts, cache).items():
            facts[profile_id].segments = set(keys)
    return facts


def owners(
    session: Session, profile_ids: Iterable[str], cache: segment_evaluate.FactsCache | None = None
) -> dict[str, str]:
    """{profile id: the live profile it is, or was merged into} (an id with no row stands for itself). With
    `cache`, what the segments' evaluation of the same transaction read of the profiles is not read again."""
    p = segment_evaluate.PROFILES.c
    known = cache.merged_into if cache is not None else {}
    found = {pid: pid for pid in set(profile_ids)}
    frontier = sorted(found)
    for _ in range(10):  # merged_into points at a live profile; a chain is followed a few hops at most
        hops = {pid: target for pid in frontier if (target := known.get(pid)) is not None}
        for chunk in _chunks([pid for pid in frontier if pid not in known]):
            query = select(p.id, p.merged_into).where(p.id.in_(chunk), p.merged_into.is_not(None))
            hops.update({row[0]: row[1] for row in session.execute(query)})
        if not hops:
            break
        found = {source: hops.get(current, current) for source, current in found.items()}
        frontier = sorted(set(hops.values()))
    return found


def _carry(
    session: Session,
    gone: list[str],
    stored: dict[str, dict[str, Position]],
    read: set[str],
    journeys: Active,
    changes: Changes,
    cache: segment_evaluate.FactsCache | None,
) -> dict[str, dict[str, Position]]:
    """Move the positions of merged-away profiles to the live profiles they belong to, where further.
    `stored` holds every position of the profiles in `read`, `gone` among them."""
    theirs = {pid: stored[pid] for pid in gone if pid in stored}
    if not theirs:
        return {}
    owner = owners(session, theirs, cache)
    targets = set(owner.values()) - set(theirs)
    mine = {pid: stored[pid] for pid in targets & read if pid in stored}
    if targets - read:
        mine.update(positions(session, targets - read))
        changes.stored.update((key, pid) for pid, found in mine.items() for key in found)
    result: dict[str, dict[str, Position]] = {}
    for profile_id, found in sorted(theirs.items()):
        target = owner.get(profile_id, profile_id)
        for key, position in found.items():
            journey = journeys.by_key.get(key)
            if target == profile_id or journey is None:
                continue
            changes.written[(key, profile_id)] = None  # the merged-away profile's row goes
            current = result.get(target, {}).get(key) or mine.get(target, {}).get(key)
            if current is None or rank(journey, position) > rank(journey, current):
                result.setdefault(target, {})[key] = position
                changes.written[(key, target)] = position
    return result


def _write(session: Session, changes: Changes, journeys: Active) -> None:
    if changes.written:
        pairs = sorted(changes.written)
        connection = session.connection()
        _, leave = _statements(connection.dialect.name)
        # Only rows read are replaced: a profile entering a journey has none to delete.
        for chunk in _chunks([pair for pair in pairs if pair in changes.stored]):
            connection.execute(leave, {"pairs": listed_pairs(chunk)})
        rows = [
            {
                "journey_key": key,
                "profile_id": pid,
                "stage": position.stage,
                "stage_entered_at": position.stage_entered_at,
                "entered_at": position.entered_at,
                "state": position.state,
                "ended_at": position.ended_at,
                "reason": position.reason,
                "path": dict(position.path),
            }
            for (key, pid) in pairs
            if (position := changes.written[(key, pid)]) is not None
        ]
        if rows:
            insert_rows(session, POSITIONS, rows)
    if changes.moves:
        insert_rows(
            session,
            TRANSITIONS,
            [
                {
                    "journey_key": m.journey,
                    "profile_id": m.profile_id,
                    "kind": m.kind,
                    "stage": m.stage,
                    "from_stage": m.from_stage,
                    "reason": m.reason,
                    "version": journeys.by_key[m.journey].version,
                    "at": m.at,
                }
                for m in changes.moves
            ],
        )


def recompute(
    session: Session, now: datetime, prior: Mapping[str, Mapping[str, Position]], *, journeys: Active | None = None
) -> dict[str, dict[str, Position]]:
    """Every live profile's positions as a batch evaluation of every journey gives them at `now`, starting
    from `prior` ({profile id: {journey: position}}, a profile merged away since counting for the one it
    belongs to, the furthest position winning). Reads only; for checks and tests."""
    journeys = journeys or active(session)
    owner = owners(session, prior)
    floor: dict[str, dict[str, Position]] = {}
    for profile_id in sorted(prior, key=lambda pid: (owner[pid] != pid, pid)):  # a profile's own first
        for key, position in prior[profile_id].items():
            journey = journeys.by_key.get(key)
            if journey is None:
                continue
            current = floor.get(owner[profile_id], {}).get(key)
            if current is None or rank(journey, position) > rank(journey, current):
                floor.setdefault(owner[profile_id], {})[key] = position
    result: dict[str, dict[str, Position]] = {}
    after: str | None = None
    needed = list(journeys.by_key.values())
    while needed:
        ids, last, _ = segment_evaluate.profiles_after(session, after, CHUNK)
        if last is None:
            break
        facts = load_facts(session, ids, needed, now, journeys)
        for profile_id, found in facts.items():
            for journey in needed:
                reached, _moves = step(journey, profile_id, floor.get(profile_id, {}).get(journey.key), found, now)
                if reached is not None:
                    result.setdefault(profile_id, {})[journey.key] = reached
        after = last
    return result
