"""Data keys in the database: made per profile, used within a transaction, destroyed on erasure (crypto-
shredding), rewrapped under a new key-encryption key by `accord keys rotate`."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from typing import TYPE_CHECKING, Any, cast

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Select, Table, delete, event, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from accord.db.base import listed, one_of_bound, utcnow
from accord.security.crypto import Keyring, Undecryptable, key_id_of, open_sealed, seal
from accord.security.models import DataKey

if TYPE_CHECKING:
    from accord.db.engine import Database


def keyring_of(session: Session) -> Keyring:
    """The keyring of the database this session works on (set by `Database.from_settings`)."""
    keyring = session.info.get("keyring")
    if not isinstance(keyring, Keyring):
        raise RuntimeError("this session has no keyring: open the database with Database.from_settings")
    return keyring


@dataclass(slots=True)
class DataKeys:
    """The data keys one transaction uses: read once, in bulk, and made when missing."""

    session: Session
    keyring: Keyring
    _ciphers: dict[str, AESGCM | None] = field(default_factory=dict)

    @classmethod
    def of(cls, session: Session) -> DataKeys:
        """The data keys of the session's current transaction: one object for all its readers and writers
        (the pipeline, segments, journeys), so a key is read and unwrapped once per transaction; forgotten
        when the transaction ends, so a key destroyed meanwhile is never used by a later one."""
        keys = session.info.get(_INFO_KEY)
        if not isinstance(keys, DataKeys):
            keys = session.info[_INFO_KEY] = cls(session, keyring_of(session))
        return keys

    def load(self, key_ids: Iterable[str]) -> None:
        """Read these keys, in one statement per 500; keys read already (or known to be missing) are not."""
        wanted = sorted({k for k in key_ids if k not in self._ciphers})
        if not wanted:
            return
        connection = self.session.connection()
        dialect = connection.dialect.name
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            for key_id, kek_id, wrapped in connection.execute(_read(dialect), {"ids": listed(chunk, dialect)}):
                self._ciphers[key_id] = self.keyring.cipher(key_id, kek_id, bytes(wrapped))
            for key_id in chunk:
                self._ciphers.setdefault(key_id, None)

    def found(self, rows: Iterable[tuple[str, str | None, bytes | None]]) -> None:
        """Keys the caller read with its own rows (joined on the key's id): (id, kek_id, wrapped), the last
        two None for an id without a key. Keys known already are kept."""
        for key_id, kek_id, wrapped in rows:
            if key_id in self._ciphers:
                continue
            if kek_id is None or wrapped is None:
                self._ciphers[key_id] = None
            else:
                self._ciphers[key_id] = self.keyring.cipher(key_id, kek_id, bytes(wrapped))

    def create(self, key_ids: Iterable[str], *, new: bool = False) -> None:
        """Make data keys for these ids (new profiles); ids that have one keep it. With `new`, the ids were
        made just now (a new profile's uuid), so none is read before the insert: one that has a key all the
        same is read after it, as when another transaction made it meanwhile."""
        wanted = sorted(set(key_ids))
        if new:
            missing = [k for k in wanted if self._ciphers.get(k) is None]
        else:
            self.load(wanted)
            missing = [k for k in wanted if self._ciphers[k] is None]
        if not missing:
            return
        now = utcnow()
        made: dict[str, AESGCM] = {}
        rows = []
        for key_id in missing:
            made[key_id], kek_id, wrapped = self.keyring.new_data_key(key_id)
            rows.append({"id": key_id, "kek_id": kek_id, "wrapped": wrapped, "created_at": now})
        connection = self.session.connection()
        statement = _insert(connection.dialect.name)
        stored: set[str] = set()
        for start in range(0, len(rows), 500):
            stored.update(connection.execute(statement, rows[start : start + 500]).scalars())
        for key_id in missing:
            if key_id in stored:
                self._ciphers[key_id] = made[key_id]
            else:
                self._ciphers.pop(key_id, None)
        self.load(k for k in missing if k not in stored)  # another transaction made these first: use what it stored

    def cipher(self, key_id: str, *, create: bool = False) -> AESGCM | None:
        if key_id not in self._ciphers:
            self.load([key_id])
        if self._ciphers[key_id] is None and create:
            self.create([key_id])
        return self._ciphers[key_id]

    def encrypt(self, key_id: str, plaintext: bytes, associated: bytes) -> str:
        cipher = self.cipher(key_id, create=True)
        assert cipher is not None
        return seal(cipher, key_id, plaintext, associated)

    def decrypt(self, token: str, associated: bytes) -> bytes:
        """The plaintext; Undecryptable when its data key was destroyed or the ciphertext was moved."""
        cipher = self.cipher(key_id_of(token))
        if cipher is None:
            raise Undecryptable("the data key of this value was destroyed")
        return open_sealed(cipher, token, associated)

    def forget(self, key_ids: Iterable[str]) -> None:
        for key_id in key_ids:
            self._ciphers.pop(key_id, None)


_INFO_KEY = "accord.datakeys"
DATA_KEYS = cast(Table, DataKey.__table__)


@cache
def _read(dialect: str) -> Select[str, str, bytes]:
    """The keys of the ids bound as `ids` (built once per dialect)."""
    c = DATA_KEYS.c
    return select(c.id, c.kek_id, c.wrapped).where(one_of_bound(c.id, "ids", dialect))


@cache
def _insert(dialect: str) -> Any:
    """Insert keys, leaving any that another transaction stored first; returns the ids inserted."""
    insert = (pg_insert if dialect == "postgresql" else sqlite_insert)(DATA_KEYS)
    return insert.on_conflict_do_nothing(index_elements=["id"]).returning(DATA_KEYS.c.id)


@event.listens_for(Session, "after_transaction_end")
def _forget_at_end(session: Session, transaction: Any) -> None:
    if transaction.parent is None:
        session.info.pop(_INFO_KEY, None)


def destroy(session: Session, key_ids: Iterable[str]) -> int:
    """Crypto-shredding: delete these data keys. Returns how many there were."""
    wanted = sorted(set(key_ids))
    shared = session.info.get(_INFO_KEY)
    if isinstance(shared, DataKeys):
        shared.forget(wanted)
    done = 0
    for start in range(0, len(wanted), 500):
        result = session.execute(delete(DataKey).where(DataKey.id.in_(wanted[start : start + 500])))
        done += int(getattr(result, "rowcount", 0) or 0)
    return done


def count_by_kek(session: Session) -> dict[str, int]:
    return {kek: int(n) for kek, n in session.execute(select(DataKey.kek_id, func.count()).group_by(DataKey.kek_id))}


def rewrap_batch(session: Session, keyring: Keyring, *, limit: int = 500, now: datetime | None = None) -> int:
    """Rewrap up to `limit` data keys that are not under the current KEK; how many were. A row changed or
    deleted meanwhile (an erasure) is left alone: the update names the wrapped form it read."""
    current = keyring.provider.current()
    query = select(DataKey.id, DataKey.kek_id, DataKey.wrapped).where(DataKey.kek_id != current).limit(limit)
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    rows = session.execute(query).all()
    stamp = now or utcnow()
    done = 0
    for key_id, kek_id, wrapped in rows:
        data_key = keyring.provider.unwrap(kek_id, bytes(wrapped), context=key_id.encode())
        new_kek, new_wrapped = keyring.provider.wrap(data_key, context=key_id.encode())
        result = session.execute(
            update(DataKey)
            .where(DataKey.id == key_id, DataKey.kek_id == kek_id)
            .values(kek_id=new_kek, wrapped=new_wrapped, rewrapped_at=stamp)
        )
        done += int(getattr(result, "rowcount", 0) or 0)
    return done


__all__ = ["DataKeys", "Rotation", "Undecryptable", "count_by_kek", "destroy", "keyring_of", "rewrap_batch", "rotate"]


@dataclass(slots=True)
class Rotation:
    kek_id: str
    rewrapped: int
    retired: list[str]
    remaining: int


def rotate(db: Database, *, grace_seconds: float = 2.5, batch: int = 500) -> Rotation:
    """`accord keys rotate`: a new current KEK, every data key rewrapped under it (one transaction per
    batch, so reads and writes go on), a second sweep after `grace_seconds` for keys that processes which
    had not yet seen the new KEK wrapped meanwhile, then the old KEKs retired. Run again to resume."""
    keyring = db.keyring
    if keyring is None:
        raise RuntimeError("this database has no keyring")
    kek_id = keyring.provider.begin_rotation()
    from accord.security.logkeys import new_log_key  # the log keys build on this module

    with db.unit_of_work() as session:
        new_log_key(session, keyring)  # records from now on are sealed under a new log key, wrapped by the new KEK
    rewrapped = 0
    for sweep in range(2):
        if sweep:
            time.sleep(grace_seconds)
        while True:
            with db.unit_of_work() as session:
                done = rewrap_batch(session, keyring, limit=batch)
            rewrapped += done
            if done == 0:
                break
    with db.read() as session:
        in_use = count_by_kek(session)
    old = [k for k in keyring.provider.known() if k != kek_id and k not in in_use]
    keyring.provider.retire(old)
    remaining = sum(n for k, n in in_use.items() if k != kek_id)
    return Rotation(kek_id=kek_id, rewrapped=rewrapped, retired=old, remaining=remaining)
