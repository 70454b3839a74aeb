"""Processing a run of logged events in one transaction: dedupe, identity, profile, timeline.

The work is done in memory for the whole run and written with a few set-based statements; a
failure of one event's own data sends that event to quarantine and leaves the others alone.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

import orjson
from psycopg.types.json import Jsonb
from sqlalchemy import Table, bindparam, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from accord.consent.capture import Capture, is_consent_event
from accord.db.base import utcnow
from accord.identity.models import Identity, Merge
from accord.identity.service import Key, event_identifiers, lookup_keys
from accord.ingest import quarantine
from accord.ingest.spec import parse_time
from accord.profiles.models import Profile, ProfileEvent
from accord.profiles.projection import ProfileState, absorb, apply_event

# The tables, for set-based Core statements on the hot path (the ORM's per-row work costs too much).
PROFILES = cast(Table, Profile.__table__)
EVENTS = cast(Table, ProfileEvent.__table__)
IDENTITIES = cast(Table, Identity.__table__)
MERGES = cast(Table, Merge.__table__)


class StaleRead(Exception):
    """A profile changed under us (merged by another worker); the transaction must be retried."""


@dataclass(slots=True)
class Outcome:
    processed: int = 0
    duplicates: int = 0
    quarantined: int = 0
    merges: int = 0


@dataclass(slots=True)
class _Run:
    """The in-memory state of one run: profiles touched, identities known, and what to write."""

    profiles: dict[str, ProfileState] = field(default_factory=dict)
    identities: dict[Key, str] = field(default_factory=dict)
    new_identities: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    merges: list[dict[str, Any]] = field(default_factory=list)
    absorbed_existing: list[str] = field(default_factory=list)

    def live(self, profile_id: str) -> ProfileState:
        state = self.profiles[profile_id]
        while state.merged_into is not None:
            state = self.profiles[state.merged_into]
        return state


Item = tuple[str, dict[str, Any]]  # (source_id, normalised event)


@dataclass(slots=True)
class _Parsed:
    """An event that passed its own checks, with what the run needs from it, worked out once."""

    source_id: str
    event: dict[str, Any]
    timestamp: datetime
    received_at: datetime
    identifiers: list[Key]
    keys: list[Key]  # identifiers plus the alias links to look up


def process_events(session: Session, items: list[Item], *, lock_rows: bool, consent: Capture | None = None) -> Outcome:
    """Apply `items` in order. The caller owns the transaction and commits. With `consent`, consent
    statements in the events (a `Consent Updated` event, a GPC signal) go into the consent ledger."""
    outcome = Outcome()
    fresh = _drop_duplicates(session, items, outcome)
    if not fresh:
        return outcome
    parsed: list[_Parsed] = []
    for source_id, event in fresh:
        try:
            timestamp = parse_time(event["timestamp"], "timestamp")
            received_at = parse_time(event["receivedAt"], "receivedAt")
            identifiers = event_identifiers(event)
            if not identifiers:
                raise ValueError("the event carries no usable identifier (all were empty or placeholders)")
        except Exception as error:  # the event's own data is bad: quarantine it, go on
            quarantine.put(session, source_id, event, error)
            outcome.quarantined += 1
            continue
        keys = lookup_keys(event, identifiers)
        parsed.append(_Parsed(source_id, event, timestamp, received_at, identifiers, keys))
    run = _Run()
    _load(session, run, [key for item in parsed for key in item.keys], lock_rows=lock_rows)
    now = utcnow()
    statements: list[tuple[str, str, dict[str, Any], datetime]] = []
    for item in parsed:
        state = _resolve(run, item, now, outcome)
        apply_event(state, item.event, item.timestamp, item.source_id)
        if consent is not None and is_consent_event(item.event):
            statements.append((state.id, item.source_id, item.event, item.timestamp))
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
    if statements and consent is not None:
        # After the profiles exist; a bad statement fails the batch, and the one-by-one retry quarantines it.
        consent.record(session, statements, now)
    return outcome


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
    events = EVENTS.c
    for source_id, message_ids in by_source.items():
        for chunk in _chunks(message_ids):
            stored.update(
                (source_id, m)
                for m in session.scalars(
                    select(events.message_id).where(events.source_id == source_id, events.message_id.in_(chunk))
                )
            )
    if not stored:
        return unique
    outcome.duplicates += sum(1 for s, e in unique if (s, e["messageId"]) in stored)
    return [(s, e) for s, e in unique if (s, e["messageId"]) not in stored]


def _load(session: Session, run: _Run, keys: list[Key], *, lock_rows: bool) -> None:
    """Read the identities these keys name and lock (on PostgreSQL) the profiles they point at."""
    by_type: dict[str, list[str]] = {}
    for kind, value in set(keys):
        by_type.setdefault(kind, []).append(value)
    identities = IDENTITIES.c
    for kind, values in by_type.items():
        for chunk in _chunks(values):
            for value, profile_id in session.execute(
                select(identities.value, identities.profile_id).where(
                    identities.type == kind, identities.value.in_(chunk)
                )
            ):
                run.identities[(kind, value)] = profile_id
    profile_ids = sorted(set(run.identities.values()))
    if not profile_ids:
        return
    # Sorted, so concurrent workers lock in one order and cannot deadlock on profiles.
    query = select(PROFILES).where(PROFILES.c.id.in_(profile_ids)).order_by(PROFILES.c.id)
    if lock_rows:
        query = query.with_for_update()
    for row in session.execute(query).mappings():
        if row["merged_into"] is not None:
            raise StaleRead(f"profile {row['id']} was merged while this run read it")
        run.profiles[row["id"]] = ProfileState(
            id=row["id"],
            created_at=row["created_at"],
            first_seen=row["first_seen"],
            last_seen=row["last_seen"],
            traits=dict(row["traits"]),
            trait_versions=dict(row["trait_versions"]),
            counts={group: dict(names) for group, names in row["counts"].items()},
        )
    if len(run.profiles) != len(profile_ids):
        raise StaleRead("an identity points at a profile that is gone")


def _chunks(values: list[str], size: int = 500) -> list[list[str]]:
    return [values[start : start + size] for start in range(0, len(values), size)]


def _resolve(run: _Run, item: _Parsed, now: datetime, outcome: Outcome) -> ProfileState:
    """The profile this event belongs to: found, created, or several merged into one."""
    source_id, event, timestamp = item.source_id, item.event, item.timestamp
    matched: dict[str, Key] = {}
    for key in item.keys:
        profile_id = run.identities.get(key)
        if profile_id is not None:
            matched.setdefault(run.live(profile_id).id, key)
    if not matched:
        state = ProfileState(
            id=str(uuid.uuid4()), created_at=now, first_seen=timestamp, last_seen=timestamp, is_new=True
        )
        run.profiles[state.id] = state
    else:
        candidates = sorted((run.profiles[pid] for pid in matched), key=lambda p: (p.created_at, p.id))
        state = candidates[0]
        for other in candidates[1:]:
            absorb(state, other)
            kind, value = matched[other.id]
            run.merges.append(
                {
                    "survivor_id": state.id,
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
    for key in item.identifiers:
        if key not in run.identities:
            run.identities[key] = state.id
            run.new_identities.append(
                {
                    "type": key[0],
                    "value": key[1],
                    "profile_id": state.id,
                    "first_seen": timestamp,
                    "message_id": event["messageId"],
                }
            )
    return state


def _write(session: Session, run: _Run, now: datetime) -> None:
    def row(state: ProfileState) -> dict[str, Any]:
        return {
            "id": state.id,
            "merged_into": run.live(state.id).id if state.merged_into else None,
            "traits": state.traits,
            "trait_versions": state.trait_versions,
            "counts": state.counts,
            "first_seen": state.first_seen,
            "last_seen": state.last_seen,
            "updated_at": now,
        }

    rows = [{**row(s), "created_at": s.created_at} for s in run.profiles.values() if s.dirty]
    if rows:
        # One multi-row upsert for new and changed profiles alike.
        upsert = (pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert)(PROFILES)
        session.execute(
            upsert.on_conflict_do_update(
                index_elements=[PROFILES.c.id],
                set_={name: upsert.excluded[name] for name in rows[0] if name not in ("id", "created_at")},
            ),
            rows,
        )
    if run.absorbed_existing:
        # Everything that pointed at an absorbed profile now points at its survivor.
        moves = [{"old": a, "new": run.live(a).id} for a in run.absorbed_existing]
        session.execute(
            IDENTITIES.update().where(IDENTITIES.c.profile_id == bindparam("old")).values(profile_id=bindparam("new")),
            moves,
        )
        session.execute(
            EVENTS.update().where(EVENTS.c.profile_id == bindparam("old")).values(profile_id=bindparam("new")),
            moves,
        )
        session.execute(
            PROFILES.update().where(PROFILES.c.merged_into == bindparam("old")).values(merged_into=bindparam("new")),
            moves,
        )
    if run.new_identities:
        for identity in run.new_identities:
            identity["profile_id"] = run.live(identity["profile_id"]).id
        session.execute(IDENTITIES.insert(), run.new_identities)
    if run.events:
        for event in run.events:
            event["profile_id"] = run.live(event["profile_id"]).id
        _insert_events(session, run.events)
    if run.merges:
        session.execute(MERGES.insert(), run.merges)


_EVENT_COLUMNS = ("profile_id", "source_id", "message_id", "type", "event", "timestamp", "received_at", "payload")


def _insert_events(session: Session, rows: list[dict[str, Any]]) -> None:
    """The timeline rows: COPY on PostgreSQL (a fraction of the round trips and parsing of INSERT)."""
    if session.get_bind().dialect.name != "postgresql":
        session.execute(EVENTS.insert(), rows)
        return
    connection = session.connection().connection.driver_connection
    statement = f"COPY {EVENTS.name} ({', '.join(_EVENT_COLUMNS)}) FROM STDIN"
    with connection.cursor() as cursor, cursor.copy(statement) as copy:  # type: ignore[union-attr]
        for row in rows:
            copy.write_row([Jsonb(row[c], dumps=orjson.dumps) if c == "payload" else row[c] for c in _EVENT_COLUMNS])
