"""The consent ledger: an append-only hash chain with per-record MACs and signed checkpoints.

Each record's body is canonical JSON (RFC 8785) naming its `seq` and the previous record's hash; its hash
is SHA-256 over those bytes. Verification walks the chain in order and names the first record that does
not fit: edited, deleted, inserted, reordered, or missing from the tail that a checkpoint signed."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import rfc8785
from sqlalchemy import Engine, insert, select, text
from sqlalchemy.orm import Session

from accord.consent.keys import SigningKey
from accord.consent.models import ChainHead, Checkpoint, Evidence, LedgerRecord

GENESIS = "0" * 64
CHECKPOINT_TYP = "accord-consent-checkpoint"
# Columns that repeat a body field for queries; verification compares them.
MIRRORED = ("id", "profile_id", "purpose", "channel", "status")


def canonical(value: Any) -> bytes:
    return rfc8785.dumps(value)


def iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def head_mac_message(seq: int, digest: str) -> str:
    return f"head:{seq}:{digest}"


def record_mac_message(digest: str) -> str:
    return f"record:{digest}"


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
    bodies: list[tuple[dict[str, Any], str]] = []
    ledger_rows: list[dict[str, Any]] = []
    evidence_rows: list[dict[str, Any]] = []
    seq, previous = head.seq, head.hash
    for entry in entries:
        seq += 1
        digest = None
        if entry.evidence:
            salt = secrets.token_hex(16)
            evidence_body = canonical(entry.evidence)
            digest = hashlib.sha256(salt.encode() + evidence_body).hexdigest()
            evidence_rows.append(
                {"record_id": entry.id, "profile_id": entry.profile_id, "salt": salt, "body": evidence_body}
            )
        body = {
            **entry.fields,
            "v": 1,
            "seq": seq,
            "prev": previous,
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
        raw = canonical(body)
        previous = hashlib.sha256(raw).hexdigest()
        ledger_rows.append(
            {
                "seq": seq,
                "id": entry.id,
                "profile_id": entry.profile_id,
                "purpose": entry.purpose,
                "channel": entry.channel,
                "status": entry.status,
                "body": raw,
                "hash": previous,
                "mac": key.mac(record_mac_message(previous)),
            }
        )
        bodies.append((body, previous))
    if not ledger_rows:
        return bodies
    session.execute(insert(LedgerRecord), ledger_rows)
    if evidence_rows:
        session.execute(insert(Evidence), evidence_rows)
    head.seq, head.hash, head.mac = seq, previous, key.mac(head_mac_message(seq, previous))
    return bodies


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


@dataclass(slots=True)
class Problem:
    seq: int | None
    record_id: str | None
    problem: str


@dataclass(slots=True)
class Verification:
    records: int = 0
    checkpoints: int = 0
    evidence_checked: int = 0
    head_seq: int = 0
    head_hash: str = GENESIS
    first_bad: Problem | None = None

    @property
    def ok(self) -> bool:
        return self.first_bad is None


def _rows(engine: Engine, batch: int) -> Iterator[tuple[Any, ...]]:
    query = text(
        "SELECT l.seq, l.id, l.profile_id, l.purpose, l.channel, l.status, l.body, l.hash, l.mac, e.salt, e.body"
        " FROM consent_ledger l LEFT JOIN consent_evidence e ON e.record_id = l.id ORDER BY l.seq"
    )
    with engine.connect() as connection:
        result = connection.execution_options(stream_results=True, yield_per=batch).execute(query)
        for chunk in result.partitions(batch):
            yield from chunk


def verify(engine: Engine, *, key: SigningKey, batch: int = 20_000) -> Verification:
    """Walk the whole chain, checkpoints and head; stop at the first problem."""
    report = Verification()
    with Session(engine) as session:
        checkpoints = {row.seq: row for row in session.scalars(select(Checkpoint).order_by(Checkpoint.seq))}
        head = session.get(ChainHead, 1)
    for row in checkpoints.values():
        payload = key.verify(row.jws, typ=CHECKPOINT_TYP)
        if payload is None or payload.get("seq") != row.seq or payload.get("hash") != row.hash:
            report.first_bad = Problem(row.seq, None, "checkpoint signature does not verify with this key")
            return report
    expected, previous = 1, GENESIS
    for seq, record_id, profile_id, purpose, channel, status, body, digest, mac, salt, evidence in _rows(engine, batch):
        problem = _check(seq, expected, previous, (record_id, profile_id, purpose, channel, status), body, digest)
        if problem is None and not key.mac_ok(record_mac_message(digest), mac):
            problem = "the record's MAC does not verify: it was not written by Accord with this key"
        if problem is None and (checkpoint := checkpoints.get(seq)) is not None:
            if checkpoint.hash != digest:
                problem = f"the chain differs from the checkpoint signed at {iso(checkpoint.signed_at)}"
            report.checkpoints += 1
        if problem is None and evidence is not None:
            stated = orjson.loads(body).get("evidence")
            if hashlib.sha256(bytes(salt.encode()) + bytes(evidence)).hexdigest() != stated:
                problem = "the record's evidence was changed after it was recorded"
            report.evidence_checked += 1
        if problem is not None:
            report.first_bad = Problem(seq, record_id, problem)
            return report
        report.records += 1
        expected, previous = seq + 1, digest
    report.head_seq, report.head_hash = expected - 1, previous
    last_signed = max(checkpoints, default=0)
    if last_signed > report.head_seq:
        report.first_bad = Problem(
            report.head_seq + 1,
            None,
            f"records {report.head_seq + 1}..{last_signed} are missing: a checkpoint signed them",
        )
    elif head is not None and (head.seq, head.hash) != (report.head_seq, report.head_hash):
        report.first_bad = Problem(
            report.head_seq + 1 if head.seq > report.head_seq else head.seq,
            None,
            f"the ledger ends at record {report.head_seq} but its head says {head.seq}: records were removed or added",
        )
    elif head is not None and head.seq and not key.mac_ok(head_mac_message(head.seq, head.hash), head.mac):
        report.first_bad = Problem(head.seq, None, "the chain head's MAC does not verify")
    return report


def _check(seq: int, expected: int, previous: str, columns: tuple[str, ...], body: bytes, digest: str) -> str | None:
    body = bytes(body)
    if seq < expected:
        return f"record {seq} is out of order"
    if seq > expected:
        return f"records {expected}..{seq - 1} are missing" if seq - 1 > expected else f"record {expected} is missing"
    if hashlib.sha256(body).hexdigest() != digest:
        return "the record's body does not match its hash: it was edited"
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "the record's body is not JSON"
    if parsed.get("seq") != seq:
        return f"the record says it is number {parsed.get('seq')}: records were reordered or inserted"
    if parsed.get("prev") != previous:
        return "the record does not follow the one before it: records were reordered, inserted or deleted"
    for name, value in zip(MIRRORED, columns, strict=True):
        if parsed.get(name) != value:
            return f"the record's {name} column differs from its hashed body: it was edited"
    return None
