"""The consent ledger: an append-only hash chain with per-record MACs and signed checkpoints.

The chain itself (canonical bodies naming `seq` and the previous hash, MACs, verification) is
`accord.hashchain`, shared with the audit log; this module adds what consent needs: the evidence kept
beside the chain, whose salted digest the chain holds, so that erasure can delete it."""

from __future__ import annotations

import hashlib
import multiprocessing
import secrets
from collections.abc import Generator, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, create_engine, func, insert, select, text
from sqlalchemy.orm import Session

from accord import hashchain
from accord.consent.keys import MacKey, SigningKey
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


# Below this many records one process walks the chain: starting others costs more than it saves.
PARALLEL_MIN_RECORDS = 200_000
_NO_SEQ_BELOW, _NO_SEQ_ABOVE = -(2**62), 2**62  # bounds that leave a range open at that end


def _rows(engine: Engine, batch: int, after: int | None, upto: int | None) -> Generator[tuple[Any, ...]]:
    query = text(
        "SELECT l.seq, l.id, l.profile_id, l.purpose, l.channel, l.status, l.body, l.hash, l.mac, e.salt, e.body"
        " FROM consent_ledger l LEFT JOIN consent_evidence e ON e.record_id = l.id"
        " WHERE l.seq > :after AND l.seq <= :upto ORDER BY l.seq"
    )
    bounds = {"after": _NO_SEQ_BELOW if after is None else after, "upto": _NO_SEQ_ABOVE if upto is None else upto}
    # Closed explicitly: verification stops at the first problem, and PostgreSQL's server-side cursor
    # must not outlive it.
    with (
        engine.connect() as connection,
        connection.execution_options(stream_results=True, yield_per=batch).execute(query, bounds) as result,
    ):
        for chunk in result.partitions(batch):
            yield from chunk


def _evidence_matches(row: hashchain.Row, body: dict[str, Any], report: Verification) -> str | None:
    if row.attachment is None:
        return None
    salt, proof = row.attachment
    report.evidence_checked += 1
    if hashlib.sha256(salt.encode() + proof).hexdigest() != body.get("evidence"):
        return "the record's evidence was changed after it was recorded"
    return None


@dataclass(frozen=True, slots=True)
class _Segment:
    """The records with `after` < seq <= `upto` (None: unbounded), walked from the record before them."""

    after: int | None
    upto: int | None
    expected: int
    previous: str


def _walk(
    engine: Engine, segment: _Segment, *, mac_key: MacKey, checkpoints: dict[int, hashchain.Signed], batch: int
) -> Verification:
    def rows(stored: Iterator[tuple[Any, ...]]) -> Iterator[hashchain.Row]:
        for seq, *mirrored, body, digest, mac, salt, proof in stored:
            columns = dict(zip(MIRRORED, mirrored, strict=True))
            evidence = None if proof is None else (salt, bytes(proof))
            yield hashchain.Row(seq, mirrored[0], body, digest, mac, columns, evidence)

    with closing(_rows(engine, batch, segment.after, segment.upto)) as stored:
        return hashchain.walk(
            rows(stored),
            expected=segment.expected,
            previous=segment.previous,
            checkpoints=checkpoints,
            mac_ok=mac_key.mac_ok,
            messages=MESSAGES,
            extra=_evidence_matches,
        )


def _walk_elsewhere(
    url: str, segment: _Segment, mac_key: MacKey, checkpoints: dict[int, hashchain.Signed], batch: int
) -> Verification:
    """`_walk` in a process of its own, with an engine of its own."""
    engine = create_engine(url)
    try:
        return _walk(engine, segment, mac_key=mac_key, checkpoints=checkpoints, batch=batch)
    finally:
        engine.dispose()


def _segments(session: Session, last_seq: int, parts: int) -> list[_Segment]:
    """`parts` consecutive ranges of seq; each starts after the record stored just before it, which the
    range before ends with, so walking them one by one is walking the chain."""
    cuts = [last_seq * i // parts for i in range(1, parts)]
    segments, after = [], None
    for upto in [*cuts, None]:
        if after is None:
            expected, previous = 1, GENESIS
        else:
            before = session.execute(
                select(LedgerRecord.seq, LedgerRecord.hash)
                .where(LedgerRecord.seq <= after)
                .order_by(LedgerRecord.seq.desc())
                .limit(1)
            ).first()
            expected, previous = (1, GENESIS) if before is None else (before.seq + 1, before.hash)
        segments.append(_Segment(after, upto, expected, previous))
        after = upto
    return segments


def verify(
    engine: Engine,
    *,
    key: SigningKey,
    batch: int = 20_000,
    workers: int = 1,
    min_per_worker: int = PARALLEL_MIN_RECORDS // 2,
) -> Verification:
    """Walk the whole chain, checkpoints and head, and each record's evidence; stop at the first problem.

    With `workers` > 1 and a long chain, consecutive ranges are walked in that many processes at once; the
    report is the same as one walk's: the first problem in chain order."""
    with Session(engine) as session:
        checkpoints = {
            row.seq: hashchain.Signed(row.seq, row.hash, row.signed_at, _signed(key, row))
            for row in session.scalars(select(Checkpoint).order_by(Checkpoint.seq))
        }
        head = session.get(ChainHead, 1)
        stored_head = None if head is None else hashchain.Head(head.seq, head.hash, head.mac)
        last_seq = session.scalar(select(func.max(LedgerRecord.seq))) or 0
        parts = max(1, min(workers, last_seq // max(1, min_per_worker)))
        segments = _segments(session, last_seq, parts)
    bad_signature = hashchain.first_bad_signature(checkpoints)
    if bad_signature is not None:
        return Verification(first_bad=bad_signature)
    if len(segments) == 1:
        walked = [_walk(engine, segments[0], mac_key=key.mac_key, checkpoints=checkpoints, batch=batch)]
    else:
        url = engine.url.render_as_string(hide_password=False)
        context = multiprocessing.get_context("spawn")  # no fork of a process that may hold threads
        with ProcessPoolExecutor(max_workers=len(segments), mp_context=context) as pool:
            futures = [
                pool.submit(_walk_elsewhere, url, segment, key.mac_key, checkpoints, batch) for segment in segments
            ]
            walked = [future.result() for future in futures]
    report = hashchain.join(walked)
    return hashchain.finish(report, checkpoints=checkpoints, head=stored_head, mac_ok=key.mac_ok, messages=MESSAGES)


def _signed(key: SigningKey, row: Checkpoint) -> bool:
    payload = key.verify(row.jws, typ=CHECKPOINT_TYP)
    return payload is not None and payload.get("seq") == row.seq and payload.get("hash") == row.hash
