"""The consent ledger: an append-only hash chain with per-record MACs and signed checkpoints.

The chain itself (canonical bodies naming `seq` and the previous hash, MACs, verification) is
`accord.hashchain`, shared with the audit log; this module adds what consent needs: the evidence kept
beside the chain, whose salted digest the chain holds, so that erasure can delete it. The evidence is
personal data: stored sealed (AES-GCM) under the data key of the record's profile, bound to
(`consent_evidence`, `body`, record id). The digest is of the canonical plaintext, so the chain verifies
without any data key; checking the evidence against it opens the evidence first."""

from __future__ import annotations

import contextlib
import hashlib
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Engine, insert, select
from sqlalchemy.orm import Session

from accord import chaintable, hashchain
from accord.consent.keys import SigningKey
from accord.consent.models import ChainHead, Checkpoint, Evidence, LedgerRecord
from accord.db.base import one_of
from accord.hashchain import GENESIS, Problem, Verification, canonical, iso
from accord.security.crypto import BINARY_PREFIX, NONCE_BYTES, Undecryptable, aad, binary_key_id, open_bytes, seal_bytes
from accord.security.datakeys import DataKeys
from accord.security.keys import KeyProvider, KeyringError
from accord.security.models import DataKey

__all__ = ["GENESIS", "Problem", "Verification", "canonical", "iso"]
CHECKPOINT_TYP = "accord-consent-checkpoint"
# Columns that repeat a body field for queries; verification compares them.
MIRRORED = ("id", "profile_id", "purpose", "channel", "status")
MESSAGES = hashchain.MacMessages()


def head_mac_message(seq: int, digest: str) -> str:
    return MESSAGES.head(seq, digest)


def record_mac_message(digest: str) -> str:
    return MESSAGES.record(digest)


@dataclass(frozen=True, slots=True)
class Entry:
    """What a caller appends; the ledger adds seq, prev, recorded_at and the evidence digest."""

    id: str
    profile_id: str
    purpose: str
    channel: str
    status: str
    occurred_at: datetime
    expires_at: datetime | None
    fields: dict[str, Any]  # notice, method, actor, source, tcf, gpc, ...: JSON values, no PII
    evidence: dict[str, Any] = field(default_factory=dict)  # personal data: kept outside the chain


def _where(record_id: str) -> bytes:
    return aad(Evidence.__tablename__, "body", record_id)


# `_where(record_id)` is this plus the id: verification builds it so, once per record.
_WHERE_PREFIX = _where("")


def seal_evidence(keys: DataKeys, record_id: str, profile_id: str, plaintext: bytes) -> bytes:
    """Evidence as stored: sealed under the profile's data key (made if it has none), bound to its record."""
    cipher = keys.cipher(profile_id, create=True)
    assert cipher is not None
    return seal_bytes(cipher, profile_id, plaintext, _where(record_id))


def is_sealed(stored: bytes) -> bool:
    """Sealed evidence; a clear one (canonical JSON, stored before migration 0028) starts with `{`."""
    return bytes(stored[: len(BINARY_PREFIX)]) == BINARY_PREFIX


def open_evidence(keys: DataKeys, record_id: str, stored: bytes) -> bytes:
    """The canonical plaintext the chain's digest covers; Undecryptable when its data key is gone or the
    stored bytes were altered or moved from another record."""
    stored = bytes(stored)
    if not is_sealed(stored):
        return stored
    cipher = keys.cipher(binary_key_id(stored))
    if cipher is None:
        raise Undecryptable("the data key of this evidence was destroyed")
    return open_bytes(cipher, stored, _where(record_id))


UNREADABLE = {"unreadable": "this evidence does not open: it was altered, or its data key is gone"}


def opened_evidence(keys: DataKeys, rows: Sequence[tuple[str, bytes | None]]) -> list[dict[str, Any] | None]:
    """(record id, stored evidence or None) to show: each evidence as a dict, None where there is none
    (erased), `UNREADABLE` where it does not open. The data keys are read in one go."""
    wanted = set()
    for _, stored in rows:
        if stored is not None and is_sealed(stored):
            with contextlib.suppress(Undecryptable):
                wanted.add(binary_key_id(bytes(stored)))
    keys.load(wanted)
    shown: list[dict[str, Any] | None] = []
    for record_id, stored in rows:
        if stored is None:
            shown.append(None)
            continue
        try:
            shown.append(orjson.loads(open_evidence(keys, record_id, stored)))
        except (Undecryptable, orjson.JSONDecodeError):
            shown.append(dict(UNREADABLE))
    return shown


def lock_head(session: Session) -> ChainHead:
    head = session.scalar(select(ChainHead).where(ChainHead.id == 1).with_for_update())
    if head is None:
        # A fresh (or test-truncated) database: the genesis head. Concurrent creators collide on the key.
        head = ChainHead(id=1, seq=0, hash=GENESIS, mac="", checkpoint_seq=0, checkpoint_at=None)
        session.add(head)
        session.flush()
    return head


def append(
    session: Session, entries: list[Entry], *, key: SigningKey, now: datetime
) -> list[tuple[dict[str, Any], str]]:
    """Chain `entries` after the head, in order; returns each body and its hash. Holds the head's row lock until
    the caller commits, so concurrent appenders queue up rather than fork the chain."""
    head = lock_head(session)
    keys = DataKeys.of(session)
    keys.create({entry.profile_id for entry in entries if entry.evidence})
    evidence_rows: list[dict[str, Any]] = []
    bodies: list[dict[str, Any]] = []
    for entry in entries:
        digest = None
        if entry.evidence:
            salt = secrets.token_hex(16)
            evidence_body = canonical(entry.evidence)
            digest = hashlib.sha256(salt.encode() + evidence_body).hexdigest()
            sealed = seal_evidence(keys, entry.id, entry.profile_id, evidence_body)
            evidence_rows.append({"record_id": entry.id, "profile_id": entry.profile_id, "salt": salt, "body": sealed})
        bodies.append(
            {
                **entry.fields,
                "v": 1,
                "id": entry.id,
                "profile_id": entry.profile_id,
                "purpose": entry.purpose,
                "channel": entry.channel,
                "status": entry.status,
                "occurred_at": iso(entry.occurred_at),
                "expires_at": iso(entry.expires_at),
                "recorded_at": iso(now),
                "evidence": digest,
            }
        )
    links = hashchain.extend(bodies, seq=head.seq, previous=head.hash)
    if not links:
        return []
    session.execute(
        insert(LedgerRecord),
        [
            {
                "seq": link.seq,
                **{name: link.body[name] for name in MIRRORED},
                "body": link.raw,
                "hash": link.hash,
                "mac": key.mac(record_mac_message(link.hash)),
            }
            for link in links
        ],
    )
    if evidence_rows:
        session.execute(insert(Evidence), evidence_rows)
    last = links[-1]
    head.seq, head.hash, head.mac = last.seq, last.hash, key.mac(head_mac_message(last.seq, last.hash))
    return [(link.body, link.hash) for link in links]


def checkpoint(session: Session, *, key: SigningKey, now: datetime) -> Checkpoint | None:
    """Sign the current head (None when the chain is empty or already signed at this length)."""
    head = lock_head(session)
    if head.seq == 0 or head.checkpoint_seq == head.seq:
        return None
    payload = {"seq": head.seq, "hash": head.hash, "signed_at": iso(now)}
    row = Checkpoint(seq=head.seq, hash=head.hash, signed_at=now, jws=key.sign(payload, typ=CHECKPOINT_TYP))
    session.add(row)
    head.checkpoint_seq, head.checkpoint_at = head.seq, now
    return row


def checkpoint_due(session: Session, *, every_records: int, every: timedelta, now: datetime) -> bool:
    head = session.get(ChainHead, 1)
    if head is None or head.seq == head.checkpoint_seq:
        return False
    if head.seq - head.checkpoint_seq >= every_records:
        return True
    return head.checkpoint_at is None or now - head.checkpoint_at >= every


def _load_ciphers(lookup: chaintable.Lookup, key_ids: Iterable[bytes]) -> None:
    """Unwrap the data keys named in one chunk of evidence that this walk has not met yet: one query. A key
    not found (destroyed, or a name no key has) or not unwrapping is remembered, under the bytes the
    evidence names it by, as the reason its evidence does not open."""
    ciphers: dict[bytes, AESGCM | str] = lookup.cache
    wanted = {raw: raw.decode("utf-8", "replace") for raw in key_ids if raw not in ciphers}
    if not wanted:
        return
    column, connection = DataKey.__table__.c.id, lookup.connection
    found = connection.execute(
        select(DataKey.id, DataKey.kek_id, DataKey.wrapped).where(
            one_of(column, sorted(set(wanted.values())), connection.dialect.name)
        )
    ).all()
    provider: KeyProvider = lookup.keys
    for key_id, kek_id, wrapped in found:
        try:
            ciphers[key_id.encode()] = AESGCM(provider.unwrap(kek_id, bytes(wrapped), context=key_id.encode()))
        except KeyringError as error:
            ciphers[key_id.encode()] = f"its data key does not unwrap ({error})"
    for raw in wanted:
        ciphers.setdefault(raw, "its data key was destroyed")


def _open_chunk(rows: list[Any], at: int, lookup: chaintable.Lookup) -> list[Any]:
    """Each row's evidence (its record id, salt and stored body: the row's last three columns, from `at`),
    for `_evidence_matches`: (salt, canonical plaintext); a text saying why it does not open; or None when
    there is none (erased) or it is sealed and the walk has no keys.

    The hot path of verification: one AES-GCM decryption per record and little around it. The data keys are
    unwrapped once per walk, those a chunk meets first read in one query after a first pass over it."""
    found: list[Any] = []
    later: list[int] = []  # rows whose data key this walk has not met yet
    ciphers: dict[bytes, AESGCM | str] = lookup.cache
    where, has_keys, prefix, skip = _WHERE_PREFIX, lookup.keys is not None, BINARY_PREFIX, len(BINARY_PREFIX)
    nonce_bytes = NONCE_BYTES
    for row in rows:
        record_id, salt, stored = row[at], row[at + 1], row[at + 2]  # (indexing a Row is cheaper than slicing it)
        if stored is None:
            found.append(None)
            continue
        if stored[:skip] != prefix:
            found.append((salt, stored))  # in clear (before migration 0028): its digest still tells
            continue
        if not has_keys:
            found.append(None)
            continue
        end = stored.find(b".", skip)
        if end <= skip:
            found.append("it is not a ciphertext")
            continue
        cipher = ciphers.get(stored[skip:end])
        if cipher is None:
            later.append(len(found))
            found.append(None)
        elif isinstance(cipher, str):
            found.append(cipher)
        else:
            end += 1
            try:
                plain = cipher.decrypt(
                    stored[end : end + nonce_bytes], stored[end + nonce_bytes :], where + record_id.encode()
                )
            except (InvalidTag, ValueError):
                found.append("it was altered, or moved from another record")
            else:
                found.append((salt, plain))
    if later:
        named = {i: rows[i][at + 2][skip : rows[i][at + 2].find(b".", skip)] for i in later}
        _load_ciphers(lookup, named.values())
        for i, key_id in named.items():
            record_id, salt, stored = rows[i][at], rows[i][at + 1], rows[i][at + 2]
            cipher = ciphers[key_id]
            if isinstance(cipher, str):
                found[i] = cipher
                continue
            try:
                found[i] = (salt, open_bytes(cipher, bytes(stored), _where(record_id)))
            except Undecryptable:
                found[i] = "it was altered, or moved from another record"
    return found


def _evidence_matches(row: hashchain.Row, body: dict[str, Any], report: Verification) -> str | None:
    found = row.attachment
    if found is None:
        return None
    if isinstance(found, str):
        return f"the record's evidence does not open: {found}"
    salt, proof = found
    report.evidence_checked += 1
    if hashlib.sha256(salt.encode() + proof).hexdigest() != body.get("evidence"):
        return "the record's evidence was changed after it was recorded"
    return None


CHAIN = chaintable.ChainTable(
    table=LedgerRecord.__tablename__,
    mirrored=MIRRORED,
    record=LedgerRecord,
    head=ChainHead,
    checkpoint=Checkpoint,
    messages=MESSAGES,
    checkpoint_typ=CHECKPOINT_TYP,
    more_columns=", e.record_id, e.salt, e.body",
    join=f" LEFT JOIN {Evidence.__tablename__} e ON e.record_id = r.id",
    attachments=_open_chunk,
    extra=_evidence_matches,
)


def verify(
    engine: Engine,
    *,
    key: SigningKey,
    keys: KeyProvider | None,
    batch: int = 20_000,
    workers: int = 1,
    min_per_worker: int = chaintable.PARALLEL_MIN_RECORDS // 2,
) -> Verification:
    """Walk the whole chain, checkpoints and head, and each record's evidence; stop at the first problem.

    With `workers` > 1 and a long chain, consecutive ranges are walked in that many processes at once; the
    report is the same as one walk's: the first problem in chain order. `keys` is the KEK provider that
    unwraps the data keys the evidence is sealed under (each process unwraps those its range needs); with
    None, the chain is verified without them and sealed evidence is not checked (`evidence_checked`
    counts only what was). Evidence that does not open with the keys is a problem named by its record."""
    return chaintable.verify(
        engine, CHAIN, key=key, batch=batch, workers=workers, min_per_worker=min_per_worker, keys=keys
    )
