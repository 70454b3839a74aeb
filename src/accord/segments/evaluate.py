"""Evaluating segments against stored profiles and writing what changed.

Everything here reads the profile as stored (traits, the timeline, consent state), so streaming,
backfill, the sweep and a full recompute all give the same answer for the same moment.
"""

from __future__ import annotations

import functools
import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Delete,
    Select,
    String,
    Table,
    and_,
    delete,
    exists,
    func,
    insert,
    literal,
    not_,
    or_,
    select,
    true,
    union_all,
)
from sqlalchemy import cast as cast_
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from accord.consent import catalogue as consent_catalogue
from accord.consent import service as consent_service
from accord.consent.models import ConsentState
from accord.db.base import UTCDateTime, listed, listed_pairs, one_of, one_of_bound, pair_of_bound
from accord.db.bulk import insert_rows
from accord.journeys.models import Journey
from accord.profiles.models import Profile, ProfileEvent
from accord.profiles.private import Opener
from accord.profiles.sealed import opened_properties, sealed_by
from accord.security.datakeys import DataKeys
from accord.segments import computed as computed_traits
from accord.segments import conditions
from accord.segments.computed import ComputedDefinition
from accord.segments.conditions import Facts, Node, References
from accord.segments.histories import Histories
from accord.segments.models import ComputedTrait, Segment, SegmentMembership, SegmentTransition

PROFILES = cast(Table, Profile.__table__)
EVENTS = cast(Table, ProfileEvent.__table__)
MEMBERSHIPS = cast(Table, SegmentMembership.__table__)
TRANSITIONS = cast(Table, SegmentTransition.__table__)
CHUNK = 500


@dataclass(frozen=True, slots=True)
class _Statements:
    """The statements streaming runs for every run of events, built once per dialect: building one costs
    SQLAlchemy more than running it does on a small run. Values are bound on execution (`listed`)."""

    profiles: Select[Any]
    events: Select[Any]
    sealed_events: Select[Any]
    memberships: Select[Any]
    merged_into: Select[Any]
    leave: Delete
    drop: Delete


@functools.cache
def _statements(dialect: str) -> _Statements:
    p, e, m = PROFILES.c, EVENTS.c, MEMBERSHIPS.c
    # By primary key only: with "merged_into IS NULL" in the query SQLite may walk that index instead.
    profiles = select(p.id, p.traits, p.traits_enc, p.merged_into).where(one_of_bound(p.id, "ids", dialect))
    tracked = (one_of_bound(e.profile_id, "ids", dialect), e.type == "track", one_of_bound(e.event, "names", dialect))
    return _Statements(
        profiles=profiles,
        events=select(e.profile_id, e.event, e.timestamp).where(*tracked),
        sealed_events=select(e.profile_id, e.event, e.timestamp, e.payload, e.source_id, e.message_id).where(*tracked),
        memberships=select(m.segment_key, m.profile_id).where(one_of_bound(m.profile_id, "ids", dialect)),
        merged_into=select(p.id, p.merged_into).where(one_of_bound(p.id, "ids", dialect)),
        leave=delete(MEMBERSHIPS).where(pair_of_bound(m.segment_key, m.profile_id, "pairs", dialect)),
        drop=delete(MEMBERSHIPS).where(one_of_bound(m.profile_id, "ids", dialect)),
    )


def _core(session: Session) -> tuple[Connection, _Statements]:
    """The session's connection, for Core statements on tables the ORM does not write here (no autoflush
    to wait for), and the statements for its dialect."""
    connection = session.connection()
    return connection, _statements(connection.dialect.name)


@dataclass(frozen=True, slots=True)
class Compiled:
    key: str
    version: int
    node: Node
    refs: References
    test: conditions.Test = field(init=False, repr=False, compare=False)  # the node, compiled

    def __post_init__(self) -> None:
        object.__setattr__(self, "test", conditions.compile_test(self.node))


@dataclass(slots=True)
class Active:
    """The segments in force, compiled, in dependency order, with the indexes streaming uses."""

    stamp: tuple[Any, ...] = ()
    ordered: list[Compiled] = field(default_factory=list)
    by_key: dict[str, Compiled] = field(default_factory=dict)
    by_trait: dict[str, set[str]] = field(default_factory=dict)
    by_event: dict[str, set[str]] = field(default_factory=dict)
    consent: set[str] = field(default_factory=set)
    timed: set[str] = field(default_factory=set)  # may change with time alone (windows, consent expiry)
    dependents: dict[str, set[str]] = field(default_factory=dict)
    computed: dict[str, ComputedDefinition] = field(default_factory=dict)
    rank: dict[str, int] = field(default_factory=dict)  # each key's place in `ordered`

    def closure(self, keys: Iterable[str]) -> set[str]:
        """These segments and every segment that reads them, transitively."""
        found = set(keys)
        frontier = list(found)
        while frontier:
            for dependent in self.dependents.get(frontier.pop(), ()):
                if dependent not in found:
                    found.add(dependent)
                    frontier.append(dependent)
        return found


_cache: dict[str, Active] = {}
_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class Stamps:
    """(key, version, updated_at) of every definition in force, by key: what a change of one changes, so
    that what was compiled is compiled again only then."""

    segments: tuple[Any, ...]  # the segments', then the computed traits' (their keys after "~")
    journeys: tuple[Any, ...]


def _stamps_query() -> Select[Any]:
    s, c, j = Segment.__table__.c, ComputedTrait.__table__.c, Journey.__table__.c
    # The journeys' too, which streaming evaluates after the segments in the same transaction: one
    # statement for the three, a handful of rows.
    # The time as the database writes it: compared, never read as a time, so no row is parsed into one.
    parts = (
        select(literal(kind), t.key, t.version, cast_(t.updated_at, String))
        for kind, t in (("s", s), ("c", c), ("j", j))
    )
    return cast(Select[Any], union_all(*parts))


STAMPS = _stamps_query()


def stamps(session: Session, cache: FactsCache | None = None) -> Stamps:
    """The definitions' stamps, read now (once per transaction with a `cache`)."""
    if cache is not None and cache.stamps is not None:
        return cache.stamps
    rows = sorted(tuple(row) for row in session.connection().execute(STAMPS))
    found = Stamps(
        segments=tuple((k, v, u) for kind, k, v, u in rows if kind == "s")
        + tuple(("~" + k, v, u) for kind, k, v, u in rows if kind == "c"),
        journeys=tuple((k, v, u) for kind, k, v, u in rows if kind == "j"),
    )
    if cache is not None:
        cache.stamps = found
    return found


def active(session: Session, cache: FactsCache | None = None) -> Active:
    """The segments in force: one small aggregate read (none when `cache` holds them); compiled again only
    after a change."""
    if cache is not None and cache.segments is not None:
        return cache.segments
    found = _active(session, stamps(session, cache).segments)
    if cache is not None:
        cache.segments = found
    return found


def _active(session: Session, stamp: tuple[Any, ...]) -> Active:
    s, c = Segment.__table__.c, ComputedTrait.__table__.c
    bind = str(session.get_bind().engine.url)
    cached = _cache.get(bind)
    if cached is not None and cached.stamp == stamp:
        return cached
    rows = session.execute(select(s.key, s.version, s.condition).order_by(s.key)).all()
    definitions = {key: computed_traits.parse(doc) for key, doc in session.execute(select(c.key, c.definition))}
    compiled = compile_segments([(key, version, condition) for key, version, condition in rows], stamp, definitions)
    with _lock:
        _cache[bind] = compiled
    return compiled


def compile_segments(
    rows: list[tuple[str, int, dict[str, Any]]],
    stamp: tuple[Any, ...] = (),
    definitions: Mapping[str, ComputedDefinition] | None = None,
) -> Active:
    result = Active(stamp=stamp, computed=dict(definitions or {}))
    for key, version, document in rows:
        node = conditions.parse(document)
        result.by_key[key] = Compiled(key, version, node, with_computed(conditions.references(node), result.computed))
    for key, item in result.by_key.items():
        for trait in item.refs.traits:
            result.by_trait.setdefault(trait, set()).add(key)
        for event in item.refs.events:
            result.by_event.setdefault(event, set()).add(key)
        if item.refs.purposes:
            result.consent.add(key)
            result.timed.add(key)  # a grant can lapse
        if item.refs.timed:
            result.timed.add(key)
        for other in item.refs.segments:
            result.dependents.setdefault(other, set()).add(key)
    result.ordered = [result.by_key[key] for key in dependency_order(result.by_key)]
    result.rank = {item.key: place for place, item in enumerate(result.ordered)}
    result.timed = result.closure(result.timed)
    return result


def with_computed(refs: References, definitions: Mapping[str, ComputedDefinition]) -> References:
    """What a condition reads once its computed traits are resolved to the events they aggregate."""
    found = [definitions[key] for key in refs.computed if key in definitions]
    if not found:
        return refs
    return replace(
        refs,
        events=refs.events | {d.event for d in found},
        timed=refs.timed or any(d.within is not None for d in found),
        needs_properties=refs.needs_properties or any(d.where or d.property for d in found),
    )


def dependency_order(segments: Mapping[str, Compiled]) -> list[str]:
    """Keys with every segment a condition reads before it (saving refuses cycles; a missing one reads as
    empty)."""
    order: list[str] = []
    state: dict[str, int] = {}

    def visit(key: str) -> None:
        if state.get(key) == 2:
            return
        if state.get(key) == 1:
            raise ValueError(f"segment {key!r} is part of a cycle")
        state[key] = 1
        for other in sorted(segments[key].refs.segments):
            if other in segments:
                visit(other)
        state[key] = 2
        order.append(key)

    for key in sorted(segments):
        visit(key)
    return order


def _chunks(values: list[str], size: int = CHUNK) -> Iterable[list[str]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


@dataclass(slots=True)
class FactsCache:
    """What one transaction's evaluations read of its profiles (traits, the events of the names read, and
    segment memberships as the segments' evaluation wrote them) and of the segments in force, so that the
    journeys evaluated after the segments do not read and decrypt them again. Valid only while nothing
    else writes traits, events, memberships or definitions: the pipeline makes one after its writes and
    drops it at commit."""

    entries: dict[str, _Loaded] = field(default_factory=dict)
    stamps: Stamps | None = None
    segments: Active | None = None
    # {profile id: the segments it is in}, as the segments' evaluation left them (written)
    memberships: dict[str, set[str]] = field(default_factory=dict)
    # {profile id: the profile it was merged into; None: live, or not stored}, of the profiles read
    merged_into: dict[str, str | None] = field(default_factory=dict)
    # The long histories a worker keeps from one run to the next (None: every history is read whole)
    histories: Histories | None = None
    hits: int = 0
    misses: int = 0


@dataclass(slots=True)
class _Loaded:
    traits: Mapping[str, Any] | None  # None: not a live profile
    events: dict[str, list[tuple[datetime, Mapping[str, Any]]]]
    names: frozenset[str]
    properties: bool
    merged_into: str | None = None


def load_facts(
    session: Session,
    profile_ids: list[str],
    segments: Iterable[Compiled],
    now: datetime,
    definitions: Mapping[str, ComputedDefinition] | None = None,
    cache: FactsCache | None = None,
) -> dict[str, Facts]:
    """The facts the given segments read, for the live profiles among `profile_ids`; with a `cache`, what
    an earlier call of the same transaction read of a profile is used again when it covers these segments."""
    wanted = list(segments)
    definitions = definitions or {}
    names = frozenset(name for item in wanted for name in item.refs.events)
    properties = any(item.refs.needs_properties for item in wanted)
    purposes = {purpose for item in wanted for purpose in item.refs.purposes}
    ids = sorted(set(profile_ids))
    loaded: dict[str, _Loaded] = {}
    if cache is not None:
        for pid in ids:
            entry = cache.entries.get(pid)
            if entry is not None and names <= entry.names and (entry.properties or not properties):
                loaded[pid] = entry
        cache.hits += len(loaded)
        cache.misses += len(ids) - len(loaded)
    missing = [pid for pid in ids if pid not in loaded]
    histories = cache.histories if cache is not None else None
    fresh = _read_facts(session, missing, names, properties, histories) if missing else {}
    if cache is not None:
        cache.entries.update(fresh)
        cache.merged_into.update((pid, entry.merged_into) for pid, entry in fresh.items())
    loaded.update(fresh)
    facts = {
        pid: Facts(traits=entry.traits, events=entry.events)
        for pid, entry in loaded.items()
        if entry.traits is not None
    }
    if purposes and facts:
        _load_consent(session, facts, purposes, now)
    if definitions and any(item.refs.computed for item in wanted):
        for found in facts.values():
            found.computed = _computer(found, definitions, now)
    return facts


def _read_facts(
    session: Session, ids: list[str], names: frozenset[str], properties: bool, histories: Histories | None = None
) -> dict[str, _Loaded]:
    """The profiles' traits, and their events of `names`, with the properties opened when `properties`.
    With `histories`, the events of profiles with long histories come from there: what is kept of them,
    and what was added since (`accord.segments.histories`)."""
    connection, statements = _core(session)
    dialect = connection.dialect.name
    found: dict[str, _Loaded] = {}
    keys = DataKeys.of(session) if properties and names else None
    opener = Opener.of(session)
    listed_names = listed(sorted(names), dialect)
    kept: set[str] = set()  # kept in `histories`: their events come from there
    if histories is not None and names:
        kept = {pid for pid in ids if histories.covers(pid, names, properties)}
    long: set[str] = set()  # read here, and to be kept: as many events as a history worth keeping
    for chunk in _chunks(ids):
        listed_ids = listed(chunk, dialect)
        profile_rows = connection.execute(statements.profiles, {"ids": listed_ids}).all()
        opener.load(row[2] for row in profile_rows if row[3] is None)  # personal traits, decrypted once
        for profile_id, traits, sealed, merged_into in profile_rows:
            if merged_into is not None:
                found[profile_id] = _Loaded(None, {}, names, properties, merged_into)
            else:
                whole = (traits or {}) if sealed is None else opener.traits(profile_id, traits, sealed)
                found[profile_id] = _Loaded(whole, {}, names, properties)
        read = [pid for pid in chunk if pid not in kept]
        if names and read:
            query = statements.events if keys is None else statements.sealed_events
            listed_ids = listed(read, dialect) if kept else listed_ids
            rows = connection.execute(query, {"ids": listed_ids, "names": listed_names}).all()
            if histories is not None:
                counts = Counter(row[0] for row in rows)
                long.update(pid for pid, count in counts.items() if count >= histories.min_events)
            if keys is not None:  # every data key the chunk's payloads are sealed under, in one query
                keys.load({key for row in rows if (key := sealed_by(row[3])) is not None})
            for row in rows:
                entry = found.get(row[0])
                if entry is not None and entry.traits is not None:
                    # The properties are in the encrypted payload.
                    props = {} if keys is None else opened_properties(keys, row[4], row[5], row[3])
                    entry.events.setdefault(row[1], []).append((row[2], props))
    if histories is not None:
        every_key = keys or DataKeys.of(session)
        for pid in sorted(kept | long):
            entry = found.get(pid)
            if entry is not None and entry.traits is not None:
                entry.events = histories.read(session, connection, pid, names, properties, every_key)
    return found


def _computer(found: Facts, definitions: Mapping[str, ComputedDefinition], now: datetime) -> Any:
    cache: dict[str, Any] = {}

    def value(key: str) -> Any:
        if key not in cache:
            definition = definitions.get(key)
            events = found.events.get(definition.event, []) if definition else []
            cache[key] = None if definition is None else computed_traits.compute(definition, events, now)
        return cache[key]

    return value


def _load_consent(session: Session, facts: dict[str, Facts], purposes: set[str], now: datetime) -> None:
    views = {key: consent_catalogue.get_purpose(session, key) for key in sorted(purposes)}
    p = PROFILES.c
    owner = {pid: pid for pid in facts}
    for chunk in _chunks(sorted(facts)):
        for absorbed, survivor in session.execute(select(p.id, p.merged_into).where(p.merged_into.in_(chunk))):
            owner[absorbed] = survivor
    states: dict[str, list[consent_service.State]] = {}
    for chunk in _chunks(sorted(owner)):
        for row in session.scalars(select(ConsentState).where(ConsentState.profile_id.in_(chunk))):
            states.setdefault(owner[row.profile_id], []).append(
                consent_service.State(
                    row.purpose, row.channel, row.status, row.seq, row.record_id, row.occurred_at, row.expires_at
                )
            )
    for profile_id, found in facts.items():
        folded = consent_service.fold(states.get(profile_id, []))

        def allowed(purpose: str, channel: str, folded: Any = folded) -> bool:
            view = views.get(purpose)
            return view is not None and consent_service.decide(view, channel, folded, now).allowed

        found.allowed = allowed


def memberships(session: Session, profile_ids: Iterable[str], cache: FactsCache | None = None) -> dict[str, set[str]]:
    """{profile id: the segments it is in} as stored (a profile in no segment may be left out); with a
    `cache`, what the segments' evaluation of the same transaction left, read once."""
    ids = sorted(set(profile_ids))
    stored: dict[str, set[str]] = {}
    if cache is not None:
        stored = {pid: cache.memberships[pid] for pid in ids if pid in cache.memberships}
        ids = [pid for pid in ids if pid not in stored]
    if ids:
        connection, statements = _core(session)
        for chunk in _chunks(ids):
            for key, profile_id in connection.execute(
                statements.memberships, {"ids": listed(chunk, connection.dialect.name)}
            ):
                stored.setdefault(profile_id, set()).add(key)
        if cache is not None:
            for pid in ids:
                cache.memberships[pid] = stored.setdefault(pid, set())
    return stored


ALL = None  # in a `wanted` map: every segment


@dataclass(slots=True)
class Changes:
    entered: list[tuple[str, str]] = field(default_factory=list)  # (segment, profile)
    exited: list[tuple[str, str]] = field(default_factory=list)


def refresh(
    session: Session,
    wanted: Mapping[str, set[str] | None],
    now: datetime,
    *,
    segments: Active | None = None,
    cache: FactsCache | None = None,
    also: Iterable[str] = (),
) -> Changes:
    """Re-evaluate, for each profile in `wanted`, the segments named (None: all), and every segment that
    reads them; write memberships and transitions for what changed. Profiles no longer live (merged away)
    lose their memberships. With a `cache`, the memberships after the changes of these profiles and of
    those in `also` are left in it."""
    segments = segments or active(session)
    changes = Changes()
    if not wanted:
        return changes
    every = frozenset(segments.by_key)
    per_profile = {
        pid: every if keys is None else segments.closure(k for k in keys if k in segments.by_key)
        for pid, keys in wanted.items()
    }
    rank = segments.rank
    needed = {key for keys in per_profile.values() for key in keys}
    stored = memberships(session, [*wanted, *also], cache)
    evaluated = [pid for pid, keys in per_profile.items() if keys]
    facts = load_facts(session, evaluated, (segments.by_key[k] for k in needed), now, segments.computed, cache)
    # Not live (merged away, or not stored): where they point is read once, for their memberships here
    # and, through the cache, for the journeys' positions.
    others = [pid for pid in per_profile if pid not in facts and (cache is not None or stored.get(pid))]
    pointers = _merged_into(session, others) if others else {}
    if cache is not None:
        cache.merged_into.update((pid, pointers.get(pid)) for pid in others)
    gone: list[str] = []
    for profile_id, keys in per_profile.items():
        current = stored.get(profile_id, set())
        found = facts.get(profile_id)
        if found is None:
            if current and (profile_id not in pointers or pointers[profile_id] is not None):
                gone.append(profile_id)
            continue
        found.segments = set(current)
        # In dependency order: every segment, or those wanted (a few, mostly)
        items = segments.ordered if keys is every else [segments.by_key[k] for k in sorted(keys, key=rank.__getitem__)]
        for item in items:
            inside = item.test(found, now)
            if inside and item.key not in current:
                found.segments.add(item.key)
                changes.entered.append((item.key, profile_id))
            elif not inside and item.key in current:
                found.segments.discard(item.key)
                changes.exited.append((item.key, profile_id))
    connection, statements = _core(session)
    for chunk in _chunks(gone):
        connection.execute(statements.drop, {"ids": listed(chunk, connection.dialect.name)})
    write(session, changes, segments, now)
    if cache is not None:
        for pid in gone:
            cache.memberships[pid] = set()
        for key, pid in changes.entered:
            cache.memberships.setdefault(pid, set()).add(key)
        for key, pid in changes.exited:
            cache.memberships.get(pid, set()).discard(key)
    return changes


def _merged_into(session: Session, profile_ids: list[str]) -> dict[str, str | None]:
    """{profile id: the profile it was merged into, None if live}, of those among these that are stored."""
    connection, statements = _core(session)
    found: dict[str, str | None] = {}
    for chunk in _chunks(sorted(profile_ids)):
        rows = connection.execute(statements.merged_into, {"ids": listed(chunk, connection.dialect.name)})
        found.update((pid, merged_into) for pid, merged_into in rows)
    return found


def write(session: Session, changes: Changes, segments: Active, now: datetime) -> None:
    if changes.entered:
        insert_rows(
            session,
            MEMBERSHIPS,
            [{"segment_key": key, "profile_id": pid, "entered_at": now} for key, pid in changes.entered],
        )
    if changes.exited:
        connection, statements = _core(session)
        for start in range(0, len(changes.exited), CHUNK):
            connection.execute(statements.leave, {"pairs": listed_pairs(changes.exited[start : start + CHUNK])})
    rows = [
        {"segment_key": key, "profile_id": pid, "kind": kind, "version": segments.by_key[key].version, "at": now}
        for kind, found in (("entered", changes.entered), ("exited", changes.exited))
        for key, pid in found
    ]
    if rows:
        insert_rows(session, TRANSITIONS, rows)


def profiles_after(session: Session, after: str | None, limit: int) -> tuple[list[str], str | None, int]:
    """The live profiles among the next `limit` profiles by id after `after`, the last id looked at (None
    if none), and how many were looked at (fewer than `limit`: the end). Walks the primary key: a filter
    on merged_into could make the planner sort the whole table for each chunk."""
    p = PROFILES.c
    query = select(p.id, p.merged_into).order_by(p.id).limit(limit)
    if after is not None:
        query = query.where(p.id > after)
    rows = session.execute(query).all()
    live = [pid for pid, merged_into in rows if merged_into is None]
    return live, (rows[-1][0] if rows else None), len(rows)


def lock_profiles(session: Session, where: ColumnElement[bool]) -> None:
    """On PostgreSQL, lock the profile rows `where` selects, in id order as the pipeline locks them, so
    that a backfill or sweep and the pipeline write a profile's memberships one after the other."""
    if session.get_bind().dialect.name == "postgresql":
        p = PROFILES.c
        session.execute(select(p.id).where(where).order_by(p.id).with_for_update()).all()


@dataclass(frozen=True, slots=True)
class Range:
    walked: int  # profiles in the range, live or merged away
    last: str | None  # the range's last profile id; None: nothing after `after`
    end: bool  # the range reached the last profile


def refresh_range(
    session: Session, item: Compiled, where: ColumnElement[bool], *, after: str | None, limit: int, now: datetime
) -> Range:
    """What `refresh` does for one segment over the next `limit` profiles by id, done by the database:
    `where` is the segment's condition as SQL (accord.segments.pushdown). For a segment no other reads.
    The range is found through the primary key's index alone: reading a profile row costs a lookup in
    another order than the ids', which the condition's one pass pays, and nothing else should."""
    p, m = PROFILES.c, MEMBERSHIPS.c
    later, found = _next_range(session, after, limit)
    if found.last is None:
        return found
    walked, last, end = found.walked, found.last, found.end
    # Live, tested so that no index on merged_into can be chosen (SQLite would walk every live profile).
    live_profile = func.coalesce(p.merged_into, "") == ""
    in_range = and_(later, p.id <= last, live_profile)
    lock_profiles(session, in_range)
    at, t = literal(now, UTCDateTime), TRANSITIONS.c
    columns = ["segment_key", "profile_id", "kind", "version", "at"]
    # Exits first, so that only the members from before are checked again.
    leaving = and_(
        m.segment_key == item.key,
        m.profile_id > after if after is not None else true(),
        m.profile_id <= last,
        exists().where(p.id == m.profile_id, live_profile, not_(where)),
    )
    row = (literal(item.key), m.profile_id, literal("exited"), literal(item.version), at)
    session.execute(insert(TRANSITIONS).from_select(columns, select(*row).where(leaving)))
    session.execute(delete(MEMBERSHIPS).where(leaving))
    # Entries: the condition is evaluated once, for the transitions; the memberships are copied from them.
    # Nobody else writes transitions of these profiles meanwhile (they are locked, or SQLite's writer is us).
    before = session.scalar(select(func.coalesce(func.max(t.id), 0)))
    member = exists().where(m.segment_key == item.key, m.profile_id == p.id)
    if session.get_bind().dialect.name == "postgresql":
        # Asked of the primary key once per profile (OFFSET 0 keeps PostgreSQL from turning it into a join):
        # as a join, statistics taken before the segment had members (a new segment's backfill) made it
        # compare every profile of a range with every member of the segment so far, a nested loop that
        # grew with each range (a 200,000-profile backfill: 3.7 s, 74.6 s with fresh statistics of profiles).
        member = exists(select(literal(1)).where(m.segment_key == item.key, m.profile_id == p.id).offset(0))
    row = (literal(item.key), p.id, literal("entered"), literal(item.version), at)
    session.execute(insert(TRANSITIONS).from_select(columns, select(*row).where(in_range, where, not_(member))))
    entered = select(t.segment_key, t.profile_id, t.at).where(
        t.id > before,
        # Not through the index on segment_key, which would walk every earlier transition of the segment.
        func.coalesce(t.segment_key, "") == item.key,
        t.kind == "entered",
        t.profile_id > (after or ""),
        t.profile_id <= last,
    )
    session.execute(insert(MEMBERSHIPS).from_select(["segment_key", "profile_id", "entered_at"], entered))
    return Range(int(walked), str(last), end)


def candidates_range(
    session: Session, key: str, candidates: ColumnElement[bool], *, after: str | None, walk: int, limit: int
) -> tuple[list[str], Range]:
    """The next range of at most `walk` profiles after `after` (by id), cut short so that it holds at most
    `limit` profiles to evaluate: the live ones `candidates` holds for, or that are in the segment now.
    Those and the range. With `candidates` true wherever the segment's condition is (`pushdown.candidates`),
    the other profiles of the range are outside it before and after: a refresh of the ones returned does
    the whole range. On PostgreSQL the profiles returned are locked."""
    p, m = PROFILES.c, MEMBERSHIPS.c
    later, found = _next_range(session, after, walk)
    if found.last is None:
        return [], found
    # Live, tested so that no index on merged_into can be chosen (SQLite would walk every live profile).
    in_range = and_(later, p.id <= found.last, func.coalesce(p.merged_into, "") == "")
    member = exists().where(m.segment_key == key, m.profile_id == p.id)
    query = select(p.id).where(in_range, or_(candidates, member)).order_by(p.id).limit(limit)
    if session.get_bind().dialect.name == "postgresql":
        # Only the profiles to evaluate are locked, not the whole range: the others are outside the segment
        # before and after, whatever a writer does to them meanwhile (a writer of a profile's facts locks
        # it, and evaluates this segment for it if the change can make it a candidate). Each lock writes
        # its row's page: locking every profile walked (20,000 a step) was most of such a backfill's time.
        query = query.with_for_update(of=PROFILES)
    ids = list(session.scalars(query))
    if len(ids) < limit or ids[-1] == found.last:
        return ids, found
    walked = session.scalar(select(func.count()).select_from(PROFILES).where(later, p.id <= ids[-1]))
    return ids, Range(int(walked or 0), ids[-1], False)  # cut short after the last one to evaluate


def _next_range(session: Session, after: str | None, walk: int) -> tuple[ColumnElement[bool], Range]:
    """The next `walk` profiles by id after `after` (fewer at the end), found through the primary key's
    index alone: the test for being after `after`, and the range (Range(0, None, True) when none is left)."""
    p = PROFILES.c
    later = p.id > after if after is not None else true()
    last = session.scalar(select(p.id).where(later).order_by(p.id).limit(1).offset(walk - 1))
    if last is not None:
        return later, Range(walk, last, False)
    walked, last = session.execute(select(func.count(), func.max(p.id)).where(later)).one()
    return later, Range(int(walked), last, True) if walked else Range(0, None, True)


def count_profiles(session: Session) -> int:
    """Every stored profile, merged away or not: what a backfill walks."""
    return int(session.scalar(select(func.count()).select_from(PROFILES)) or 0)


def recompute(session: Session, now: datetime, *, segments: Active | None = None) -> set[tuple[str, str]]:
    """Every (segment, profile) membership as a fresh batch evaluation gives it, stored memberships
    ignored. Reads only; for checks and tests."""
    segments = segments or active(session)
    result: set[tuple[str, str]] = set()
    after: str | None = None
    while True:
        ids, last, _ = profiles_after(session, after, CHUNK)
        if last is None:
            return result
        facts = load_facts(session, ids, segments.ordered, now, segments.computed)
        for profile_id, found in facts.items():
            found.segments = set()
            for item in segments.ordered:
                if item.test(found, now):
                    found.segments.add(item.key)
                    result.add((item.key, profile_id))
        after = last


def live_of(session: Session, profile_ids: list[str]) -> set[str]:
    """The live profiles these ids are, or were merged into."""
    p = PROFILES.c
    found: set[str] = set()
    for chunk in _chunks(sorted(set(profile_ids))):
        for profile_id, merged_into in session.execute(
            select(p.id, p.merged_into).where(one_of(p.id, chunk, session.get_bind().dialect.name))
        ):
            found.add(merged_into or profile_id)
    return found
