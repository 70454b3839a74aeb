"""The data keys of records that wait before any profile exists: the raw event log's payloads (and the
quarantine's). The gateway cannot know the person when it acknowledges an event, so these are sealed under
a shared log key, kept like every data key in `data_keys` (wrapped by the KEK, rewrapped by `accord keys
rotate`, which also makes a new log key current). A log key's id starts with `log-`. Events quarantined
after a failed processing are sealed under it too, with their errors."""

from __future__ import annotations

import secrets
import threading
import time
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import select
from sqlalchemy.orm import Session

from accord.db.base import utcnow
from accord.security.crypto import Keyring, Undecryptable, binary_key_id, open_bytes, seal_bytes
from accord.security.datakeys import keyring_of
from accord.security.models import DataKey

if TYPE_CHECKING:
    from accord.db.engine import Database

LOG_KEY_PREFIX = "log-"
# How long a process seals with the log key it read before looking for a newer one (a rotation's).
REFRESH_SECONDS = 1.0


def new_log_key(session: Session, keyring: Keyring | None = None) -> str:
    """Make a new log key, current from now on (the newest is current); returns its id."""
    keyring = keyring or keyring_of(session)
    key_id = f"{LOG_KEY_PREFIX}{secrets.token_hex(16)}"
    _, kek_id, wrapped = keyring.new_data_key(key_id)
    session.add(DataKey(id=key_id, kek_id=kek_id, wrapped=wrapped, created_at=utcnow()))
    session.flush()
    return key_id


def current_log_key(session: Session) -> tuple[str, str, bytes] | None:
    """The newest log key: (id, KEK id, wrapped), or None when there is none yet."""
    row = session.execute(
        select(DataKey.id, DataKey.kek_id, DataKey.wrapped)
        .where(DataKey.id.startswith(LOG_KEY_PREFIX))
        .order_by(DataKey.created_at.desc(), DataKey.id.desc())
        .limit(1)
    ).first()
    return None if row is None else (row[0], row[1], bytes(row[2]))


def waiting_key(session: Session) -> str:
    """The key to seal a record that waits before any profile exists (a quarantined event and its error)
    with: the current log key, made in this session's transaction when there is none yet."""
    found = current_log_key(session)
    return found[0] if found is not None else new_log_key(session)


class LogKeys:
    """Seals and opens log payloads for one process. One AESGCM object per key, made once: sealing a
    record costs one AES-GCM pass, not a key lookup. The current key is looked for again every
    `refresh_seconds`, so a rotation reaches every process within that time."""

    def __init__(self, db: Database, *, refresh_seconds: float = REFRESH_SECONDS) -> None:
        if db.keyring is None:
            raise RuntimeError("the event log's keys need a database with a keyring (Database.from_settings)")
        self.db = db
        self.keyring: Keyring = db.keyring
        self.refresh_seconds = refresh_seconds
        self._current: tuple[str, AESGCM] | None = None
        self._read_at = 0.0
        self._ciphers: dict[str, AESGCM] = {}
        self._lock = threading.Lock()

    def current(self) -> tuple[str, AESGCM]:
        now = time.monotonic()
        current = self._current
        if current is not None and now - self._read_at < self.refresh_seconds:
            return current
        with self._lock:
            with self.db.read() as session:
                found = current_log_key(session)
            if found is None:
                with self.db.unit_of_work() as session:
                    found = current_log_key(session)  # another process may have made one meanwhile
                    if found is None:
                        new_log_key(session, self.keyring)
                        found = current_log_key(session)
            assert found is not None
            key_id, kek_id, wrapped = found
            cipher = self.keyring.cipher(key_id, kek_id, wrapped)
            self._ciphers[key_id] = cipher
            self._current = (key_id, cipher)
            self._read_at = now
            return self._current

    def seal(self, plaintext: bytes, associated: bytes) -> bytes:
        key_id, cipher = self.current()
        return seal_bytes(cipher, key_id, plaintext, associated)

    def open(self, blob: bytes, associated: bytes) -> bytes:
        """The plaintext of a sealed payload; Undecryptable (with the reason) when it is in clear, altered,
        moved to another record, or under a log key that no longer exists."""
        key_id = binary_key_id(blob)
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            cipher = self._load(key_id)
        return open_bytes(cipher, blob, associated)

    def _load(self, key_id: str) -> AESGCM:
        if not key_id.startswith(LOG_KEY_PREFIX):
            raise Undecryptable(f"a log payload names {key_id!r}, which is not a log key")
        with self.db.read() as session:
            row = session.execute(select(DataKey.kek_id, DataKey.wrapped).where(DataKey.id == key_id)).first()
        if row is None:
            raise Undecryptable(f"the log key {key_id} of this payload does not exist")
        cipher = self.keyring.cipher(key_id, row[0], bytes(row[1]))
        with self._lock:
            self._ciphers[key_id] = cipher
        return cipher
