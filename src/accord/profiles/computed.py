"""Computed traits: an analyst's read-only SQL over an analytical view of profiles and events, whose
result becomes a trait of each profile it names.

The view is a snapshot: live profiles and their events are streamed out of Accord's database into two CSV
files, and the query runs in a DuckDB of its own that may read those two files and nothing else. Personal
data is masked in the snapshot itself (see `Masker`) unless the trait is declared to read it (`pii`), so a
query that sees masked data cannot get at the original whatever it does. Each result row (`profile_id`,
`value`) becomes an identify call for one of the profile's identifiers, appended to the event log like any
event, so the trait is set by the processor, last-writer-wins, and remembers where it came from (source
`computed-traits`, the run's id `ctr_...`). A value equal to the profile's current one adds nothing.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import os
import re
import shutil
import threading
import uuid
from collections.abc import Iterable
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
from accord.profiles.private import Opener, flagged_pii, is_pii_name
from accord.profiles.sealed import open_payload
from accord.security.datakeys import DataKeys
from accord.sources.service import create_source, list_sources

SOURCE_NAME = "computed-traits"
TRAIT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,99}$")
MAX_SQL = 20_000
STREAM = 5000
RECORD_EVENTS = 500
RUN_SECONDS = 900  # a query still running after this is interrupted
PREVIEW_SECONDS = 30
MAX_PREVIEW = 100
PLACES = {"user_id": "userId", "anonymous_id": "anonymousId"}
DEVICE = {"device_id": "id", "advertising_id": "advertisingId"}
MASK_PREFIX = "masked:"


class ComputedTraitError(ValueError):
    """A computed trait that cannot run; the message says why."""


@dataclass(frozen=True, slots=True)
class ComputedRun:
    name: str
    run_id: str  # what each trait it set remembers as its run (`ctr_...`)
    rows: int  # result rows
    appended: int  # events written to the log
    unchanged: int  # rows whose value the profile holds already
    skipped: int  # rows naming no live profile, or a profile without a usable identifier
    seconds: float


def new_run_id() -> str:
    return f"ctr_{uuid.uuid4().hex[:20]}"


class Masker:
    """Replaces personal data with a token: `masked:` and 16 hex digits of an HMAC under a key made for one
    snapshot and then forgotten. Equal values get equal tokens within a run (so counting distinct values
    and joining still work), and nothing leads back to the value."""

    def __init__(self, flagged: Iterable[str] = ()) -> None:
        self.flagged = set(flagged)
        self._key = os.urandom(32)

    def value(self, value: Any) -> Any:
        if value is None:
            return None
        digest = hmac.new(self._key, orjson.dumps(value, option=orjson.OPT_SORT_KEYS), hashlib.sha256)
        return MASK_PREFIX + digest.hexdigest()[:16]

    def document(self, document: Any, extra: Iterable[str] = ()) -> Any:
        """`document` with the values of PII names masked, at any depth."""
        marked = set(extra)
        if isinstance(document, dict):
            return {
                k: self.value(v) if k in marked or is_pii_name(k, self.flagged) else self.document(v)
                for k, v in document.items()
            }
        if isinstance(document, list):
            return [self.document(v) for v in document]
        return document


def holds_mask(value: Any) -> bool:
    """A value made from a mask (a query that passed personal data through). A help, not the protection:
    a query can hide a mask, but never get at what it masks."""
    return isinstance(value, str) and MASK_PREFIX in value.lower()


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    return str(value)


def _event_flags(payload: Any) -> list[str]:
    meta = payload.get("_accord") if isinstance(payload, dict) else None
    flags = meta.get("pii") if isinstance(meta, dict) else None
    return [f for f in flags if isinstance(f, str)] if isinstance(flags, list) else []


def snapshot(db: Database, folder: Path, masker: Masker | None = None) -> tuple[Path, Path]:
    """The analytical view's two relations as CSV files: profiles and events (streamed, never held whole).
    With a masker, personal data is masked as it is written: the files never hold it."""
    folder.mkdir(parents=True, exist_ok=True)
    profiles, events = folder / "profiles.csv", folder / "events.csv"
    p, e = Profile.__table__.c, ProfileEvent.__table__.c
    # Events first: the names their own PII flags mark are then masked in the profiles' traits too.
    with db.read() as session, events.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["profile_id", "source_id", "type", "event", "timestamp", "properties"])
        rows = session.execute(
            select(e.profile_id, e.source_id, e.type, e.event, e.timestamp, e.payload, e.message_id),
            execution_options={"yield_per": STREAM},
        )
        keys = DataKeys.of(session)
        for row in rows:
            profile_id, source_id, kind, name, at, stored, message_id = tuple(row)
            payload = open_payload(keys, source_id, message_id, stored)
            properties = (payload.get("properties") if isinstance(payload, dict) else None) or {}
            if masker is not None:
                flags = _event_flags(payload)
                masker.flagged.update(flags)
                properties = masker.document(properties, flags)
            writer.writerow([profile_id, source_id, kind, name or "", _text(at), _text(properties)])
    with db.read() as session, profiles.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["profile_id", "traits", "first_seen", "last_seen", "created_at"])
        rows = session.execute(
            select(p.id, p.traits, p.traits_enc, p.first_seen, p.last_seen, p.created_at).where(
                p.merged_into.is_(None)
            ),
            execution_options={"yield_per": STREAM},
        )
        opener = Opener.of(session)
        for part in rows.partitions():
            # The personal traits are decrypted even when masked: equal values must get equal masks.
            opener.load(row[2] for row in part)
            for profile_id, clear, sealed, *times in part:
                traits = opener.traits(profile_id, clear, sealed)
                shown = masker.document(traits) if masker is not None else traits
                writer.writerow([_text(v) for v in (profile_id, shown, *times)])
    return profiles, events


def _sandbox(work: Path, files: list[Path]) -> duckdb.DuckDBPyConnection:
    """A DuckDB that may read `files` and nothing else: no other file, no network, no extension (none is
    installed or loaded on demand), its settings locked; it spills to `work` only."""
    connection = duckdb.connect(
        config={
            "threads": 2,
            "memory_limit": "1GB",
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
        }
    )
    connection.execute("SET TimeZone='UTC'")
    connection.execute("SET temp_directory=?", [str(work / "spill")])
    connection.execute("SET allowed_paths=?", [[str(f) for f in files]])
    connection.execute("SET enable_external_access=false")
    connection.execute("SET lock_configuration=true")
    return connection


def _quoted(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def _query(
    sql: str, work: Path, profiles: Path, events: Path, *, limit: int | None, seconds: float
) -> list[tuple[Any, Any]]:
    connection = _sandbox(work, [profiles, events])
    timer = threading.Timer(seconds, connection.interrupt)
    try:
        connection.execute(
            "CREATE VIEW profiles AS SELECT * FROM read_csv("  # noqa: S608 (a path Accord made)
            + _quoted(profiles)
            + ", header=true, auto_detect=false, columns={'profile_id': 'VARCHAR', 'traits': 'VARCHAR', "
            "'first_seen': 'TIMESTAMPTZ', 'last_seen': 'TIMESTAMPTZ', 'created_at': 'TIMESTAMPTZ'})"
        )
        connection.execute(
            "CREATE VIEW events AS SELECT * FROM read_csv("  # noqa: S608 (a path Accord made)
            + _quoted(events)
            + ", header=true, auto_detect=false, columns={'profile_id': 'VARCHAR', 'source_id': 'VARCHAR', "
            "'type': 'VARCHAR', 'event': 'VARCHAR', 'timestamp': 'TIMESTAMPTZ', 'properties': 'VARCHAR'})"
        )
        timer.start()
        try:
            # Inside a subquery the text can only be a SELECT: COPY, ATTACH, INSTALL, SET, a data-modifying
            # WITH do not parse there, and `;` (a second statement) is refused before this.
            result = connection.execute(f"SELECT * FROM ({sql}) AS computed LIMIT 0")  # noqa: S608 (sandboxed)
            names = [str(c[0]) for c in result.description or []]
            if "profile_id" not in names or "value" not in names:
                raise ComputedTraitError(f"the query must return columns profile_id and value, not {names[:10]}")
            bound = f" LIMIT {int(limit)}" if limit is not None else ""
            return [
                (row[0], row[1])
                for row in connection.execute(
                    f"SELECT CAST(profile_id AS VARCHAR), value FROM ({sql}) AS computed{bound}"  # noqa: S608
                ).fetchall()
            ]
        except duckdb.InterruptException:
            raise ComputedTraitError(f"the query ran longer than {seconds:g} s and was stopped") from None
        except duckdb.Error as error:
            raise ComputedTraitError(f"the query failed: {str(error).splitlines()[0][:300]}") from None
    finally:
        timer.cancel()
        connection.close()


def check(name: str, sql: str) -> str:
    """The query as it will run; ComputedTraitError when the name or the query's shape is wrong."""
    if not TRAIT_NAME.match(name):
        raise ComputedTraitError("the trait name must be 1 to 100 letters, digits or _, not starting with a digit")
    query = sql.strip().rstrip(";").strip()
    if not query or len(sql) > MAX_SQL or ";" in query or "\x00" in query:
        raise ComputedTraitError(f"the query must be one SELECT of at most {MAX_SQL} characters")
    return query


def evaluate(
    db: Database, *, sql: str, folder: Path, masked: bool, limit: int | None = None, seconds: float = RUN_SECONDS
) -> list[tuple[Any, Any]]:
    """The query's (profile_id, value) rows over a fresh snapshot, personal data masked unless `masked` is
    false. The snapshot is removed afterwards."""
    work = folder / f"computed-{uuid.uuid4().hex}"
    try:
        masker = None
        if masked:
            with db.read() as session:
                masker = Masker(flagged_pii(session))
        profiles, events = snapshot(db, work, masker)
        return _query(sql, work, profiles, events, limit=limit, seconds=seconds)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def preview_computed_trait(
    db: Database, *, sql: str, folder: Path, masked: bool, limit: int = 20
) -> list[tuple[str | None, Any]]:
    """The first `limit` result rows, written nowhere: what a run would set."""
    query = check("preview", sql)
    bound = max(1, min(limit, MAX_PREVIEW))
    rows = evaluate(db, sql=query, folder=folder, masked=masked, limit=bound, seconds=PREVIEW_SECONDS)
    return [(None if p is None else str(p), _json_value(v)) for p, v in rows]


def _json_value(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, datetime):
        return iso(value)
    return str(value)


def run_computed_trait(
    db: Database,
    log: EventLog,
    *,
    name: str,
    sql: str,
    folder: Path,
    now: datetime,
    pii: bool = False,
    run_id: str | None = None,
) -> ComputedRun:
    """Compute trait `name` for every profile the query's result names, through the event log.

    Without `pii` the query sees personal data masked, and a value that is a mask (the query passed a
    PII column through) fails the run. With `pii` it sees the data as it is, and its events flag the
    trait as personal data, so views for roles without PII access mask it in turn."""
    started = datetime.now().timestamp()
    query = check(name, sql)
    run_id = run_id or new_run_id()
    results = evaluate(db, sql=query, folder=folder, masked=not pii)
    if not pii and any(holds_mask(v) for _, v in results):
        raise ComputedTraitError(
            "the query's values come from personal data, which this trait sees masked; "
            "a role with PII access can define it with pii: true"
        )
    with db.unit_of_work() as session:
        source = next((s for s in list_sources(session) if s.name == SOURCE_NAME), None)
        source_id = source.id if source is not None else create_source(session, name=SOURCE_NAME).id
    with db.read() as session:
        rules = current_rules(session)
        wanted = sorted({str(p) for p, _ in results if p is not None})
        keys: dict[str, list[tuple[str, str]]] = {}
        current: dict[str, Any] = {}
        for start in range(0, len(wanted), 500):
            part = wanted[start : start + 500]
            for kind, value, profile_id in session.execute(
                select(Identity.type, Identity.value, Identity.profile_id).where(Identity.profile_id.in_(part))
            ):
                if profile_id is not None:
                    keys.setdefault(profile_id, []).append((kind, value))
            opener = Opener.of(session)
            found = session.execute(
                select(Profile.id, Profile.traits, Profile.traits_enc).where(Profile.id.in_(part))
            ).all()
            opener.load(sealed for _, _, sealed in found)
            for profile_id, clear, sealed in found:
                traits = opener.traits(profile_id, clear, sealed)
                if name in traits:
                    current[profile_id] = traits[name]
    built: list[tuple[dict[str, Any], bytes]] = []
    skipped = unchanged = 0
    stamp = iso(now)
    meta: dict[str, Any] = {"run": run_id, **({"pii": [name]} if pii else {})}
    for profile_id, value in results:
        identifiers = sorted(keys.get(str(profile_id), []), key=lambda k: (rules.rank.get(k[0], 999), k[1]))
        usable = [k for k in identifiers if k[0] in rules.limits and k[0] != "alias"]
        if not usable:
            skipped += 1
            continue
        shown = _json_value(value)
        if str(profile_id) in current and current[str(profile_id)] == shown:
            unchanged += 1
            continue
        event = _identify(usable[0], name, shown)
        digest = hashlib.blake2b(orjson.dumps([name, str(profile_id), shown, run_id]), digest_size=16)
        event.update(messageId=f"ct_{digest.hexdigest()}", timestamp=stamp, receivedAt=stamp)
        event["_accord"] = {**event.get("_accord", {}), **meta}
        encoded = orjson.dumps(event)
        if len(encoded) > MAX_EVENT_BYTES or b"\\u0000" in encoded:
            skipped += 1
            continue
        built.append((event, encoded))
    appended = _append(db, log, source_id, built, now)
    return ComputedRun(
        name=name,
        run_id=run_id,
        rows=len(results),
        appended=appended,
        unchanged=unchanged,
        skipped=skipped,
        seconds=round(datetime.now().timestamp() - started, 3),
    )


def _identify(key: tuple[str, str], name: str, value: Any) -> dict[str, Any]:
    kind, text = key
    event: dict[str, Any] = {"type": "identify", "traits": {name: value}}
    if kind in PLACES:
        event[PLACES[kind]] = text
    elif kind in ("email", "phone"):
        # Stored as a blind index: named as Accord's own link, which identity takes as it is.
        event["_accord"] = {"link": [[kind, text]]}
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
