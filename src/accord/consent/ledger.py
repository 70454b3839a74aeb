"""The consent ledger: an append-only hash chain with per-record MACs and signed checkpoints.

The chain itself (canonical bodies naming `seq` and the previous hash, MACs, verification) is
`accord.hashchain`, shared with the audit log; this module adds what consent needs: the evidence kept
beside the chain, whose salted digest the chain holds, so that erasure can delete it."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Generator, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import Engine, insert, select, text
from sqlalchemy.orm import Session

from accord import hashchain
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


def _rows(engine: Engine, batch: int) -> Generator[tuple[Any, ...]]:
    query = text(
        "SELECT l.seq, l.id, l.profile_id, l.purpose, l.channel, l.status, l.body, l.hash, l.mac, e.salt, e.body"
        " FROM consent_ledger l LEFT JOIN consent_evidence e ON e.record_id = l.id ORDER BY l.seq"
    )
    # Closed explicitly: verification stops at the first problem, and PostgreSQL's server-side cursor
    # must not outlive it.
    with (
        engine.connect() as connection,
        connection.execution_options(stream_results=True, yield_per=batch).execute(query) as result,
    ):
        for chunk in result.partitions(batch):
            yield from chunk


def verify(engine: Engine, *, key: SigningKey, batch: int = 20_000) -> Verification:
    """Walk the whole chain, checkpoints and head, and each record's evidence; stop at the first problem."""
    with Session(engine) as session:
        checkpoints = {
            row.seq: hashchain.Signed(row.seq, row.hash, row.signed_at, _signed(key, row))
            for row in session.scalars(select(Checkpoint).order_by(Checkpoint.seq))
        }
        head = session.get(ChainHead, 1)
        stored_head = None if head is None else hashchain.Head(head.seq, head.hash, head.mac)

    def rows(stored: Iterator[tuple[Any, ...]]) -> Iterator[hashchain.Row]:
        for seq, *mirrored, body, digest, mac, salt, proof in stored:
            columns = dict(zip(MIRRORED, mirrored, strict=True))
            record_id = mirrored[0]
            evidence = None if proof is None else (salt, bytes(proof))
            yield hashchain.Row(seq, record_id, body, digest, mac, columns, evidence)

    def evidence_matches(row: hashchain.Row, report: Verification) -> str | None:
        if row.attachment is None:
            return None
        salt, proof = row.attachment
        report.evidence_checked += 1
        if hashlib.sha256(salt.encode() + proof).hexdigest() != orjson.loads(row.body).get("evidence"):
            return "the record's evidence was changed after it was recorded"
        return None

    with closing(_rows(engine, batch)) as stored:
        return hashchain.verify(
            rows(stored),
            checkpoints=checkpoints,
            head=stored_head,
            mac_ok=key.mac_ok,
            messages=MESSAGES,
            extra=evidence_matches,
        )


def _signed(key: SigningKey, row: Checkpoint) -> bool:
    payload = key.verify(row.jws, typ=CHECKPOINT_TYP)
    return payload is not None and payload.get("seq") == row.seq and payload.get("hash") == row.hash
