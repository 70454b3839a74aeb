"""Hash chains: the shape shared by the consent ledger and the audit log.

Each record's body is canonical JSON (RFC 8785) that names its `seq` and the previous record's hash; its
hash is SHA-256 over exactly those bytes, and a MAC under a key kept outside the database authenticates
the hash. A head row holds the last link (and its own MAC); signed checkpoints pin the chain's length.
Verification walks the chain in order and names the first record that does not fit: edited, deleted,
inserted, reordered, or missing from the tail that a checkpoint signed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import rfc8785

GENESIS = "0" * 64


def canonical(value: Any) -> bytes:
    return rfc8785.dumps(value)


def iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Link:
    seq: int
    body: dict[str, Any]
    raw: bytes  # the canonical bytes that were hashed
    hash: str


def extend(bodies: Iterable[dict[str, Any]], *, seq: int, previous: str) -> list[Link]:
    """Chain `bodies` after the record (`seq`, `previous`): each gets the next seq and the hash before it."""
    links = []
    for body in bodies:
        seq += 1
        chained = {**body, "seq": seq, "prev": previous}
        raw = canonical(chained)
        previous = hashlib.sha256(raw).hexdigest()
        links.append(Link(seq, chained, raw, previous))
    return links


@dataclass(frozen=True, slots=True)
class MacMessages:
    """What the MAC covers for one chain; the prefix keeps chains sharing a key apart."""

    prefix: str = ""

    def record(self, digest: str) -> str:
        return f"{self.prefix}record:{digest}"

    def head(self, seq: int, digest: str) -> str:
        return f"{self.prefix}head:{seq}:{digest}"


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


@dataclass(slots=True)  # not frozen: one is made per record walked, and a frozen one costs twice as much to make
class Row:
    """One stored record as verification reads it; the columns named `names`, whose values are `columns`,
    repeat body fields for queries (a tuple per row and the names once: cheaper than a dict per record)."""

    seq: int
    record_id: str
    body: bytes
    hash: str
    mac: str
    names: tuple[str, ...]
    columns: tuple[Any, ...]
    attachment: Any = None  # what one chain's own check needs (the consent ledger's evidence)


@dataclass(frozen=True, slots=True)
class Signed:
    """A checkpoint as stored: the seq and hash it claims, and whether its signature verified."""

    seq: int
    hash: str
    signed_at: datetime
    valid: bool


@dataclass(frozen=True, slots=True)
class Head:
    seq: int
    hash: str
    mac: str


def check_link(row: Row, expected: int, previous: str) -> str | None:
    """What is wrong with `row` as the record after (`expected` - 1, `previous`); None if nothing."""
    problem, _ = _check(row, expected, previous)
    return problem


def _check(row: Row, expected: int, previous: str) -> tuple[str | None, dict[str, Any]]:
    seq, body = row.seq, bytes(row.body)
    if seq < expected:
        return f"record {seq} is out of order", {}
    if seq > expected:
        missing = (
            f"records {expected}..{seq - 1} are missing" if seq - 1 > expected else f"record {expected} is missing"
        )
        return missing, {}
    if hashlib.sha256(body).hexdigest() != row.hash:
        return "the record's body does not match its hash: it was edited", {}
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "the record's body is not JSON", {}
    if not isinstance(parsed, dict):
        return "the record's body is not a JSON object", {}
    if parsed.get("seq") != seq:
        return f"the record says it is number {parsed.get('seq')}: records were reordered or inserted", parsed
    if parsed.get("prev") != previous:
        return "the record does not follow the one before it: records were reordered, inserted or deleted", parsed
    for name, value in zip(row.names, row.columns, strict=True):
        if parsed.get(name) != value:
            return f"the record's {name} column differs from its hashed body: it was edited", parsed
    return None, parsed


# What one chain checks beyond the link (the consent ledger's evidence digest): the row, its parsed body.
Extra = Callable[[Row, dict[str, Any], Verification], str | None]


def walk(
    rows: Iterable[Row],
    *,
    expected: int,
    previous: str,
    checkpoints: Mapping[int, Signed],
    mac_ok: Callable[[str, str], bool],
    messages: MacMessages,
    extra: Extra | None = None,
) -> Verification:
    """Walk `rows` as the records after (`expected` - 1, `previous`), stopping at the first problem. The
    report's head is the last record that fitted: where the next segment of the chain must start."""
    report = Verification(head_seq=expected - 1, head_hash=previous)
    for row in rows:
        problem, parsed = _check(row, expected, previous)
        if problem is None and not mac_ok(messages.record(row.hash), row.mac):
            problem = "the record's MAC does not verify: it was not written by Accord with this key"
        signed = checkpoints.get(row.seq)
        if problem is None and signed is not None:
            if signed.hash != row.hash:
                problem = f"the chain differs from the checkpoint signed at {iso(signed.signed_at)}"
            report.checkpoints += 1
        if problem is None and extra is not None:
            problem = extra(row, parsed, report)
        if problem is not None:
            report.head_seq, report.head_hash = expected - 1, previous
            if row.seq > expected:  # a gap: name the first missing record, which has no id left to name
                report.first_bad = Problem(expected, None, problem)
            else:
                report.first_bad = Problem(row.seq, row.record_id, problem)
            return report
        report.records += 1
        expected, previous = row.seq + 1, row.hash
    report.head_seq, report.head_hash = expected - 1, previous
    return report


def join(segments: Iterable[Verification]) -> Verification:
    """One report for consecutive segments, each walked from where the one before it ends in the store:
    the first problem in chain order wins, as if the whole chain had been walked at once."""
    report = Verification()
    for segment in segments:
        report.records += segment.records
        report.checkpoints += segment.checkpoints
        report.evidence_checked += segment.evidence_checked
        report.head_seq, report.head_hash = segment.head_seq, segment.head_hash
        if segment.first_bad is not None:
            report.first_bad = segment.first_bad
            break
    return report


def first_bad_signature(checkpoints: Mapping[int, Signed]) -> Problem | None:
    for checkpoint in checkpoints.values():
        if not checkpoint.valid:
            return Problem(checkpoint.seq, None, "checkpoint signature does not verify with this key")
    return None


def finish(
    report: Verification,
    *,
    checkpoints: Mapping[int, Signed],
    head: Head | None,
    mac_ok: Callable[[str, str], bool],
    messages: MacMessages,
) -> Verification:
    """The checks on a whole walked chain: its tail against the checkpoints and against the head row."""
    if report.first_bad is not None:
        return report
    last_signed = max(checkpoints, default=0)
    if last_signed > report.head_seq:
        report.first_bad = Problem(
            report.head_seq + 1,
            None,
            f"records {report.head_seq + 1}..{last_signed} are missing: a checkpoint signed them",
        )
    elif head is None and report.records:
        report.first_bad = Problem(
            report.head_seq + 1,
            None,
            f"the chain head is missing while the chain holds {report.records} records: records may have been removed",
        )
    elif head is not None and (head.seq, head.hash) != (report.head_seq, report.head_hash):
        report.first_bad = Problem(
            report.head_seq + 1 if head.seq > report.head_seq else head.seq,
            None,
            f"the chain ends at record {report.head_seq} but its head says {head.seq}: records were removed or added",
        )
    elif head is not None and head.seq and not mac_ok(messages.head(head.seq, head.hash), head.mac):
        report.first_bad = Problem(head.seq, None, "the chain head's MAC does not verify")
    return report
