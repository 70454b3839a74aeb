"""The timeline at rest: each event's payload encrypted under the data key of the profile it was stored
for, bound to its (source, messageId). Stored as `{"sealed": "e1...."}` in the payload column; rows written
before encryption (a plain payload) read as they are."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from sqlalchemy.orm import Session

from accord.profiles.models import ProfileEvent
from accord.security.crypto import Undecryptable, aad, is_ciphertext, key_id_of
from accord.security.datakeys import DataKeys

SEALED = "sealed"


def _where(source_id: str, message_id: str) -> bytes:
    return aad("events", "payload", f"{source_id}\0{message_id}")


def seal_payload(
    keys: DataKeys, profile_id: str, source_id: str, message_id: str, payload: dict[str, Any]
) -> dict[str, Any]:
    return {SEALED: keys.encrypt(profile_id, orjson.dumps(payload), _where(source_id, message_id))}


def is_sealed(stored: Any) -> bool:
    return isinstance(stored, dict) and len(stored) == 1 and is_ciphertext(stored.get(SEALED))


def sealed_by(stored: Any) -> str | None:
    """The data key id a stored payload is sealed under (None for a plain one)."""
    return key_id_of(stored[SEALED]) if is_sealed(stored) else None


def open_payload(keys: DataKeys, source_id: str, message_id: str, stored: Any) -> dict[str, Any]:
    """The event as it was received; `{}` when its data key is gone (an erasure)."""
    if not is_sealed(stored):
        return stored if isinstance(stored, dict) else {}
    try:
        payload = orjson.loads(keys.decrypt(stored[SEALED], _where(source_id, message_id)))
    except Undecryptable:
        return {}
    return payload if isinstance(payload, dict) else {}


def opened_properties(keys: DataKeys, source_id: str, message_id: str, stored: Any) -> dict[str, Any]:
    """The event's properties (an object) as received; `{}` when it has none or its data key is gone."""
    found = open_payload(keys, source_id, message_id, stored).get("properties")
    return found if isinstance(found, dict) else {}


def opened(session: Session, rows: Sequence[ProfileEvent]) -> list[ProfileEvent]:
    """Timeline rows to show: detached from the session (so nothing is written back), payloads decrypted."""
    keys = DataKeys.of(session)
    keys.load({k for row in rows if (k := sealed_by(row.payload)) is not None})
    shown = []
    for row in rows:
        session.expunge(row)
        row.payload = open_payload(keys, row.source_id, row.message_id, row.payload)
        shown.append(row)
    return shown


def reseal_payload(keys: DataKeys, profile_id: str, source_id: str, message_id: str, stored: Any) -> Any:
    """A payload that moves to another person (an unmerge) sealed again under their key."""
    if not is_sealed(stored) or sealed_by(stored) == profile_id:
        return stored
    try:
        plain = keys.decrypt(stored[SEALED], _where(source_id, message_id))
    except Undecryptable:
        return stored
    return {SEALED: keys.encrypt(profile_id, plain, _where(source_id, message_id))}
