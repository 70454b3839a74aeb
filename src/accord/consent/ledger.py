"""The consent ledger: an append-only hash chain with per-record MACs and signed checkpoints.

The chain itself (canonical bodies naming `seq` and the previous hash, MACs, verification) is
`accord.hashchain`, shared with the audit log; this module adds what consent needs: the evidence kept
beside the chain, whose salted digest the chain holds, so that erasure can delete it."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, insert, select
from sqlalchemy.orm import Session

from accord import chaintable, hashchain
from accord.consent.keys import SigningKey
from accord.consent.models import ChainHead, Checkpoint, Evidence, LedgerRecord
from accord.hashchain import GENESIS, Problem, Verification, canonical, iso

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
    evidence_rows: list[dict[str, Any]] = []
    bodies: list[dict[str, Any]] = []
    for entry in entries:
        digest = None
        if entry.evidence:
            salt = secrets.token_hex(16)
            evidence_body = canonical(entry.evidence)
            digest = hashlib.sha256(salt.encode() + evidence_body).hexdigest()
            evidence_rows.append(
                {"record_id": entry.id, "profile_id": entry.profile_id, "salt": salt, "body": evidence_body}
            )
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


def _evidence(columns: tuple[Any, ...]) -> tuple[str, bytes] | None:
    salt, proof = columns
    return None if proof is None else (salt, bytes(proof))


def _evidence_matches(row: hashchain.Row, body: dict[str, Any], report: Verification) -> str | None:
    if row.attachment is None:
        return None
    salt, proof = row.attachment
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
    more_columns=", e.salt, e.body",
    join=f" LEFT JOIN {Evidence.__tablename__} e ON e.record_id = r.id",
    attachment=_evidence,
    extra=_evidence_matches,
)


def verify(
    engine: Engine,
    *,
    key: SigningKey,
    batch: int = 20_000,
    workers: int = 1,
    min_per_worker: int = chaintable.PARALLEL_MIN_RECORDS // 2,
) -> Verification:
    """Walk the whole chain, checkpoints and head, and each record's evidence; stop at the first problem.

    With `workers` > 1 and a long chain, consecutive ranges are walked in that many processes at once; the
    report is the same as one walk's: the first problem in chain order."""
    return chaintable.verify(engine, CHAIN, key=key, batch=batch, workers=workers, min_per_worker=min_per_worker)
