"""Quarantine: accepted events that failed processing, kept with their error until replayed.

Both the event and its error are sealed under the log key: an error may quote the value that failed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from accord.db.base import utcnow
from accord.db.engine import Database
from accord.ingest.models import QuarantinedEvent
from accord.log.port import EventLog, NewRecord
from accord.security.crypto import Undecryptable, aad, is_ciphertext
from accord.security.datakeys import DataKeys
from accord.security.logkeys import waiting_key

MAX_ERROR_LENGTH = 2000


def describe(error: BaseException) -> str:
    code = getattr(error, "code", None)
    kind = f"{type(error).__name__} {code}" if isinstance(code, str) else type(error).__name__
    return f"{kind}: {error}"[:MAX_ERROR_LENGTH]


def _aad(source_id: str, message_id: str, field: str = "payload") -> bytes:
    return aad("quarantine", field, f"{source_id}\0{message_id}")


def is_sealed(payload: Any) -> bool:
    return isinstance(payload, dict) and len(payload) == 1 and is_ciphertext(payload.get("sealed"))


def event_of(keys: DataKeys, row: QuarantinedEvent) -> dict[str, Any]:
    """A quarantined event in clear (Undecryptable when altered or moved to another row)."""
    if not is_sealed(row.payload):
        raise Undecryptable(f"quarantined event {row.id} is not sealed")
    event: dict[str, Any] = orjson.loads(keys.decrypt(row.payload["sealed"], _aad(row.source_id, row.message_id)))
    return event


def error_of(keys: DataKeys, row: QuarantinedEvent) -> str:
    """A quarantined event's error in clear (Undecryptable when altered or moved to another row)."""
    if not is_ciphertext(row.error):
        raise Undecryptable(f"the error of quarantined event {row.id} is not sealed")
    return keys.decrypt(row.error, _aad(row.source_id, row.message_id, "error")).decode()


def shown_error(keys: DataKeys, row: QuarantinedEvent) -> str:
    """A quarantined event's error to show: in clear, or why it cannot be opened (never an exception, so a
    listing goes on), as a failed import run's error reads."""
    try:
        return error_of(keys, row)
    except Undecryptable as error:
        return f"(the error cannot be opened: {error})"


def put(session: Session, source_id: str, event: dict[str, Any], error: BaseException | str) -> None:
    """Quarantine an event with its error, both sealed under the log key; a second failure of the same
    message updates its row."""
    reason = error if isinstance(error, str) else describe(error)
    message_id = str(event.get("messageId", ""))
    keys, key_id = DataKeys.of(session), waiting_key(session)
    payload = orjson.dumps(event, option=orjson.OPT_NON_STR_KEYS)
    values = {
        "source_id": source_id,
        "message_id": message_id,
        "payload": {"sealed": keys.encrypt(key_id, payload, _aad(source_id, message_id))},
        "error": keys.encrypt(key_id, reason.encode(), _aad(source_id, message_id, "error")),
        "attempts": 1,
        "quarantined_at": utcnow(),
        "replayed_at": None,
    }
    dialect = session.get_bind().dialect.name
    statement = (pg_insert if dialect == "postgresql" else sqlite_insert)(QuarantinedEvent).values(values)
    statement = statement.on_conflict_do_update(
        index_elements=["source_id", "message_id"],
        set_={
            "payload": statement.excluded.payload,
            "error": statement.excluded.error,
            "attempts": QuarantinedEvent.attempts + 1,
            "quarantined_at": statement.excluded.quarantined_at,
            "replayed_at": None,
        },
    )
    session.execute(statement)


def waiting(session: Session, *, limit: int = 100) -> Sequence[QuarantinedEvent]:
    return session.scalars(
        select(QuarantinedEvent)
        .where(QuarantinedEvent.replayed_at.is_(None))
        .order_by(QuarantinedEvent.id)
        .limit(limit)
    ).all()


def count_waiting(session: Session) -> int:
    return int(session.scalar(select(func.count()).where(QuarantinedEvent.replayed_at.is_(None))) or 0)


def replay(db: Database, log: EventLog, *, ids: Sequence[int] | None = None) -> int:
    """Send quarantined events back through the log; returns how many were replayed.

    The events go to the log first and are marked replayed after, so a crash in between replays
    them twice, which dedupe by messageId makes harmless, rather than losing them.
    """
    query = select(QuarantinedEvent).where(QuarantinedEvent.replayed_at.is_(None)).order_by(QuarantinedEvent.id)
    if ids is not None:
        query = query.where(QuarantinedEvent.id.in_(ids))
    by_source: dict[str, list[dict[str, Any]]] = {}
    with db.read() as session:
        rows = session.scalars(query).all()
        keys = DataKeys.of(session)
        for row in rows:
            by_source.setdefault(row.source_id, []).append(event_of(keys, row))
    now = utcnow()
    for source_id, events in by_source.items():
        log.append(NewRecord(source_id=source_id, received_at=now, events=events))
    with db.unit_of_work() as session:
        session.execute(
            update(QuarantinedEvent).where(QuarantinedEvent.id.in_([r.id for r in rows])).values(replayed_at=now)
        )
    return len(rows)
