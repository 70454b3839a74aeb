"""Recording consent statements and reading what they add up to. Every path that records one (the REST
API, the tracking pipeline, the preference centre, the expiry sweep) goes through `record`."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from iab_tcf import decode as decode_tcf  # type: ignore[import-untyped]
from sqlalchemy import ColumnElement, delete, or_, select, tuple_, update
from sqlalchemy.orm import Session

from accord.config import Settings
from accord.consent import catalogue, ledger, receipts
from accord.consent.keys import SigningKey
from accord.consent.models import ConsentState, Evidence, LedgerRecord, Receipt, Subject
from accord.profiles.service import merged_ids
from accord.security.crypto import Undecryptable
from accord.security.datakeys import DataKeys

STATUSES = ("given", "refused", "withdrawn", "expired", "renewed", "pending")
GRANTING = frozenset({"given", "renewed"})
METHODS = tuple(receipts.CONSENT_TYPES)
ACTOR_TYPES = ("customer", "agent", "system")
# Said on the phone or written on paper: only a reference to the call recording or the form proves it.
EVIDENCED_METHODS = frozenset({"verbal", "paper_form"})
MAX_TCF = 4000
MAX_EVIDENCE = 8192
CLOCK_SKEW = timedelta(minutes=5)
LINK_TYP = "accord-preference-link"
CONFIRM_TYP = "accord-double-opt-in"


class ConsentError(ValueError):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass(frozen=True, slots=True)
class NoticeRef:
    key: str
    version: int
    language: str


@dataclass(slots=True)
class Statement:
    """One consent statement as a caller makes it."""

    purpose: str
    channel: str
    status: str
    method: str
    notice: NoticeRef | None = None
    occurred_at: datetime | None = None
    expires_at: datetime | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    tcf: str | None = None
    source: str | None = None
    confirms: str | None = None  # double opt-in: the pending record this confirms


@dataclass(frozen=True, slots=True)
class Recorded:
    body: dict[str, Any]
    hash: str
    receipt: str
    evidence: dict[str, Any]


@dataclass(frozen=True, slots=True)
class State:
    purpose: str
    channel: str
    status: str
    seq: int
    record_id: str
    occurred_at: datetime
    expires_at: datetime | None

    def effective(self, now: datetime) -> str:
        """The status as of `now`: a grant past its expiry has expired, whether or not the sweep ran."""
        if self.status in GRANTING and self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return self.status


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str
    legal_basis: str
    record_id: str | None


def person_ids(session: Session, profile_id: str) -> list[str]:
    """The profile and every profile merged into it: consent follows merges."""
    return [profile_id, *merged_ids(session, profile_id)]


def tcf_summary(tc_string: str) -> dict[str, Any]:
    """The parts of an IAB TCF v2 string that reporting needs; ValueError when it is not one."""
    try:
        decoded = decode_tcf(tc_string)
    except Exception as error:  # the decoder raises bare Exceptions and IndexErrors on bad input
        raise ValueError(f"not an IAB TCF v2 consent string ({type(error).__name__})") from None
    if getattr(decoded, "version", None) != 2:
        raise ValueError("only IAB TCF v2 consent strings are accepted")
    purposes = getattr(decoded, "purposes_consent", {}) or {}
    interests = getattr(decoded, "purposes_legitimate_interests", {}) or {}
    vendors = getattr(decoded, "consented_vendors", None) or {}
    return {
        "version": 2,
        "created": decoded.created.replace(tzinfo=UTC).isoformat().replace("+00:00", "Z"),
        "last_updated": decoded.last_updated.replace(tzinfo=UTC).isoformat().replace("+00:00", "Z"),
        "cmp_id": decoded.cmp_id,
        "cmp_version": decoded.cmp_version,
        "consent_language": _letters(decoded.consent_language),
        "vendor_list_version": decoded.vendor_list_version,
        "policy_version": decoded.tcf_policy_version,
        "publisher_cc": _letters(decoded.publisher_cc),
        "purposes_consent": sorted(int(k) for k, v in purposes.items() if v),
        "purposes_legitimate_interest": sorted(int(k) for k, v in interests.items() if v),
        "vendors_consent": sorted(int(k) for k, v in vendors.items() if v) if isinstance(vendors, dict) else None,
    }


def _letters(value: Any) -> str | None:
    """The decoder gives two-letter codes as bytes; JSON wants text."""
    return value.decode("ascii", "replace") if isinstance(value, bytes) else value


def _entry(
    session: Session, statement: Statement, *, profile_id: str, actor: dict[str, Any], settings: Settings, now: datetime
) -> tuple[ledger.Entry, catalogue.PurposeView]:
    purpose = catalogue.get_purpose(session, statement.purpose)
    if purpose is None:
        raise ConsentError(422, "unknown_purpose", f"no purpose {statement.purpose[:120]!r} in the catalogue")
    if not catalogue.channel_exists(session, statement.channel):
        raise ConsentError(422, "unknown_channel", f"no channel {statement.channel[:60]!r}; add it first")
    if statement.status not in STATUSES:
        raise ConsentError(422, "invalid_status", f"status must be one of {', '.join(STATUSES)}")
    if statement.method not in METHODS:
        raise ConsentError(422, "invalid_method", f"method must be one of {', '.join(METHODS)}")
    if statement.method in EVIDENCED_METHODS and not str(statement.evidence.get("reference") or "").strip():
        raise ConsentError(
            422, "evidence_required", f"a {statement.method} statement needs evidence.reference (call or form)"
        )
    occurred_at = statement.occurred_at or now
    if occurred_at.tzinfo is None:
        raise ConsentError(422, "invalid_time", "occurred_at needs a time zone")
    if occurred_at > now + CLOCK_SKEW:
        raise ConsentError(422, "invalid_time", "occurred_at is in the future")
    expires_at = statement.expires_at
    if expires_at is not None and expires_at <= occurred_at:
        raise ConsentError(422, "invalid_time", "expires_at must be after occurred_at")
    if statement.status in GRANTING and expires_at is None and purpose.expires_after_days:
        expires_at = occurred_at + timedelta(days=purpose.expires_after_days)
    if statement.status not in GRANTING and statement.status != "pending":
        expires_at = None
    notice_ref = None
    if statement.notice is not None:
        ref = statement.notice
        notice = catalogue.get_notice(session, ref.key, ref.version, ref.language)
        if notice is None:
            raise ConsentError(
                422, "unknown_notice", f"no notice {ref.key[:120]!r} version {ref.version} in {ref.language[:20]!r}"
            )
        if not catalogue.covers(notice, purpose.key):
            raise ConsentError(
                422, "notice_mismatch", f"notice {notice.key} v{notice.version} does not cover {purpose.key}"
            )
        notice_ref = {
            "key": notice.key,
            "version": notice.version,
            "language": notice.language,
            "sha256": notice.sha256,
            "url": notice.url,
        }
    elif purpose.legal_basis == "consent" and statement.status in GRANTING and statement.method not in {"tcf", "gpc"}:
        raise ConsentError(
            422, "notice_required", "consent given needs the notice the person saw: notice {key, version, language}"
        )
    if statement.tcf is not None:
        if len(statement.tcf) > MAX_TCF:
            raise ConsentError(422, "invalid_tcf", f"a TC string is at most {MAX_TCF} characters")
        try:
            tcf_summary(statement.tcf)
        except ValueError as error:
            raise ConsentError(422, "invalid_tcf", str(error)) from None
    if len(orjson.dumps(statement.evidence)) > MAX_EVIDENCE:
        raise ConsentError(422, "evidence_too_large", f"evidence is at most {MAX_EVIDENCE} bytes of JSON")
    fields = {
        "legal_basis": purpose.legal_basis,
        "method": statement.method,
        "actor": actor,
        "notice": notice_ref,
        "source": statement.source,
        "tcf": statement.tcf,
    }
    if statement.confirms is not None:
        fields["confirms"] = statement.confirms
    entry = ledger.Entry(
        id=str(uuid.uuid4()),
        profile_id=profile_id,
        purpose=purpose.key,
        channel=statement.channel,
        status=statement.status,
        occurred_at=occurred_at.astimezone(UTC),
        expires_at=expires_at,
        fields=fields,
        evidence={k: v for k, v in statement.evidence.items() if v is not None},
    )
    return entry, purpose


def record(
    session: Session,
    statements: Sequence[tuple[str, Statement]],
    *,
    actor: dict[str, Any],
    key: SigningKey,
    settings: Settings,
    now: datetime,
) -> list[Recorded]:
    """Validate, chain, project and sign (profile_id, statement) pairs, all or none. Raises ConsentError."""
    prepared = [_entry(session, s, profile_id=p, actor=actor, settings=settings, now=now) for p, s in statements]
    chained = ledger.append(session, [entry for entry, _ in prepared], key=key, now=now)
    results = []
    for (entry, purpose), (body, digest) in zip(prepared, chained, strict=True):
        _project(session, entry, body["seq"])
        token = receipts.sign(receipts.build(body, digest, purpose, settings), key)
        session.add(Receipt(record_id=entry.id, profile_id=entry.profile_id, created_at=now, jws=token))
        results.append(Recorded(body=body, hash=digest, receipt=token, evidence=entry.evidence))
    every = timedelta(seconds=settings.consent_checkpoint_seconds)
    if ledger.checkpoint_due(session, every_records=settings.consent_checkpoint_records, every=every, now=now):
        ledger.checkpoint(session, key=key, now=now)
    # imported here: segments and journeys read consent state (a cycle at the top)
    from accord.journeys import streaming as journey_streaming
    from accord.segments import streaming

    profile_ids = sorted({profile_id for profile_id, _ in statements})
    moved = streaming.consent_changed(session, profile_ids, now)
    journey_streaming.consent_changed(session, profile_ids, moved, now)
    return results


def _project(session: Session, entry: ledger.Entry, seq: int) -> None:
    row = session.get(ConsentState, (entry.profile_id, entry.purpose, entry.channel))
    if row is not None and (row.occurred_at, row.seq) > (entry.occurred_at, seq):
        return  # an older statement recorded late (a paper form) joins the history, not the state
    if row is None:
        row = ConsentState(profile_id=entry.profile_id, purpose=entry.purpose, channel=entry.channel)
        session.add(row)
    row.status, row.seq, row.record_id = entry.status, seq, entry.id
    row.occurred_at, row.expires_at = entry.occurred_at, entry.expires_at


def fold(states: Iterable[State]) -> dict[tuple[str, str], State]:
    """The latest statement per (purpose, channel), by when it was made, then by ledger order."""
    current: dict[tuple[str, str], State] = {}
    for state in states:
        key = (state.purpose, state.channel)
        held = current.get(key)
        if held is None or (held.occurred_at, held.seq) < (state.occurred_at, state.seq):
            current[key] = state
    return current


def _parse_time(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text.replace("Z", "+00:00"))


def state_of(body: dict[str, Any]) -> State:
    occurred = _parse_time(body["occurred_at"])
    assert occurred is not None
    return State(
        purpose=body["purpose"],
        channel=body["channel"],
        status=body["status"],
        seq=body["seq"],
        record_id=body["id"],
        occurred_at=occurred,
        expires_at=_parse_time(body["expires_at"]),
    )


def current(session: Session, profile_ids: Sequence[str]) -> dict[tuple[str, str], State]:
    rows = session.scalars(select(ConsentState).where(ConsentState.profile_id.in_(profile_ids)))
    return fold(
        State(row.purpose, row.channel, row.status, row.seq, row.record_id, row.occurred_at, row.expires_at)
        for row in rows
    )


def about(record_id: Any, named: Any, profile_ids: Sequence[str]) -> ColumnElement[bool]:
    """Records about these profiles now: named by them and not moved since, or moved to them."""
    moved = select(Subject.record_id)
    return or_(
        named.in_(profile_ids) & record_id.not_in(moved),
        record_id.in_(moved.where(Subject.profile_id.in_(profile_ids))),
    )


def history(
    session: Session, profile_ids: Sequence[str], *, after: int = 0, limit: int = 100
) -> list[tuple[dict[str, Any], str, dict[str, Any] | None]]:
    """Ledger records of these profiles in ledger order, with their hash and evidence (None once erased)."""
    rows = session.execute(
        select(LedgerRecord.id, LedgerRecord.body, LedgerRecord.hash, Evidence.body)
        .outerjoin(Evidence, Evidence.record_id == LedgerRecord.id)
        .where(about(LedgerRecord.id, LedgerRecord.profile_id, profile_ids), LedgerRecord.seq > after)
        .order_by(LedgerRecord.seq)
        .limit(limit)
    ).all()
    evidence = ledger.opened_evidence(DataKeys.of(session), [(record_id, stored) for record_id, _, _, stored in rows])
    return [(orjson.loads(body), digest, shown) for (_, body, digest, _), shown in zip(rows, evidence, strict=True)]


def receipts_of(session: Session, profile_ids: Sequence[str], *, limit: int = 100) -> Sequence[Receipt]:
    return session.scalars(
        select(Receipt)
        .where(about(Receipt.record_id, Receipt.profile_id, profile_ids))
        .order_by(Receipt.created_at.desc())
        .limit(limit)
    ).all()


def receipt_of(session: Session, profile_ids: Sequence[str], record_id: str) -> Receipt | None:
    """The receipt of one record, if the record is about these profiles."""
    return session.scalar(
        select(Receipt).where(Receipt.record_id == record_id, about(Receipt.record_id, Receipt.profile_id, profile_ids))
    )


def decide(
    purpose: catalogue.PurposeView, channel: str, states: dict[tuple[str, str], State], now: datetime
) -> Decision:
    """The one policy every path that lets data out or contacts a person asks: deny unless a valid basis
    exists. The latest statement about this purpose or a parent of it, on this channel or on `all`, decides."""
    applicable = [
        state
        for parent in catalogue.ancestors(purpose.key)
        for on in (channel, "all")
        if (state := states.get((parent, on))) is not None
    ]
    latest = max(applicable, key=lambda state: (state.occurred_at, state.seq), default=None)
    basis = purpose.legal_basis
    if basis in {"contract", "legal_obligation", "vital_interest"}:
        return Decision(True, f"legal_basis:{basis}", basis, None)
    if basis in {"legitimate_interest", "public_task"}:
        if latest is not None and latest.status in {"refused", "withdrawn"}:
            return Decision(False, "objected", basis, latest.record_id)
        return Decision(True, f"legal_basis:{basis}", basis, latest.record_id if latest else None)
    if latest is None:
        return Decision(False, "no_consent", basis, None)
    status = latest.effective(now)
    if status in GRANTING:
        return Decision(True, "consent_given", basis, latest.record_id)
    reason = {"pending": "pending_confirmation"}.get(status, status)
    return Decision(False, reason, basis, latest.record_id)


def renewals_due(session: Session, *, before: datetime, limit: int) -> Sequence[ConsentState]:
    """Grants that lapse before `before` (or have lapsed), soonest first."""
    return session.scalars(
        select(ConsentState)
        .where(
            ConsentState.status.in_(GRANTING), ConsentState.expires_at.is_not(None), ConsentState.expires_at <= before
        )
        .order_by(ConsentState.expires_at, ConsentState.profile_id)
        .limit(limit)
    ).all()


def expire_lapsed(session: Session, *, key: SigningKey, settings: Settings, now: datetime, limit: int = 1000) -> int:
    """Record `expired` for grants whose time has come (the state already reads expired; this writes it
    into the history). Returns how many."""
    ledger.lock_head(session)  # after the lock, a concurrent sweep's records are visible
    lapsed = session.scalars(
        select(ConsentState)
        .where(ConsentState.status.in_(GRANTING), ConsentState.expires_at <= now)
        .order_by(ConsentState.expires_at)
        .limit(limit)
    ).all()
    statements = [
        (
            row.profile_id,
            Statement(
                purpose=row.purpose,
                channel=row.channel,
                status="expired",
                method="expiry",
                occurred_at=row.expires_at,
                evidence={"expired_record": row.record_id},
            ),
        )
        for row in lapsed
    ]
    record(session, statements, actor={"type": "system", "id": "expiry"}, key=key, settings=settings, now=now)
    return len(statements)


def link_token(
    key: SigningKey, *, profile_id: str, now: datetime, days: int, typ: str, **claims: Any
) -> tuple[str, datetime]:
    expires = now + timedelta(days=days)
    payload = {"sub": profile_id, "exp": int(expires.timestamp()), "jti": secrets.token_urlsafe(12), **claims}
    return key.sign(payload, typ=typ), expires


def read_link(key: SigningKey, token: str, *, typ: str, now: datetime) -> dict[str, Any] | None:
    """The claims of a valid, unexpired link of this kind; None otherwise."""
    if not token or len(token) > 4096:
        return None
    claims = key.verify(token, typ=typ)
    if claims is None or not isinstance(claims.get("sub"), str) or not isinstance(claims.get("exp"), int):
        return None
    if claims["exp"] <= now.timestamp():
        return None
    return claims


def sale_refused(session: Session, profile_ids: Iterable[str]) -> set[str]:
    """Which of these profiles have refused (or withdrawn) sale and sharing on every channel."""
    keys = [(profile_id, "sale_sharing", "all") for profile_id in profile_ids]
    if not keys:
        return set()
    rows = session.execute(
        select(ConsentState.profile_id, ConsentState.status).where(
            tuple_(ConsentState.profile_id, ConsentState.purpose, ConsentState.channel).in_(keys)
        )
    )
    return {profile_id for profile_id, status in rows if status in {"refused", "withdrawn"}}


def confirm_double_opt_in(
    session: Session,
    *,
    profile_id: str,
    record_id: str,
    evidence: dict[str, Any],
    key: SigningKey,
    settings: Settings,
    now: datetime,
) -> str:
    """Turn a pending double opt-in into a grant: "confirmed", "already" (confirmed before) or
    "superseded" (a later statement replaced it, or it is not pending)."""
    ledger.lock_head(session)
    pending = session.scalar(
        select(LedgerRecord).where(LedgerRecord.id == record_id, LedgerRecord.profile_id == profile_id)
    )
    if pending is None or pending.status != "pending":
        return "superseded"
    state = session.get(ConsentState, (profile_id, pending.purpose, pending.channel))
    if state is None:
        return "superseded"
    if state.record_id != record_id:
        latest = session.scalar(select(LedgerRecord.body).where(LedgerRecord.id == state.record_id))
        confirmed = latest is not None and orjson.loads(latest).get("confirms") == record_id
        return "already" if confirmed else "superseded"
    body = orjson.loads(pending.body)
    notice = body.get("notice")
    statement = Statement(
        purpose=pending.purpose,
        channel=pending.channel,
        status="given",
        method="double_opt_in",
        notice=NoticeRef(notice["key"], notice["version"], notice["language"]) if notice else None,
        evidence={**evidence, "confirms": record_id},
        source=body.get("source"),
        confirms=record_id,
    )
    record(
        session, [(profile_id, statement)], actor={"type": "customer", "id": None}, key=key, settings=settings, now=now
    )
    return "confirmed"


def reattribute(session: Session, moves: Sequence[tuple[str, str, str, str]], now: datetime) -> int:
    """Identity moved these events (source, messageId, from profile, to profile): the consent records they
    made now count for the profile the event is on. Re-projects the state of both profiles; returns how
    many records moved."""
    by_from: dict[str, dict[tuple[str, str], str]] = {}
    for source_id, message_id, old, new in moves:
        by_from.setdefault(old, {})[(source_id, message_id)] = new
    if not by_from:
        return 0
    rows = session.execute(
        select(LedgerRecord.id, LedgerRecord.profile_id, LedgerRecord.body, Evidence.body, Subject.profile_id)
        .join(Evidence, Evidence.record_id == LedgerRecord.id)
        .outerjoin(Subject, Subject.record_id == LedgerRecord.id)
        .where(about(LedgerRecord.id, LedgerRecord.profile_id, sorted(by_from)))
    ).all()
    keys = DataKeys.of(session)
    opened = ledger.opened_evidence(keys, [(record_id, stored) for record_id, _, _, stored, _ in rows])
    moved: dict[str, str] = {}
    touched: set[str] = set()
    for (record_id, named, body, _, subject), evidence in zip(rows, opened, strict=True):
        current = subject or named
        made_by: tuple[Any, Any] = (orjson.loads(body).get("source"), evidence.get("message_id") if evidence else None)
        target = by_from.get(current, {}).get(made_by)
        if target is not None and target != current:
            moved[record_id] = target
            touched.update((current, target))
    sealed = {record_id: stored for record_id, _, _, stored, _ in rows}
    for record_id, target in moved.items():
        row = session.get(Subject, record_id)
        if row is None:
            session.add(Subject(record_id=record_id, profile_id=target, moved_at=now))
        else:
            row.profile_id, row.moved_at = target, now
        # The evidence now proves a statement of the receiving person: sealed again under their key, so
        # that erasing them leaves no copy readable under the other's (as an unmerge does with the timeline).
        try:
            plain = ledger.open_evidence(keys, record_id, sealed[record_id])
        except Undecryptable:
            continue
        session.execute(
            update(Evidence)
            .where(Evidence.record_id == record_id)
            .values(body=ledger.seal_evidence(keys, record_id, target, plain))
        )
    session.flush()
    for profile_id in sorted(touched):
        _reproject(session, profile_id)
    return len(moved)


def _reproject(session: Session, profile_id: str) -> None:
    """Rebuild one profile's consent state from the records about it."""
    session.execute(delete(ConsentState).where(ConsentState.profile_id == profile_id))
    rows = session.execute(
        select(LedgerRecord.body).where(about(LedgerRecord.id, LedgerRecord.profile_id, [profile_id]))
    ).scalars()
    latest = fold(state_of(orjson.loads(body)) for body in rows)
    for state in latest.values():
        session.add(
            ConsentState(
                profile_id=profile_id,
                purpose=state.purpose,
                channel=state.channel,
                status=state.status,
                seq=state.seq,
                record_id=state.record_id,
                occurred_at=state.occurred_at,
                expires_at=state.expires_at,
            )
        )
    session.flush()
