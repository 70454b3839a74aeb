"""Computed traits: an analyst's read-only SQL over an analytical view of profiles and events, whose
result becomes a trait of each profile it names.

The view is a snapshot: live profiles and their events are streamed out of Accord's database into two CSV
files, and the query runs in a DuckDB of its own that may read those two files and nothing else. Each
result row (`profile_id`, `value`) becomes an identify call for one of the profile's identifiers, appended
to the event log like any event, so the trait is set by the processor, last-writer-wins, and remembers
where it came from (source `computed-traits`, run `computed:NAME`). A value that has not changed since
the last run is the same event (same messageId) and adds nothing.
"""

from __future__ import annotations

import csv
import hashlib
import re
import shutil
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import orjson
from sqlalchemy import select

from accord.db.engine import Database
from accord.identity.models import Identity
from accord.identity.service import current_rules
from accord.ingest.spec import MAX_EVENT_BYTES, iso
from accord.log.port import EventLog, NewRecord
from accord.profiles.models import Profile, ProfileEvent
from accord.sources.service import create_source, list_sources

SOURCE_NAME = "computed-traits"
TRAIT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,99}$")
MAX_SQL = 20_000
STREAM = 5000
RECORD_EVENTS = 500
PLACES = {"user_id": "userId", "anonymous_id": "anonymousId"}
DEVICE = {"device_id": "id", "advertising_id": "advertisingId"}


class ComputedTraitError(ValueError):
    """A computed trait that cannot run; the message says why."""


@dataclass(frozen=True, slots=True)
class ComputedRun:
    name: str
    rows: int  # result rows
    appended: int  # events written to the log (a value unchanged since the last run is not)
    skipped: int  # rows naming no live profile, or a profile without a usable identifier
    seconds: float


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    return str(value)


def snapshot(db: Database, folder: Path) -> tuple[Path, Path]:
    """The analytical view's two relations as CSV files: profiles and events (streamed, never held whole)."""
    folder.mkdir(parents=True, exist_ok=True)
    profiles, events = folder / "profiles.csv", folder / "events.csv"
    p, e = Profile.__table__.c, ProfileEvent.__table__.c
    with db.read() as session, profiles.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["profile_id", "traits", "first_seen", "last_seen", "created_at"])
        rows = session.execute(
            select(p.id, p.traits, p.first_seen, p.last_seen, p.created_at).where(p.merged_into.is_(None)),
            execution_options={"yield_per": STREAM},
        )
        for row in rows:
            writer.writerow([_text(v) for v in row])
    with db.read() as session, events.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["profile_id", "source_id", "type", "event", "timestamp", "properties"])
        rows = session.execute(
            select(e.profile_id, e.source_id, e.type, e.event, e.timestamp, e.payload),
            execution_options={"yield_per": STREAM},
        )
        for row in rows:
            profile_id, source_id, kind, name, at, payload = tuple(row)
            properties = payload.get("properties") if isinstance(payload, dict) else None
            writer.writerow([profile_id, source_id, kind, name or "", _text(at), _text(properties or {})])
    return profiles, events


def _query(sql: str, profiles: Path, events: Path) -> list[tuple[Any, Any]]:
    connection = duckdb.connect(config={"threads": 2, "memory_limit": "1GB"})
    try:
        connection.execute("SET TimeZone='UTC'")
        connection.execute("SET allowed_paths=?", [[str(profiles), str(events)]])
        connection.execute("SET enable_external_access=false")
        connection.execute("SET lock_configuration=true")
        connection.execute(
            "CREATE VIEW profiles AS SELECT * FROM read_csv(?, header=true, auto_detect=false, columns={"
            "'profile_id': 'VARCHAR', 'traits': 'VARCHAR', 'first_seen': 'TIMESTAMPTZ', 'last_seen': 'TIMESTAMPTZ', "
            "'created_at': 'TIMESTAMPTZ'})".replace("?", "'" + str(profiles).replace("'", "''") + "'")
        )
        connection.execute(
            "CREATE VIEW events AS SELECT * FROM read_csv(?, header=true, auto_detect=false, columns={"
            "'profile_id': 'VARCHAR', 'source_id': 'VARCHAR', 'type': 'VARCHAR', 'event': 'VARCHAR', "
            "'timestamp': 'TIMESTAMPTZ', 'properties': 'VARCHAR'})".replace(
                "?", "'" + str(events).replace("'", "''") + "'"
            )
        )
        try:
            result = connection.execute(f"SELECT * FROM ({sql}) AS computed LIMIT 0")  # noqa: S608 (sandboxed)
            names = [str(c[0]) for c in result.description or []]
            if "profile_id" not in names or "value" not in names:
                raise ComputedTraitError(f"the query must return columns profile_id and value, not {names[:10]}")
            return [
                (row[0], row[1])
                for row in connection.execute(
                    f"SELECT CAST(profile_id AS VARCHAR), value FROM ({sql}) AS computed"  # noqa: S608
                ).fetchall()
            ]
        except duckdb.Error as error:
            raise ComputedTraitError(f"the query failed: {str(error).splitlines()[0][:300]}") from None
    finally:
        connection.close()


def _json_value(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, datetime):
        return iso(value)
    return str(value)


def run_computed_trait(db: Database, log: EventLog, *, name: str, sql: str, folder: Path, now: datetime) -> ComputedRun:
    """Compute trait `name` for every profile the query's result names, through the event log."""
    started = datetime.now().timestamp()
    if not TRAIT_NAME.match(name):
        raise ComputedTraitError("the trait name must be 1 to 100 letters, digits or _, not starting with a digit")
    if not sql.strip() or len(sql) > MAX_SQL or ";" in sql.strip().rstrip(";"):
        raise ComputedTraitError(f"the query must be one SELECT of at most {MAX_SQL} characters")
    work = folder / f"computed-{uuid.uuid4().hex}"
    try:
        profiles, events = snapshot(db, work)
        results = _query(sql.strip().rstrip(";"), profiles, events)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    with db.unit_of_work() as session:
        source = next((s for s in list_sources(session) if s.name == SOURCE_NAME), None)
        source_id = source.id if source is not None else create_source(session, name=SOURCE_NAME).id
    with db.read() as session:
        rules = current_rules(session)
        wanted = sorted({str(p) for p, _ in results if p is not None})
        keys: dict[str, list[tuple[str, str]]] = {}
        for start in range(0, len(wanted), 500):
            for kind, value, profile_id in session.execute(
                select(Identity.type, Identity.value, Identity.profile_id).where(
                    Identity.profile_id.in_(wanted[start : start + 500])
                )
            ):
                if profile_id is not None:
                    keys.setdefault(profile_id, []).append((kind, value))
    built: list[tuple[dict[str, Any], bytes]] = []
    skipped = 0
    stamp = iso(now)
    for profile_id, value in results:
        identifiers = sorted(keys.get(str(profile_id), []), key=lambda k: (rules.rank.get(k[0], 999), k[1]))
        usable = [k for k in identifiers if k[0] in rules.limits and k[0] != "alias"]
        if not usable:
            skipped += 1
            continue
        event = _identify(usable[0], name, _json_value(value))
        digest = hashlib.blake2b(orjson.dumps([name, str(profile_id), event["traits"][name]]), digest_size=16)
        event.update(
            messageId=f"ct_{digest.hexdigest()}",
            timestamp=stamp,
            receivedAt=stamp,
            _accord={"run": f"computed:{name}"},
        )
        encoded = orjson.dumps(event)
        if len(encoded) > MAX_EVENT_BYTES or b"\\u0000" in encoded:
            skipped += 1
            continue
        built.append((event, encoded))
    appended = _append(db, log, source_id, built, now)
    return ComputedRun(
        name=name,
        rows=len(results),
        appended=appended,
        skipped=skipped,
        seconds=round(datetime.now().timestamp() - started, 3),
    )


def _identify(key: tuple[str, str], name: str, value: Any) -> dict[str, Any]:
    kind, text = key
    event: dict[str, Any] = {"type": "identify", "traits": {name: value}}
    if kind in PLACES:
        event[PLACES[kind]] = text
    elif kind in ("email", "phone"):
        event["traits"][kind] = text
    elif kind in DEVICE:
        event["context"] = {"device": {DEVICE[kind]: text}}
    else:
        event["context"] = {"externalIds": [{"type": kind, "id": text, "collection": "users"}]}
    return event


def _append(
    db: Database, log: EventLog, source_id: str, built: list[tuple[dict[str, Any], bytes]], now: datetime
) -> int:
    """Append the events the store does not hold already; returns how many."""
    from accord.sources.imports import stored_message_ids

    fresh: list[tuple[dict[str, Any], bytes]] = []
    for start in range(0, len(built), STREAM):
        part = built[start : start + STREAM]
        with db.read() as session:
            present = stored_message_ids(session, source_id, [e["messageId"] for e, _ in part])
        fresh += [(e, d) for e, d in part if e["messageId"] not in present]
    for start in range(0, len(fresh), RECORD_EVENTS):
        part = fresh[start : start + RECORD_EVENTS]
        log.append(
            NewRecord(
                source_id=source_id,
                received_at=now,
                events=[e for e, _ in part],
                payload=b"[" + b",".join(d for _, d in part) + b"]",
            )
        )
    return len(fresh)
