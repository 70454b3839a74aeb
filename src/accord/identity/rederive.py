"""Re-deriving a conflicted cluster: replay its events in canonical order and rewrite its profiles.

A cluster is a set of profiles that events link although limits or an unmerge keep them apart. Its
partition is defined as `graph.partition` over the cluster's events; the worker reaches the same result
incrementally whenever events arrive in order, and calls `rederive` when one arrived too late to be placed
incrementally, as does an unmerge. The caller holds the locks of every live profile of the cluster.
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, select
from sqlalchemy.orm import Session

from accord.consent.service import reattribute
from accord.identity import match_index
from accord.identity.blind import TABLE as IDENTITY_TABLE
from accord.identity.blind import protect, seal_value
from accord.identity.graph import Evidence, Partition, Separation, Separations, partition
from accord.identity.models import Identity, Merge, SeparationRow
from accord.identity.rules import Key, Rules
from accord.profiles import private
from accord.profiles.models import Profile, ProfileEvent
from accord.profiles.projection import ProfileState, apply_event
from accord.profiles.sealed import open_payload, reseal_payload
from accord.security.crypto import Undecryptable, aad
from accord.security.datakeys import DataKeys, keyring_of

PROFILES = cast(Table, Profile.__table__)
EVENTS = cast(Table, ProfileEvent.__table__)
IDENTITIES = cast(Table, Identity.__table__)
MERGES = cast(Table, Merge.__table__)
SEPARATIONS = cast(Table, SeparationRow.__table__)


@dataclass(slots=True)
class Rederived:
    cluster_id: str
    profiles: list[str] = field(default_factory=list)  # the live profiles after, in creation order
    redirected: dict[str, str] = field(default_factory=dict)  # other profile ids -> the live profile they resolve to
    moved_events: list[tuple[str, str, str, str]] = field(default_factory=list)  # (source, messageId, from, to)
    history_id: int | None = None


@dataclass(slots=True)
class _StoredEvent:
    id: int
    source_id: str
    message_id: str
    timestamp: datetime
    profile_id: str
    payload: dict[str, Any]
    stored: Any  # the payload as stored (sealed)
    anchor: Key | None = None


def rederive(
    session: Session, cluster_id: str, *, rules: Rules, now: datetime, cause: dict[str, Any] | None
) -> Rederived:
    """Replay the cluster's events and rewrite its identities, profiles and timeline to the result."""
    done = _rederive(session, cluster_id, rules=rules, now=now, cause=cause)
    rows = session.execute(
        select(PROFILES.c.id, PROFILES.c.traits, PROFILES.c.traits_enc).where(PROFILES.c.id.in_(done.profiles))
    ).all()
    opener = private.Opener.of(session)
    opener.load(sealed for _, _, sealed in rows)
    traits = {profile_id: opener.traits(profile_id, clear, sealed) for profile_id, clear, sealed in rows}
    match_index.refresh(session, match_index.current_settings(session), traits, done.redirected)
    return done


def _rederive(
    session: Session, cluster_id: str, *, rules: Rules, now: datetime, cause: dict[str, Any] | None
) -> Rederived:
    p = PROFILES.c
    members = {
        row["id"]: row
        for row in session.execute(
            select(PROFILES).where(p.cluster_id == cluster_id, p.merged_into.is_(None)).order_by(p.id)
        ).mappings()
    }
    i = IDENTITIES.c
    stored: dict[Key, dict[str, Any]] = {}
    if members:
        for row in session.execute(select(IDENTITIES).where(i.profile_id.in_(sorted(members)))).mappings():
            stored[(row["type"], row["value"])] = dict(row)
    for row in session.execute(select(IDENTITIES).where(i.cluster_id == cluster_id)).mappings():
        stored[(row["type"], row["value"])] = dict(row)
    events = _events(session, sorted(members))
    plain: dict[Key, str] = {}
    evidence = _evidence(session, events, stored, rules, plain)
    separations = Separations(
        Separation(sid, frozenset(left), frozenset(right))
        for sid, left, right in session.execute(
            select(SEPARATIONS.c.id, SEPARATIONS.c.left, SEPARATIONS.c.right).where(
                SEPARATIONS.c.cluster_id == cluster_id
            )
        )
    )
    homes = {key: row["home_id"] for key, row in stored.items() if row["home_id"]}
    result = partition(evidence, rules, homes, separations)
    return _write(session, cluster_id, members, stored, events, result, homes, plain, now=now, cause=cause)


def _events(session: Session, member_ids: list[str]) -> list[_StoredEvent]:
    e = EVENTS.c
    found: list[_StoredEvent] = []
    keys = DataKeys.of(session)
    for start in range(0, len(member_ids), 500):
        chunk = member_ids[start : start + 500]
        for event_id, source_id, message_id, timestamp, profile_id, stored in session.execute(
            select(e.id, e.source_id, e.message_id, e.timestamp, e.profile_id, e.payload).where(e.profile_id.in_(chunk))
        ):
            payload = open_payload(keys, source_id, message_id, stored)
            found.append(_StoredEvent(event_id, source_id, message_id, timestamp, profile_id, payload, stored))
    return found


def _evidence(
    session: Session,
    events: list[_StoredEvent],
    stored: dict[Key, dict[str, Any]],
    rules: Rules,
    plain: dict[Key, str],
) -> list[Evidence]:
    """Each event's identity evidence under the rules in force. Keys held outside the cluster (possible only
    after a change of rules) are left out: a cluster never reaches into profiles it has not locked."""
    extracted: list[tuple[_StoredEvent, list[Key], list[Key]]] = []
    unknown: set[Key] = set()
    keyring = keyring_of(session)
    for event in events:
        identifiers = protect(rules, keyring, rules.identifiers(event.payload), plain)
        lookups = rules.lookups(identifiers) if identifiers else []
        unknown.update(k for k in (*identifiers, *lookups) if k not in stored)
        extracted.append((event, identifiers, lookups))
    outside = _held_elsewhere(session, unknown)
    evidence = []
    for event, identifiers, lookups in extracted:
        ids = tuple(k for k in identifiers if k not in outside)
        event.anchor = ids[0] if ids else None
        evidence.append(
            Evidence(
                order=(event.timestamp, event.message_id, event.source_id),
                identifiers=ids,
                lookups=tuple(k for k in lookups if k not in outside),
            )
        )
    return evidence


def _held_elsewhere(session: Session, keys: set[Key]) -> set[Key]:
    i = IDENTITIES.c
    by_type: dict[str, list[str]] = {}
    for kind, value in keys:
        by_type.setdefault(kind, []).append(value)
    found: set[Key] = set()
    for kind, values in by_type.items():
        for start in range(0, len(values), 500):
            chunk = values[start : start + 500]
            found.update((kind, v) for v in session.scalars(select(i.value).where(i.type == kind, i.value.in_(chunk))))
    return found


def _names(
    result: Partition, stored: dict[Key, dict[str, Any]], homes: dict[Key, str], created: dict[str, datetime]
) -> list[str]:
    """A profile id for each group: the oldest profile that is home to one of its identifiers and not taken
    by an earlier group (so an unmerged profile gets its own id back); else a new id."""
    taken: set[str] = set()
    names = []
    for group in result.groups:
        candidates = sorted(
            {h for key in group.keys if (h := homes.get(key)) is not None and h in created},
            key=lambda h: (created[h], h),
        )
        name = next((h for h in candidates if h not in taken), None) or str(uuid.uuid4())
        taken.add(name)
        names.append(name)
    return names


def _write(
    session: Session,
    cluster_id: str,
    members: dict[str, Any],
    stored: dict[Key, dict[str, Any]],
    events: list[_StoredEvent],
    result: Partition,
    homes: dict[Key, str],
    plain: dict[Key, str],
    *,
    now: datetime,
    cause: dict[str, Any] | None,
) -> Rederived:
    p = PROFILES.c
    involved = set(members) | {row["home_id"] for row in stored.values() if row["home_id"]}
    existing = {
        row["id"]: row for row in session.execute(select(PROFILES).where(p.id.in_(sorted(involved)))).mappings()
    }
    # Only profiles of this cluster: its live members, and absorbed profiles (never a live one elsewhere).
    created = {
        pid: row["created_at"] for pid, row in existing.items() if pid in members or row["merged_into"] is not None
    }
    names = _names(result, stored, homes, created)
    name_of_group = {group.index: names[n] for n, group in enumerate(result.groups)}
    owner = {key: name_of_group[index] for key, index in result.owner.items()}
    done = Rederived(cluster_id=cluster_id, profiles=names)

    # Where every other profile id now resolves: to the group holding most identifiers homed there, or
    # failing that most of the identifiers it holds now.
    votes: dict[str, Counter[str]] = {}
    for key, row in stored.items():
        target = owner.get(key)
        if target is None:
            continue
        for pid in {row["home_id"], row["profile_id"]} - {None}:
            votes.setdefault(pid, Counter())[target] += 2 if pid == row["home_id"] else 1
    first = names[0] if names else None
    for pid in sorted(set(created) - set(names)):
        counter = votes.get(pid)
        target = min(counter, key=lambda n: (-counter[n], names.index(n))) if counter else first
        if target is not None:
            done.redirected[pid] = target

    # Profiles: each live one is the projection of its events.
    states: dict[str, ProfileState] = {}
    for name in names:
        existing_row = existing.get(name)
        states[name] = ProfileState(
            id=name,
            created_at=existing_row["created_at"] if existing_row is not None else now,
            first_seen=now,
            last_seen=now,
            identity_counts=dict(result.groups[names.index(name)].counts),
            cluster_id=cluster_id,
        )
    seen: set[str] = set()
    moves: list[dict[str, Any]] = []
    for event in sorted(events, key=lambda e: (e.timestamp, e.message_id, e.source_id)):
        target = owner.get(event.anchor) if event.anchor is not None else None
        if target is None:
            target = event.profile_id if event.profile_id in states else done.redirected.get(event.profile_id, first)
        if target is None:
            continue
        state = states[target]
        if target not in seen:
            state.first_seen = state.last_seen = event.timestamp
            seen.add(target)
        apply_event(state, event.payload, event.timestamp, event.source_id)
        if target != event.profile_id:
            moves.append({"event_id": event.id, "profile_id": target, "stored": event})
            done.moved_events.append((event.source_id, event.message_id, event.profile_id, target))
    # Personal traits sealed under the key of the profile they are now on (an unmerge gives some back).
    opener = private.Opener.of(session)
    personal = private.personal(session)
    opener.load(row["traits_enc"] for row in existing.values())
    trait_columns: dict[str, dict[str, Any]] = {}
    for s in states.values():
        was = existing.get(s.id)
        trait_columns[s.id] = opener.store(s.id, s.traits, personal, was["traits_enc"] if was is not None else None)
    private.index_names(
        session,
        {
            **{pid: set() for pid in done.redirected},
            **{s.id: private.name_words(s.traits) for s in states.values()},
        },
    )
    profile_rows = [
        {
            "id": s.id,
            "merged_into": None,
            **trait_columns[s.id],
            "trait_versions": s.trait_versions,
            "counts": s.counts,
            "identity_counts": s.identity_counts,
            "cluster_id": cluster_id,
            "first_seen": s.first_seen,
            "last_seen": s.last_seen,
            "created_at": s.created_at,
            "updated_at": now,
        }
        for s in states.values()
    ]
    new_rows = [r for r in profile_rows if r["id"] not in existing]
    if new_rows:
        session.execute(PROFILES.insert(), new_rows)
    old_rows = [{**r, "pid": r["id"]} for r in profile_rows if r["id"] in existing]
    if old_rows:
        columns = [c for c in profile_rows[0] if c not in ("id", "created_at")]
        session.execute(
            PROFILES.update().where(p.id == bindparam("pid")).values({c: bindparam(c) for c in columns}),
            [{k: v for k, v in r.items() if k != "id" and k != "created_at"} for r in old_rows],
        )
    if done.redirected:
        session.execute(
            PROFILES.update().where(p.id == bindparam("pid")).values(merged_into=bindparam("target")),
            [{"pid": pid, "target": target} for pid, target in sorted(done.redirected.items())],
        )
        # Profiles absorbed earlier into one of these follow it.
        session.execute(
            PROFILES.update().where(p.merged_into == bindparam("pid")).values(merged_into=bindparam("target")),
            [{"pid": pid, "target": target} for pid, target in sorted(done.redirected.items())],
        )

    # Identities: attached to their group's profile, or left out (dropped) and remembered in the cluster.
    i = IDENTITIES.c
    updates: list[dict[str, Any]] = []
    inserts: list[dict[str, Any]] = []
    keys = DataKeys.of(session)
    for key in sorted(set(stored) | set(result.owner) | result.dropped):
        target = owner.get(key)
        stored_row = stored.get(key)
        if target is None and key not in result.dropped and stored_row is not None:
            current = stored_row["profile_id"]  # not in any event under today's rules: keep it with its profile
            target = current if current in states else done.redirected.get(current or "", None)
        home = (stored_row["home_id"] if stored_row else None) or homes.get(key) or target
        values = {
            "profile_id": target,
            "home_id": home,
            "cluster_id": None if target else cluster_id,
        }
        owner_id = target or home or next(iter(sorted(members)), cluster_id)
        if stored_row is None:
            sealed = seal_value(keys, owner_id, key, plain[key]) if key in plain else None
            inserts.append(
                {"type": key[0], "value": key[1], "value_enc": sealed, **values, "first_seen": now, "message_id": ""}
            )
        elif any(stored_row[k] != v for k, v in values.items()):
            sealed = stored_row["value_enc"]
            if sealed is not None and target is not None and target != stored_row["profile_id"]:
                sealed = _reseal(keys, key, sealed, target)
            updates.append({"key_type": key[0], "key_value": key[1], "sealed": sealed, **values})
    if inserts:
        session.execute(IDENTITIES.insert(), inserts)
    if updates:
        session.execute(
            IDENTITIES.update()
            .where(i.type == bindparam("key_type"), i.value == bindparam("key_value"))
            .values(
                profile_id=bindparam("profile_id"),
                home_id=bindparam("home_id"),
                cluster_id=bindparam("cluster_id"),
                value_enc=bindparam("sealed"),
            ),
            updates,
        )
    if moves:
        for move in moves:
            moved = move.pop("stored")
            move["sealed"] = reseal_payload(keys, move["profile_id"], moved.source_id, moved.message_id, moved.stored)
        session.execute(
            EVENTS.update()
            .where(EVENTS.c.id == bindparam("event_id"))
            .values(profile_id=bindparam("profile_id"), payload=bindparam("sealed")),
            moves,
        )
    if done.moved_events:
        reattribute(session, done.moved_events, now)
    history = session.execute(
        MERGES.insert()
        .returning(MERGES.c.id)
        .values(
            kind="rederive",
            survivor_id=cluster_id,
            absorbed_id="",
            merged_at=now,
            details={
                "cause": cause or {"kind": "late_event"},
                "profiles": names,
                "redirected": done.redirected,
                "moved_events": len(moves),
            },
        )
    )
    done.history_id = history.scalar()
    return done


def _reseal(keys: DataKeys, key: Key, sealed: str, target: str) -> str:
    """An identifier that goes to another profile (an unmerge) is encrypted again under that profile's key,
    so that erasing either side later leaves nothing of it readable under the other side's key."""
    where = aad(IDENTITY_TABLE, key[0], key[1])
    try:
        value = keys.decrypt(sealed, where)
    except Undecryptable:
        return sealed
    return keys.encrypt(target, value, where)
