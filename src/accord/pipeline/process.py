"""Processing a run of logged events in one transaction: dedupe, identity, profile, timeline.

The work is done in memory for the whole run and written with a few set-based statements; a
failure of one event's own data sends that event to quarantine and leaves the others alone.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, fields
from datetime import datetime
from functools import cache, lru_cache
from typing import Any, cast

from sqlalchemy import CompoundSelect, Select, Table, Update, bindparam, func, select, union_all
from sqlalchemy.orm import Session

from accord.consent.capture import Capture, is_consent_event
from accord.db.base import listed, one_of_bound, one_of_bound_under, utcnow
from accord.db.bulk import insert_rows, upsert_rows
from accord.identity import match_index
from accord.identity.blind import protect, seal_value
from accord.identity.graph import Separation, Separations, Tag, place
from accord.identity.matching import MatchSettings
from accord.identity.models import Identity, Merge, SeparationRow
from accord.identity.rederive import rederive
from accord.identity.rules import Key, Rules
from accord.identity.service import RULES_STAMP, current_rules
from accord.ingest import quarantine
from accord.ingest.spec import parse_time
from accord.journeys import streaming as journey_streaming
from accord.profiles import private
from accord.profiles.models import Profile, ProfileEvent
from accord.profiles.projection import ProfileState, absorb, apply_event
from accord.profiles.sealed import seal_payload
from accord.rights import service as rights
from accord.security import nonces
from accord.security.datakeys import DATA_KEYS, DataKeys, keyring_of
from accord.segments import histories, streaming
from accord.segments.evaluate import FactsCache

# The tables, for set-based Core statements on the hot path (the ORM's per-row work costs too much).
PROFILES = cast(Table, Profile.__table__)
EVENTS = cast(Table, ProfileEvent.__table__)
IDENTITIES = cast(Table, Identity.__table__)
MERGES = cast(Table, Merge.__table__)
SEPARATIONS = cast(Table, SeparationRow.__table__)
LOOKUPS_PER_STATEMENT = 8  # identity lookups (one per type and chunk of values) sent as one statement


class StaleRead(Exception):
    """A profile changed under us (merged by another worker); the transaction must be retried."""


@dataclass(slots=True)
class Outcome:
    processed: int = 0
    duplicates: int = 0
    quarantined: int = 0
    merges: int = 0
    rederived: int = 0
    suppressed: int = 0  # carried an erased person's identifier: dropped, counted on the tombstone

    def add(self, other: Outcome) -> None:
        """Count `other`'s events in with these (the transactions of one claim)."""
        for counted in fields(self):
            setattr(self, counted.name, getattr(self, counted.name) + getattr(other, counted.name))


@dataclass(slots=True)
class _Run:
    """The in-memory state of one run: profiles touched, identities known, and what to write. It is also
    the graph that `place` reads (owner, counts and tags of live profiles)."""

    rules: Rules
    personal: private.Personal  # which traits are sealed
    matching: MatchSettings | None  # what the blocking index is kept under (None: no model, no index)
    profiles: dict[str, ProfileState] = field(default_factory=dict)
    identities: dict[Key, str] = field(default_factory=dict)  # attached keys -> profile (maybe absorbed since)
    homes: dict[Key, str] = field(default_factory=dict)
    dropped: dict[Key, str] = field(default_factory=dict)  # keys a limit left out -> their cluster
    dropped_stored: set[Key] = field(default_factory=set)  # of the dropped keys, those with a row already
    separations: Separations = field(default_factory=Separations)
    new_identities: dict[Key, dict[str, Any]] = field(default_factory=dict)
    attached_dropped: dict[Key, dict[str, Any]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    merges: list[dict[str, Any]] = field(default_factory=list)
    absorbed_existing: list[str] = field(default_factory=list)
    cluster_renames: list[tuple[str, str]] = field(default_factory=list)
    dirty_clusters: set[str] = field(default_factory=set)
    plain: dict[Key, str] = field(default_factory=dict)  # blind index -> value, of the run's personal identifiers
    owners: dict[Key, str] = field(default_factory=dict)  # new identity -> the profile whose data key seals it

    def live(self, profile_id: str) -> ProfileState:
        state = self.profiles[profile_id]
        while state.merged_into is not None:
            state = self.profiles[state.merged_into]
        return state

    def owner(self, key: Key) -> str | None:
        profile_id = self.identities.get(key)
        return None if profile_id is None else self.live(profile_id).id

    def counts(self, profile: str) -> dict[str, int]:
        return self.profiles[profile].identity_counts

    def tags(self, profile: str) -> set[Tag]:
        return self.profiles[profile].tags

    def key_tags(self, key: Key) -> set[Tag]:
        return self.separations.tags(self.homes.get(key))


Item = tuple[str, dict[str, Any]]  # (source_id, normalised event)


@dataclass(slots=True)
class _Parsed:
    """An event that passed its own checks, with what the run needs from it, worked out once."""

    source_id: str
    event: dict[str, Any]
    timestamp: datetime
    received_at: datetime
    identifiers: list[Key]  # highest priority first; personal values as their blind index
    lookups: list[Key]  # alias links to look up, never attached
    keys: list[Key]  # both
    values: list[Key]  # both, as the event gave them (the erased-identifier digests of older erasures)


def process_events(
    session: Session,
    items: list[Item],
    *,
    lock_rows: bool,
    consent: Capture | None = None,
    now: datetime | None = None,
) -> Outcome:
    """Apply `items`. The caller owns the transaction and commits. With `consent`, consent statements in the
    events (a `Consent Updated` event, a GPC signal) go into the consent ledger. Segment memberships and
    journey positions are evaluated as of `now` (default: the clock)."""
    outcome = Outcome()
    # The Core statements below run on the session's connection, which does not flush pending ORM changes
    # as session.execute does: flush the caller's first, so that the run reads what it wrote.
    session.flush()
    fresh = _drop_duplicates(session, items, outcome)
    if not fresh:
        return outcome
    rules, personal, matching = _configuration(session)
    keyring = keyring_of(session)
    plain: dict[Key, str] = {}
    parsed: list[_Parsed] = []
    for source_id, event in fresh:
        try:
            timestamp = parse_time(event["timestamp"], "timestamp")
            received_at = parse_time(event["receivedAt"], "receivedAt")
            given = rules.identifiers(event)
            if not given:
                raise ValueError("the event carries no usable identifier (all were empty, blocked or placeholders)")
        except Exception as error:  # the event's own data is bad: quarantine it, go on
            quarantine.put(session, source_id, event, error)
            outcome.quarantined += 1
            continue
        identifiers = protect(rules, keyring, given, plain)
        lookups = rules.lookups(identifiers)
        parsed.append(
            _Parsed(
                source_id,
                event,
                timestamp,
                received_at,
                identifiers,
                lookups,
                identifiers + lookups,
                given + rules.lookups(given) if rules.pii & {k for k, _ in given} else [],
            )
        )
    if consent is not None and parsed and rights.any_erased(session):
        by_item = [[*p.keys, *p.values] for p in parsed]
        dropped = rights.suppressed(session, consent.key, by_item, utcnow())
        outcome.suppressed += len(dropped)
        parsed = [p for position, p in enumerate(parsed) if position not in dropped]
    # In the canonical order, so that a run needs no re-derivation for events that are only out of order
    # among themselves (see docs/concepts.md, "Limits and order").
    parsed.sort(key=lambda p: (p.timestamp, p.event["messageId"], p.source_id))
    run = _Run(rules=rules, personal=personal, matching=matching, plain=plain)
    _load(session, run, [key for item in parsed for key in item.keys], lock_rows=lock_rows)
    now = now or utcnow()
    consent_events: list[tuple[_Parsed, str]] = []
    touches = streaming.Touches()
    for item in parsed:
        state = _resolve(run, item, now, outcome)
        apply_event(state, item.event, item.timestamp, item.source_id)
        touches.event(state.id, item.event, new=state.is_new)
        if consent is not None and is_consent_event(item.event):
            consent_events.append((item, state.id))
        run.events.append(
            {
                "profile_id": state.id,
                "source_id": item.source_id,
                "message_id": item.event["messageId"],
                "type": item.event["type"],
                "event": _event_name(item.event),
                "timestamp": item.timestamp,
                "received_at": item.received_at,
                "payload": item.event,
            }
        )
        outcome.processed += 1
    _write(session, run, now)
    touches.everything.update(merge["survivor_id"] for merge in run.merges)
    touches.gone.update(run.absorbed_existing)
    touches = touches.moved(lambda profile_id: run.live(profile_id).id)
    for cluster_id in sorted(run.dirty_clusters):
        done = rederive(session, cluster_id, rules=rules, now=now, cause=None)
        touches.everything.update(done.profiles)
        touches.gone.update(done.redirected)
        outcome.rederived += 1
    if consent_events and consent is not None:
        if run.dirty_clusters:
            consent_events = _current_profiles(session, consent_events)
        statements = [(profile_id, item.source_id, item.event, item.timestamp) for item, profile_id in consent_events]
        # After the profiles exist; a bad statement fails the batch, and the one-by-one retry quarantines it.
        consent.record(session, statements, now)  # re-evaluates the consent segments of these profiles
    # Journeys read what the segments read (traits, events of some names): one load serves both. Long
    # histories are kept from one run to the next, and only what was added is read (`segments.histories`).
    facts = FactsCache(histories=histories.of(session))
    changed = streaming.apply(session, touches, now, facts)
    journey_streaming.apply(session, touches, changed, now, facts)
    return outcome


def _configuration(session: Session) -> tuple[Rules, private.Personal, MatchSettings | None]:
    """The identity rules, the personal traits and the match model's settings in force. Each is cached per
    database and checked against its stamp; the three stamps are read in one statement, each run, so a
    change another process made is seen by the next run."""
    row = session.connection().execute(_stamps()).one()
    rules_end = len(RULES_STAMP)
    personal_end = rules_end + len(private.personal_stamp())
    return (
        current_rules(session, row[:rules_end]),
        private.personal(session, row[rules_end:personal_end]),
        match_index.current_settings(session, row[personal_end:]),
    )


@cache
def _stamps() -> Select[Any]:
    return select(*RULES_STAMP, *private.personal_stamp(), *match_index.MODEL_STAMP)


def _current_profiles(session: Session, found: list[tuple[_Parsed, str]]) -> list[tuple[_Parsed, str]]:
    """Where each event is after the run's re-derivations."""
    events = EVENTS.c
    where: dict[tuple[str, str], str] = {}
    for item, _ in found:
        row = session.execute(
            select(events.profile_id).where(
                events.source_id == item.source_id, events.message_id == item.event["messageId"]
            )
        ).first()
        if row is not None:
            where[(item.source_id, item.event["messageId"])] = row[0]
    return [(item, where.get((item.source_id, item.event["messageId"]), pid)) for item, pid in found]


def _event_name(event: dict[str, Any]) -> str | None:
    """The indexed name: a track's event, a page's or screen's name (cut to the column's size)."""
    name = event.get("event") if event["type"] == "track" else event.get("name")
    return name[:200] if isinstance(name, str) else None


def _drop_duplicates(session: Session, items: list[Item], outcome: Outcome) -> list[Item]:
    seen: set[tuple[str, str]] = set()
    unique: list[Item] = []
    for source_id, event in items:
        key = (source_id, event["messageId"])
        if key in seen:
            outcome.duplicates += 1
            continue
        seen.add(key)
        unique.append((source_id, event))
    stored: set[tuple[str, str]] = set()
    by_source: dict[str, list[str]] = {}
    for source_id, message_id in seen:
        by_source.setdefault(source_id, []).append(message_id)
    connection = session.connection()
    dialect = connection.dialect.name
    for source_id, message_ids in by_source.items():
        for chunk in _chunks(message_ids):
            found = connection.execute(
                _stored_messages(dialect), {"source_id": source_id, "message_ids": listed(chunk, dialect)}
            )
            stored.update((source_id, m) for m in found.scalars())
    if not stored:
        return unique
    outcome.duplicates += sum(1 for s, e in unique if (s, e["messageId"]) in stored)
    return [(s, e) for s, e in unique if (s, e["messageId"]) not in stored]


@cache
def _stored_messages(dialect: str) -> Select[str]:
    """Which of the messageIds bound as `message_ids` the source `source_id` has stored already."""
    e = EVENTS.c
    return select(e.message_id).where(
        one_of_bound_under(e.source_id, "source_id", e.message_id, "message_ids", dialect)
    )


def _read_identities(session: Session, keys: set[Key]) -> dict[Key, tuple[str | None, str | None, str | None]]:
    """(profile, home, cluster) of each stored key among `keys`."""
    by_type: dict[str, list[str]] = {}
    for kind, value in keys:
        by_type.setdefault(kind, []).append(value)
    connection = session.connection()
    dialect = connection.dialect.name
    # One lookup per type and chunk, each on the primary key; a few of them go as one statement.
    lookups = [(kind, chunk) for kind, values in sorted(by_type.items()) for chunk in _chunks(values)]
    found: dict[Key, tuple[str | None, str | None, str | None]] = {}
    for start in range(0, len(lookups), LOOKUPS_PER_STATEMENT):
        part = lookups[start : start + LOOKUPS_PER_STATEMENT]
        params: dict[str, str] = {}
        for n, (kind, chunk) in enumerate(part):
            params[f"type_{n}"] = kind
            params[f"values_{n}"] = listed(chunk, dialect)
        for kind, value, profile_id, home_id, cluster_id in connection.execute(
            _identity_lookups(dialect, len(part)), params
        ):
            found[(kind, value)] = (profile_id, home_id, cluster_id)
    return found


@lru_cache(maxsize=2 * LOOKUPS_PER_STATEMENT)
def _identity_lookups(dialect: str, count: int) -> Select[Any] | CompoundSelect[Any]:
    """`count` lookups of identities as one statement: of the type bound as `type_<n>`, the values bound as
    `values_<n>`."""
    i = IDENTITIES.c
    lookups = [
        select(i.type, i.value, i.profile_id, i.home_id, i.cluster_id).where(
            i.type == bindparam(f"type_{n}"), one_of_bound(i.value, f"values_{n}", dialect)
        )
        for n in range(count)
    ]
    return lookups[0] if count == 1 else union_all(*lookups)


def _load(session: Session, run: _Run, keys: list[Key], *, lock_rows: bool) -> None:
    """Read the identities these keys name, and read and lock (on PostgreSQL) the profiles they point at,
    with every live profile of their conflicted clusters. All in one statement, in id order, so concurrent
    workers lock in one order and cannot deadlock."""
    wanted = set(keys)
    found = _read_identities(session, wanted)
    for key, (profile_id, home_id, cluster_id) in found.items():
        if home_id is not None:
            run.homes[key] = home_id
        if profile_id is not None:
            run.identities[key] = profile_id
        else:
            run.dropped[key] = cluster_id or ""
            run.dropped_stored.add(key)
    profile_ids = sorted(set(run.identities.values()))
    cluster_ids = sorted({c for c in run.dropped.values() if c})
    if not profile_ids and not cluster_ids:
        return
    requested = set(profile_ids)
    connection = session.connection()
    dialect = connection.dialect.name
    rows = (
        connection.execute(
            _profiles_to_load(dialect, lock_rows),
            {"ids": listed(profile_ids, dialect), "clusters": listed(cluster_ids, dialect)},
        )
        .mappings()
        .all()
    )
    opener = private.Opener.of(session)
    # The data keys of the profiles came with them: their personal traits are sealed under them, and so are
    # the events and identities the run writes for them. The run reads no other.
    opener.keys.found((row["id"], row["kek_id"], row["wrapped"]) for row in rows)
    opener.load(row["traits_enc"] for row in rows)
    for row in rows:
        if row["merged_into"] is not None:
            raise StaleRead(f"profile {row['id']} was merged while this run read it")
        run.profiles[row["id"]] = ProfileState(
            id=row["id"],
            created_at=row["created_at"],
            first_seen=row["first_seen"],
            last_seen=row["last_seen"],
            traits=opener.traits(row["id"], row["traits"], row["traits_enc"]),
            sealed=row["traits_enc"],
            trait_versions=dict(row["trait_versions"]),
            counts={group: dict(names) for group, names in row["counts"].items()},
            identity_counts=dict(row["identity_counts"] or {}),
            cluster_id=row["cluster_id"],
        )
    if not requested <= run.profiles.keys():
        raise StaleRead("an identity points at a profile that is gone")
    clusters = {s.cluster_id for s in run.profiles.values() if s.cluster_id is not None}
    if clusters:
        _load_clusters(session, run, clusters, wanted, found, lock_rows=lock_rows)


# Live profiles (`merged_into IS NULL`), in a condition that the index on cluster_id should answer: SQLite
# keeps no statistics, takes the index on merged_into for a selective one, and walked every live profile
# through it (a run's slowest statement); written with coalesce, it uses the index on cluster_id.
_LIVE = func.coalesce(PROFILES.c.merged_into, "") == ""


@cache
def _profiles_to_load(dialect: str, lock_rows: bool) -> Select[Any]:
    """The profiles bound as `ids`, with every live profile of their conflicted clusters and of the clusters
    bound as `clusters`, in id order (locked, with `lock_rows`), each with its data key (`kek_id` and
    `wrapped`, None when it has none)."""
    p = PROFILES.c
    in_clusters = select(p.cluster_id).where(one_of_bound(p.id, "ids", dialect), p.cluster_id.is_not(None))
    condition = one_of_bound(p.id, "ids", dialect) | (
        _LIVE
        & p.cluster_id.is_not(None)  # implied, and said: the index on cluster_id is partial, of those not null
        & (p.cluster_id.in_(in_clusters.scalar_subquery()) | one_of_bound(p.cluster_id, "clusters", dialect))
    )
    query = (
        select(PROFILES, DATA_KEYS.c.kek_id, DATA_KEYS.c.wrapped)
        .select_from(PROFILES.outerjoin(DATA_KEYS, DATA_KEYS.c.id == p.id))
        .where(condition)
        .order_by(p.id)
    )
    return query.with_for_update(of=PROFILES) if lock_rows else query


def _load_clusters(
    session: Session,
    run: _Run,
    clusters: set[str],
    wanted: set[Key],
    found: dict[Key, tuple[str | None, str | None, str | None]],
    *,
    lock_rows: bool,
) -> None:
    """The slow path, for conflicted clusters: check that every member is locked and that no identity moved
    (a re-derivation may move identities between live profiles), then read their separations."""
    p = PROFILES.c
    members = set(session.scalars(select(p.id).where(p.cluster_id.in_(sorted(clusters)), _LIVE)))
    if not members <= run.profiles.keys():
        raise StaleRead("a conflicted cluster grew while this run read it")
    if lock_rows and _read_identities(session, wanted) != found:
        raise StaleRead("identities moved while this run read them")
    rows = session.execute(
        select(SEPARATIONS.c.id, SEPARATIONS.c.left, SEPARATIONS.c.right).where(
            SEPARATIONS.c.cluster_id.in_(sorted(clusters))
        )
    ).all()
    if not rows:
        return
    run.separations = Separations(Separation(i, frozenset(left), frozenset(right)) for i, left, right in rows)
    identities = IDENTITIES.c
    for profile_id, home_id in session.execute(
        select(identities.profile_id, identities.home_id).where(identities.profile_id.in_(sorted(members)))
    ):
        run.profiles[profile_id].tags |= run.separations.tags(home_id)


def _chunks(values: list[str], size: int = 500) -> list[list[str]]:
    return [values[start : start + size] for start in range(0, len(values), size)]


def _resolve(run: _Run, item: _Parsed, now: datetime, outcome: Outcome) -> ProfileState:
    """The profile this event belongs to: found, created, or several merged into one, within the limits.

    Applied in arrival order, this gives the canonical result whenever the event is later than every event
    of the profiles it touches, or whenever nothing conflicts. Otherwise its cluster is re-derived after the
    run's writes (see `accord.identity.rederive`)."""
    source_id, event, timestamp = item.source_id, item.event, item.timestamp
    touched = {run.live(pid).id for key in item.keys if (pid := run.identities.get(key)) is not None}
    plan = place(item.identifiers, item.lookups, run.rules, run)
    clusters = {c for pid in touched if (c := run.profiles[pid].cluster_id) is not None}
    clusters |= {c for key in item.identifiers if (c := run.dropped.get(key))}
    in_order = all(timestamp > run.profiles[pid].last_seen for pid in touched)
    if plan.profile is None:
        state = ProfileState(
            id=str(nonces.uuid4()), created_at=now, first_seen=timestamp, last_seen=timestamp, is_new=True
        )
        run.profiles[state.id] = state
    else:
        state = run.profiles[plan.profile]
    anchor_home = run.homes.get(plan.anchor, state.id)
    if plan.merges:
        found = {plan.profile: plan.anchor} if plan.profile else {}
        found.update(dict(plan.merges))
        candidates = sorted([state, *(run.profiles[pid] for pid, _ in plan.merges)], key=lambda s: (s.created_at, s.id))
        survivor = candidates[0]
        for other in candidates[1:]:
            absorb(survivor, other)
            kind, value = found.get(other.id, plan.anchor)
            run.merges.append(
                {
                    "kind": "merge",
                    "survivor_id": survivor.id,
                    "absorbed_id": other.id,
                    "identity_type": kind,
                    "identity_value": value,
                    "source_id": source_id,
                    "message_id": event["messageId"],
                    "merged_at": now,
                }
            )
            if not other.is_new:
                run.absorbed_existing.append(other.id)
            outcome.merges += 1
        state = survivor
    for key in plan.attach:
        run.owners[key] = state.id
        row = {
            "type": key[0],
            "value": key[1],
            "value_enc": None,
            "profile_id": state.id,
            "home_id": anchor_home,
            "cluster_id": None,
            "first_seen": timestamp,
            "message_id": event["messageId"],
        }
        run.identities[key] = state.id
        run.homes[key] = anchor_home
        state.identity_counts[key[0]] = state.identity_counts.get(key[0], 0) + 1
        state.tags |= run.key_tags(key)
        state.dirty = True
        if run.dropped.pop(key, None) is not None and key in run.dropped_stored:
            run.attached_dropped[key] = row
        else:
            run.new_identities[key] = row
    if plan.conflict or clusters:
        cluster = _join_clusters(run, clusters, {state.id, *touched, *(pid for pid, _ in plan.skipped)})
        for key in plan.dropped:
            run.dropped[key] = cluster
            if key not in run.dropped_stored:
                run.owners[key] = state.id
                run.new_identities[key] = {
                    "type": key[0],
                    "value": key[1],
                    "value_enc": None,
                    "profile_id": None,
                    "home_id": None,
                    "cluster_id": cluster,
                    "first_seen": timestamp,
                    "message_id": event["messageId"],
                }
        if not in_order:
            run.dirty_clusters.add(cluster)
    return state


def _join_clusters(run: _Run, clusters: set[str], profile_ids: set[str]) -> str:
    """Put these profiles, and every member of these clusters, into one conflicted cluster."""
    target = min(clusters) if clusters else str(uuid.uuid4())
    others = clusters - {target}
    if others:
        run.cluster_renames.extend((old, target) for old in sorted(others))
        for state in run.profiles.values():
            if state.cluster_id in others:
                state.cluster_id = target
                state.dirty = True
        for key, cluster in run.dropped.items():
            if cluster in others:
                run.dropped[key] = target
        for row in run.new_identities.values():
            if row["cluster_id"] in others:
                row["cluster_id"] = target
        if run.dirty_clusters & others:
            run.dirty_clusters -= others
            run.dirty_clusters.add(target)
    for profile_id in profile_ids:
        state = run.live(profile_id)
        if state.cluster_id != target:
            state.cluster_id = target
            state.dirty = True
    return target


def _write(session: Session, run: _Run, now: datetime) -> None:
    opener = private.Opener.of(session)
    personal = run.personal
    names: dict[str, set[str]] = {}

    def row(state: ProfileState) -> dict[str, Any]:
        # Personal traits are sealed under the profile's key; unchanged ones keep their ciphertext.
        stored = opener.store(state.id, state.traits, personal, state.sealed)
        if state.merged_into:
            names[state.id] = set()
        elif stored["traits_enc"] != state.sealed:
            words = private.name_words(state.traits)
            if words != private.name_words(opener.personal(state.id, state.sealed)):
                names[state.id] = words
        return {
            "id": state.id,
            "merged_into": run.live(state.id).id if state.merged_into else None,
            **stored,
            "trait_versions": state.trait_versions,
            "counts": state.counts,
            "first_seen": state.first_seen,
            "last_seen": state.last_seen,
            "identity_counts": state.identity_counts,
            "cluster_id": state.cluster_id,
            "updated_at": now,
        }

    # The data keys of new profiles in one go: live ones (their traits and events are sealed under them),
    # and those merged away within the run that hold personal traits (sealed under their own key, kept for
    # an unmerge). Those of the other profiles written were read with them (`_load`).
    keys = DataKeys.of(session)
    keys.create(
        {
            s.id
            for s in run.profiles.values()
            if s.is_new and (s.merged_into is None or (s.dirty and any(map(personal, s.traits))))
        },
        new=True,
    )
    rows = [{**row(s), "created_at": s.created_at} for s in run.profiles.values() if s.dirty]
    # One multi-row upsert for new and changed profiles alike.
    upsert_rows(session, PROFILES, rows, key="id", keep=("created_at",))
    connection = session.connection()
    private.index_names(session, names, new={s.id for s in run.profiles.values() if s.is_new})
    changed = {s.id: s.traits for s in run.profiles.values() if s.traits_changed and s.merged_into is None}
    if changed or run.absorbed_existing:
        match_index.refresh(session, run.matching, changed, run.absorbed_existing)
    if run.absorbed_existing:
        # Everything that pointed at an absorbed profile now points at its survivor.
        moves = [{"old": a, "new": run.live(a).id} for a in run.absorbed_existing]
        for statement in _MOVES:
            connection.execute(statement, moves)
    if run.cluster_renames:
        renames = [{"old": old, "new": new} for old, new in run.cluster_renames]
        for statement in _CLUSTER_RENAMES:
            connection.execute(statement, renames)
    # Inserts in key order: two workers inserting the same keys wait for each other in one order.
    if run.new_identities:
        _seal_identities(keys, run)
        rows = [run.new_identities[key] for key in sorted(run.new_identities)]
        for identity in rows:
            if identity["profile_id"] is not None:
                identity["profile_id"] = run.live(identity["profile_id"]).id
        insert_rows(session, IDENTITIES, rows)
    if run.attached_dropped:
        rows = [run.attached_dropped[key] for key in sorted(run.attached_dropped)]
        for identity in rows:
            identity["profile_id"] = run.live(identity["profile_id"]).id
        connection.execute(
            _ATTACH_DROPPED,
            [
                {"key_type": r["type"], "key_value": r["value"], "profile_id": r["profile_id"], "home_id": r["home_id"]}
                for r in rows
            ],
        )
    if run.events:
        for event in run.events:
            event["profile_id"] = run.live(event["profile_id"]).id
        # The timeline is encrypted under the data key of the profile each event lands on.
        keys.create({event["profile_id"] for event in run.events})
        for event in run.events:
            event["payload"] = seal_payload(
                keys, event["profile_id"], event["source_id"], event["message_id"], event["payload"]
            )
        run.events.sort(key=lambda e: (e["source_id"], e["message_id"]))
        insert_rows(session, EVENTS, run.events)
    if run.merges:
        insert_rows(session, MERGES, run.merges)


# What pointed at absorbed profiles (bound as `old`) points at their survivors (`new`).
_MOVES: tuple[Update, ...] = (
    IDENTITIES.update().where(IDENTITIES.c.profile_id == bindparam("old")).values(profile_id=bindparam("new")),
    EVENTS.update().where(EVENTS.c.profile_id == bindparam("old")).values(profile_id=bindparam("new")),
    PROFILES.update().where(PROFILES.c.merged_into == bindparam("old")).values(merged_into=bindparam("new")),
)
# Conflicted clusters joined: the members of cluster `old` are in cluster `new`.
_CLUSTER_RENAMES: tuple[Update, ...] = (
    PROFILES.update().where(PROFILES.c.cluster_id == bindparam("old")).values(cluster_id=bindparam("new")),
    IDENTITIES.update().where(IDENTITIES.c.cluster_id == bindparam("old")).values(cluster_id=bindparam("new")),
)
# A stored identity a limit left out is attached to a profile.
_ATTACH_DROPPED = (
    IDENTITIES.update()
    .where(IDENTITIES.c.type == bindparam("key_type"), IDENTITIES.c.value == bindparam("key_value"))
    .values(profile_id=bindparam("profile_id"), home_id=bindparam("home_id"), cluster_id=None)
)


def _seal_identities(keys: DataKeys, run: _Run) -> None:
    """Encrypt the personal values of the new identities, each under the data key of its event's profile
    (all keys made or read in two statements)."""
    sealed = [key for key in run.new_identities if key in run.plain]
    if not sealed:
        return
    keys.create({run.owners[key] for key in sealed})
    for key in sealed:
        run.new_identities[key]["value_enc"] = seal_value(keys, run.owners[key], key, run.plain[key])
