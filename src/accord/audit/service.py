"""The audit trail: who did what to which thing, when and from where, as an append-only hash chain.

It shares its chain with the consent ledger (`accord.hashchain`: canonical bodies naming `seq` and the
previous hash, per-record MACs, a MACed head, Ed25519-signed checkpoints) and its key file, with MAC
messages of its own so that a record of one chain never verifies as a record of the other.

Callers record in the transaction that makes the change (`record_audit`), so a change and its audit
record land together or not at all. Reads of personal data are recorded in a short transaction of their
own once the read succeeded, before the answer is sent.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import Engine, insert, select
from sqlalchemy.orm import Session

from accord import chaintable, hashchain
from accord.audit.models import AuditCheckpoint, AuditHead, AuditRecord
from accord.config import Settings
from accord.consent.keys import SigningKey
from accord.db.base import utcnow
from accord.hashchain import GENESIS, Verification, iso

CHECKPOINT_TYP = "accord-audit-checkpoint"
MESSAGES = hashchain.MacMessages(prefix="audit:")
# Columns that repeat a body field for queries; verification compares them.
MIRRORED = ("id", "at", "actor_type", "actor_id", "actor_role", "action", "target_type", "target_id", "ip")
# A checkpoint is signed with the append that makes it due: after this many records, or this long.
CHECKPOINT_RECORDS = 1000
CHECKPOINT_EVERY = timedelta(seconds=60)
MAX_PAGE = 1000


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acted: an API token (with its role and the client's address), the command line, or Accord."""

    type: str  # "token", "cli" or "system"
    id: str | None = None
    role: str | None = None
    ip: str | None = None


CLI = Actor("cli")
SYSTEM = Actor("system")


@dataclass(frozen=True, slots=True)
class Entry:
    seq: int
    hash: str
    body: dict[str, Any]


@dataclass(slots=True)
class Filters:
    action: str | None = None  # an action, or a prefix ending in "." (profile.)
    actor_id: str | None = None
    target_type: str | None = None
    target_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def _lock_head(session: Session) -> AuditHead:
    head = session.scalar(select(AuditHead).where(AuditHead.id == 1).with_for_update())
    if head is None:
        # A fresh (or test-truncated) database: the genesis head. Concurrent creators collide on the key.
        head = AuditHead(id=1, seq=0, hash=GENESIS, mac="", checkpoint_seq=0, checkpoint_at=None)
        session.add(head)
        session.flush()
    return head


def record_audit(
    session: Session,
    *,
    key: SigningKey,
    actor: Actor,
    action: str,
    target_type: str | None = None,
    target_id: str | None = None,
    details: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> Entry:
    """Append one record after the chain's head, in the caller's transaction (which holds the head's row lock
    until it commits, so concurrent appenders queue up rather than fork the chain). `details` must hold no
    personal data: ids of things, keys, versions, counts."""
    now = now or utcnow()
    head = _lock_head(session)
    body = {
        "v": 1,
        "id": "aud_" + uuid.uuid4().hex[:20],
        "at": iso(now),
        "actor_type": actor.type,
        "actor_id": actor.id,
        "actor_role": actor.role,
        "action": action,
        "target_type": target_type,
        "target_id": target_id,
        "ip": actor.ip,
        "details": details or {},
    }
    (link,) = hashchain.extend([body], seq=head.seq, previous=head.hash)
    session.execute(
        insert(AuditRecord),
        [
            {
                "seq": link.seq,
                **{name: link.body[name] for name in MIRRORED},
                "body": link.raw,
                "hash": link.hash,
                "mac": key.mac(MESSAGES.record(link.hash)),
            }
        ],
    )
    head.seq, head.hash, head.mac = link.seq, link.hash, key.mac(MESSAGES.head(link.seq, link.hash))
    if head.seq - head.checkpoint_seq >= CHECKPOINT_RECORDS or (
        head.checkpoint_at is None or now - head.checkpoint_at >= CHECKPOINT_EVERY
    ):
        _sign(session, head, key=key, now=now)
    return Entry(link.seq, link.hash, link.body)


def record_command(
    session: Session, action: str, target_type: str | None, target_id: str | None, **details: Any
) -> None:
    """Record what a command of the `accord` CLI changed, as the command line, in the command's
    transaction. The key is the consent key file the settings name, as for every other record."""
    record_audit(
        session,
        key=SigningKey.load_or_create(Settings().signing_key_path()),
        actor=CLI,
        action=action,
        target_type=target_type,
        target_id=target_id,
        details=details,
    )


def _sign(session: Session, head: AuditHead, *, key: SigningKey, now: datetime) -> AuditCheckpoint:
    payload = {"seq": head.seq, "hash": head.hash, "signed_at": iso(now)}
    row = AuditCheckpoint(seq=head.seq, hash=head.hash, signed_at=now, jws=key.sign(payload, typ=CHECKPOINT_TYP))
    session.add(row)
    head.checkpoint_seq, head.checkpoint_at = head.seq, now
    return row


def checkpoint(session: Session, *, key: SigningKey, now: datetime) -> AuditCheckpoint | None:
    """Sign the current head (None when the chain is empty or already signed at this length)."""
    head = _lock_head(session)
    if head.seq == 0 or head.checkpoint_seq == head.seq:
        return None
    return _sign(session, head, key=key, now=now)


def records(session: Session, filters: Filters, *, before: int | None = None, limit: int = 100) -> list[Entry]:
    """Matching records, newest first; `before` pages on by seq."""
    query = select(AuditRecord.seq, AuditRecord.hash, AuditRecord.body)
    if filters.action is not None:
        if filters.action.endswith("."):
            query = query.where(AuditRecord.action.startswith(filters.action, autoescape=True))
        else:
            query = query.where(AuditRecord.action == filters.action)
    if filters.actor_id is not None:
        query = query.where(AuditRecord.actor_id == filters.actor_id)
    if filters.target_type is not None:
        query = query.where(AuditRecord.target_type == filters.target_type)
    if filters.target_id is not None:
        query = query.where(AuditRecord.target_id == filters.target_id)
    if filters.since is not None:
        query = query.where(AuditRecord.at >= iso(filters.since))
    if filters.until is not None:
        query = query.where(AuditRecord.at < iso(filters.until))
    if before is not None:
        query = query.where(AuditRecord.seq < before)
    rows = session.execute(query.order_by(AuditRecord.seq.desc()).limit(min(limit, MAX_PAGE))).all()
    return [Entry(seq, digest, orjson.loads(body)) for seq, digest, body in rows]


def actions_of(session: Session, target_id: str) -> Sequence[str]:
    return session.scalars(select(AuditRecord.action).where(AuditRecord.target_id == target_id)).all()


CHAIN = chaintable.ChainTable(
    table=AuditRecord.__tablename__,
    mirrored=MIRRORED,
    record=AuditRecord,
    head=AuditHead,
    checkpoint=AuditCheckpoint,
    messages=MESSAGES,
    checkpoint_typ=CHECKPOINT_TYP,
)


def verify(engine: Engine, *, key: SigningKey, batch: int = 20_000, workers: int = 1) -> Verification:
    """Walk the whole chain, its checkpoints and head; stop at the first problem and name it. With
    `workers` > 1 and a long chain, consecutive ranges are walked in that many processes at once."""
    return chaintable.verify(engine, CHAIN, key=key, batch=batch, workers=workers)
