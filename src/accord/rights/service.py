"""Data subject rights: access (everything Accord holds about a person, as JSON) and erasure (their rows
deleted, a tombstone kept, their identifiers suppressed from then on, the consent ledger's proof kept).

The person is the live profile a request names together with every profile merged into it. Erasure
deletes their profiles, identifiers, traits, timeline, consent state, evidence, receipts and subject moves,
the merge history that names them, the quarantined events and pending log events that carry their
identifiers, and their identifiers from the separations of their cluster. The consent ledger keeps its
records: they name the person only by a profile id, and the evidence they hash is deleted, so the chain
still verifies and proves what was consented, without saying who.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

import orjson
from sqlalchemy import Table, delete, func, or_, select, update
from sqlalchemy.orm import Session

from accord.consent import service as consent
from accord.consent.keys import SigningKey
from accord.consent.models import ConsentState, Evidence, LedgerRecord, Receipt, Subject
from accord.console import service as console
from accord.console.models import Note, RecentView
from accord.hashchain import iso
from accord.identity import history as identity_history
from accord.identity.blind import Revealer
from accord.identity.models import Identity, MatchKey, MatchReview, Merge, SeparationRow
from accord.identity.rules import Key, Rules
from accord.identity.service import current_rules
from accord.ingest import quarantine
from accord.ingest.models import QuarantinedEvent
from accord.journeys.models import JourneyPosition, JourneyTransition
from accord.log.models import LogRecord
from accord.log.sql import SqlEventLog
from accord.profiles.models import Profile, ProfileEvent, ProfileWord
from accord.profiles.private import profile_traits
from accord.profiles.sealed import opened
from accord.rights.models import ErasedIdentifier, Tombstone
from accord.security import datakeys
from accord.security.crypto import Undecryptable, is_blind
from accord.segments.models import SegmentMembership, SegmentTransition

FORMAT = "accord-subject-access/1"
EVENTS = cast(Table, ProfileEvent.__table__)


def identifier_digest(key: SigningKey, kind: str, value: str) -> str:
    """The keyed digest that stands for an erased identifier (a MAC message of its own under the key file)."""
    return key.mac(f"erased-identifier:{kind}:{value}")


# -- access -----------------------------------------------------------------------------------------------


def _person(session: Session, profile: Profile) -> list[str]:
    return identity_history.person_ids(session, profile)


def export(
    session: Session, profile: Profile, *, pending: Sequence[dict[str, Any]] = (), now: datetime
) -> dict[str, Any]:
    """Everything Accord holds about the person `profile` is, as one JSON-ready document."""
    ids = _person(session, profile)
    absorbed = [p for p in session.scalars(select(Profile).where(Profile.id.in_(ids))) if p.id != profile.id]
    identities = session.scalars(select(Identity).where(_theirs(ids)).order_by(Identity.type)).all()
    events = opened(
        session,
        session.scalars(
            select(ProfileEvent)
            .where(ProfileEvent.profile_id.in_(ids))
            .order_by(ProfileEvent.timestamp, ProfileEvent.id)
        ).all(),
    )
    history = consent.history(session, ids, limit=10**9)
    receipts = consent.receipts_of(session, ids, limit=10**9)
    merges = identity_history.history(session, profile, limit=10**9)
    notes = console.notes(session, ids, limit=10**9)
    memberships = session.scalars(
        select(SegmentMembership).where(SegmentMembership.profile_id.in_(ids)).order_by(SegmentMembership.segment_key)
    ).all()
    transitions = session.scalars(
        select(SegmentTransition).where(SegmentTransition.profile_id.in_(ids)).order_by(SegmentTransition.id)
    ).all()
    positions = session.scalars(
        select(JourneyPosition).where(JourneyPosition.profile_id.in_(ids)).order_by(JourneyPosition.journey_key)
    ).all()
    moves = session.scalars(
        select(JourneyTransition).where(JourneyTransition.profile_id.in_(ids)).order_by(JourneyTransition.id)
    ).all()
    reveal = Revealer.of(session)
    shown = {(i.type, i.value): reveal.value(i.type, i.value, i.value_enc) for i in identities}
    return {
        "format": FORMAT,
        "exported_at": iso(now),
        "profile": _profile(session, profile),
        "merged_profiles": [_profile(session, p) for p in absorbed],
        "identities": [
            {
                "type": i.type,
                "value": shown[(i.type, i.value)],
                "first_seen": iso(i.first_seen),
                "message_id": i.message_id,
                "attached": i.profile_id is not None,
            }
            for i in identities
        ],
        "events": [
            {
                "id": e.id,
                "profile_id": e.profile_id,
                "source_id": e.source_id,
                "message_id": e.message_id,
                "type": e.type,
                "event": e.event,
                "timestamp": iso(e.timestamp),
                "received_at": iso(e.received_at),
                "payload": e.payload,
            }
            for e in events
        ],
        "pending_events": list(pending),
        "consent": {
            "state": [
                {
                    "purpose": s.purpose,
                    "channel": s.channel,
                    "status": s.effective(now),
                    "recorded_status": s.status,
                    "record_id": s.record_id,
                    "occurred_at": iso(s.occurred_at),
                    "expires_at": iso(s.expires_at),
                }
                for _, s in sorted(consent.current(session, ids).items())
            ],
            "history": [{"record": body, "hash": digest, "evidence": evidence} for body, digest, evidence in history],
            "receipts": [
                {"record_id": r.record_id, "profile_id": r.profile_id, "created_at": iso(r.created_at), "jws": r.jws}
                for r in receipts
            ],
        },
        "notes": [
            {"id": n.id, "profile_id": n.profile_id, "author_id": n.author_id, "at": iso(n.created_at), "text": n.text}
            for n in notes
        ],
        "segments": {
            "memberships": [
                {"segment": m.segment_key, "profile_id": m.profile_id, "entered_at": iso(m.entered_at)}
                for m in memberships
            ],
            "transitions": [
                {
                    "segment": t.segment_key,
                    "profile_id": t.profile_id,
                    "kind": t.kind,
                    "version": t.version,
                    "at": iso(t.at),
                }
                for t in transitions
            ],
        },
        "journeys": {
            "positions": [
                {
                    "journey": p.journey_key,
                    "profile_id": p.profile_id,
                    "stage": p.stage,
                    "stage_entered_at": iso(p.stage_entered_at),
                    "entered_at": iso(p.entered_at),
                    "state": p.state,
                    "ended_at": iso(p.ended_at),
                    "reason": p.reason,
                }
                for p in positions
            ],
            "transitions": [
                {
                    "journey": t.journey_key,
                    "profile_id": t.profile_id,
                    "kind": t.kind,
                    "stage": t.stage,
                    "from_stage": t.from_stage,
                    "reason": t.reason,
                    "version": t.version,
                    "at": iso(t.at),
                }
                for t in moves
            ],
        },
        "merges": [
            {
                "id": m.id,
                "kind": m.kind,
                "survivor_id": m.survivor_id,
                "absorbed_id": m.absorbed_id,
                "identity_type": m.identity_type,
                "identity_value": shown.get((m.identity_type or "", m.identity_value or ""), m.identity_value),
                "source_id": m.source_id,
                "message_id": m.message_id,
                "at": iso(m.merged_at),
                "actor": m.actor,
                "undone_by": m.undone_by,
                "details": m.details,
            }
            for m in merges
        ],
    }


def _profile(session: Session, profile: Profile) -> dict[str, Any]:
    return {
        "id": profile.id,
        "merged_into": profile.merged_into,
        "traits": profile_traits(session, profile),
        "trait_sources": profile.trait_versions,
        "counts": profile.counts,
        "first_seen": iso(profile.first_seen),
        "last_seen": iso(profile.last_seen),
        "created_at": iso(profile.created_at),
        "updated_at": iso(profile.updated_at),
    }


def _theirs(ids: list[str]) -> Any:
    """Identifiers attached to these profiles, or left out of every profile and first attached to one."""
    return or_(Identity.profile_id.in_(ids), Identity.profile_id.is_(None) & Identity.home_id.in_(ids))


def person_keys(session: Session, profile: Profile) -> set[Key]:
    """The person's identifiers: attached to their profiles, or first attached to one of them. A personal
    one both as stored (its blind index) and as events carry it (decrypted)."""
    ids = _person(session, profile)
    rows = session.execute(select(Identity.type, Identity.value, Identity.value_enc).where(_theirs(ids)))
    reveal = Revealer.of(session)
    keys: set[Key] = set()
    for kind, value, sealed in rows:
        keys.add((kind, value))
        keys.add((kind, reveal.value(kind, value, sealed)))
    return keys


def carries(rules: Rules, event: dict[str, Any], keys: set[Key]) -> bool:
    """Whether an event names one of `keys` (as an identifier or an alias link)."""
    try:
        found = rules.identifiers(event)
    except Exception:  # an event the pipeline would quarantine: look for the values in its text instead
        return _mentions(event, keys)
    return any(k in keys for k in found) or any(k in keys for k in rules.lookups(found))


def _mentions(document: Any, keys: set[Key]) -> bool:
    text = orjson.dumps(document).decode().lower()
    return any(value.lower() in text for _, value in keys if len(value) >= 3)


def pending_events(event_log: SqlEventLog, rules: Rules, keys: set[Key]) -> list[dict[str, Any]]:
    """Events in the event log, not processed yet, that carry one of `keys` (each record decrypted)."""
    found: list[dict[str, Any]] = []
    with event_log.db.read() as session:
        for seq, payload in session.execute(select(LogRecord.seq, LogRecord.payload).order_by(LogRecord.seq)):
            found.extend(e for e in orjson.loads(event_log.open(seq, payload)) if carries(rules, e, keys))
    return found


# -- erasure ----------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Erased:
    erasure_id: str
    person_id: str
    profile_ids: list[str]
    identifiers: int = 0
    events: int = 0
    consent_states: int = 0
    evidence: int = 0
    receipts: int = 0
    merges: int = 0
    quarantined: int = 0
    pending_events: int = 0
    notes: int = 0
    data_keys: int = 0
    keys: set[Key] = field(default_factory=set)

    def counts(self) -> dict[str, int]:
        return {
            "profiles": len(self.profile_ids),
            "identifiers": self.identifiers,
            "events": self.events,
            "consent_states": self.consent_states,
            "evidence": self.evidence,
            "receipts": self.receipts,
            "merges": self.merges,
            "quarantined": self.quarantined,
            "pending_events": self.pending_events,
            "notes": self.notes,
            "data_keys": self.data_keys,
        }


def tombstone(session: Session, profile_id: str) -> Tombstone | None:
    if len(profile_id) > 40 or "\x00" in profile_id:
        return None  # no profile id looks like that
    return session.get(Tombstone, profile_id)


def erase(session: Session, profile: Profile, *, key: SigningKey, actor: str, now: datetime) -> Erased:
    """Delete the person `profile` is, in the caller's transaction; keep tombstones and identifier digests.
    The caller then scrubs the event log (`scrub_log`), which lives apart on SQLite."""
    ids = _person(session, profile)
    keys = person_keys(session, profile)
    done = Erased(erasure_id="era_" + uuid.uuid4().hex[:20], person_id=profile.id, profile_ids=ids, keys=keys)
    values = {value for _, value in keys}
    # Consent: what is about these profiles now (records moved to them by an unmerge included).
    about = consent.about(LedgerRecord.id, LedgerRecord.profile_id, ids)
    record_ids = list(session.scalars(select(LedgerRecord.id).where(about)))
    done.evidence = _count(
        session.execute(delete(Evidence).where(or_(Evidence.profile_id.in_(ids), Evidence.record_id.in_(record_ids))))
    )
    done.receipts = _count(
        session.execute(delete(Receipt).where(or_(Receipt.profile_id.in_(ids), Receipt.record_id.in_(record_ids))))
    )
    session.execute(delete(Subject).where(or_(Subject.profile_id.in_(ids), Subject.record_id.in_(record_ids))))
    done.consent_states = _count(session.execute(delete(ConsentState).where(ConsentState.profile_id.in_(ids))))
    # Identity history that names them, or holds one of their identifiers.
    merge_ids = set(
        session.scalars(select(Merge.id).where(or_(Merge.survivor_id.in_(ids), Merge.absorbed_id.in_(ids))))
    )
    if values:
        merge_ids.update(session.scalars(select(Merge.id).where(Merge.identity_value.in_(sorted(values)))))
    if profile.cluster_id is not None:
        # Re-derivations of their cluster name the cluster, and may list their identifiers in the details.
        for row in session.scalars(select(Merge).where(Merge.survivor_id == profile.cluster_id)):
            if _holds(row.details, values):
                merge_ids.add(row.id)
    if merge_ids:
        done.merges = _count(session.execute(delete(Merge).where(Merge.id.in_(sorted(merge_ids)))))
    if profile.cluster_id is not None:
        for separation in session.scalars(select(SeparationRow).where(SeparationRow.cluster_id == profile.cluster_id)):
            separation.left = [pair for pair in separation.left if tuple(pair) not in keys]
            separation.right = [pair for pair in separation.right if tuple(pair) not in keys]
    # Quarantined events that carry one of their identifiers (or name one of their profiles).
    rules = current_rules(session)
    sealed = datakeys.DataKeys.of(session)
    for waiting in session.scalars(select(QuarantinedEvent)):
        try:
            event = quarantine.event_of(sealed, waiting)
        except Undecryptable:  # altered: nobody can read it, nor tell whose it is
            continue
        if carries(rules, event, keys) or _holds(event, set(ids)):
            session.delete(waiting)
            done.quarantined += 1
    # Probabilistic matching: their blocking keys, and the pairs it found with them.
    session.execute(delete(MatchKey).where(MatchKey.profile_id.in_(ids)))
    session.execute(delete(MatchReview).where(or_(MatchReview.left_id.in_(ids), MatchReview.right_id.in_(ids))))
    session.execute(delete(SegmentMembership).where(SegmentMembership.profile_id.in_(ids)))
    session.execute(delete(SegmentTransition).where(SegmentTransition.profile_id.in_(ids)))
    session.execute(delete(JourneyPosition).where(JourneyPosition.profile_id.in_(ids)))
    session.execute(delete(JourneyTransition).where(JourneyTransition.profile_id.in_(ids)))
    # What agents wrote about them in the console, and who looked them up lately.
    done.notes = _count(session.execute(delete(Note).where(Note.profile_id.in_(ids))))
    session.execute(delete(RecentView).where(RecentView.profile_id.in_(ids)))
    session.execute(delete(ProfileWord).where(ProfileWord.profile_id.in_(ids)))  # their name's blind index
    # Crypto-shredding: without their data keys, whatever of theirs is left anywhere (a backup, a copy of a
    # row that escaped this transaction) is ciphertext nobody can read. Then the rows themselves.
    done.data_keys = datakeys.destroy(session, ids)
    done.events = _count(session.execute(delete(EVENTS).where(EVENTS.c.profile_id.in_(ids))))
    done.identifiers = _count(session.execute(delete(Identity).where(_theirs(ids))))
    session.execute(update(Profile).where(Profile.merged_into.in_(ids)).values(merged_into=None))
    session.execute(delete(Profile).where(Profile.id.in_(ids)))
    session.add_all(
        Tombstone(
            profile_id=pid,
            erasure_id=done.erasure_id,
            person_id=profile.id,
            erased_at=now,
            actor=actor[:120],
            suppressed_events=0,
        )
        for pid in ids
    )
    # Digests of identifiers as events carry them (a personal one decrypted, not its blind index).
    digests = {identifier_digest(key, kind, value) for kind, value in keys if not is_blind(value)}
    known = set(session.scalars(select(ErasedIdentifier.digest).where(ErasedIdentifier.digest.in_(sorted(digests)))))
    session.add_all(
        ErasedIdentifier(digest=d, erasure_id=done.erasure_id, created_at=now) for d in sorted(digests - known)
    )
    session.flush()
    return done


def _holds(document: Any, values: Iterable[str]) -> bool:
    if not document:
        return False
    text = orjson.dumps(document).decode()
    return any(value in text for value in values if value)


def _count(result: Any) -> int:
    return int(result.rowcount or 0)


def scrub_log(event_log: SqlEventLog, rules: Rules, keys: set[Key]) -> int:
    """Remove the events that carry `keys` from the records waiting in the event log; returns how many. A
    worker that read a record before this sees the person's identifiers suppressed and drops them anyway."""
    if not keys:
        return 0
    removed = 0
    with event_log.db.unit_of_work() as session:
        for seq, payload in session.execute(select(LogRecord.seq, LogRecord.payload).order_by(LogRecord.seq)).all():
            events = orjson.loads(event_log.open(seq, payload))
            kept = [e for e in events if not carries(rules, e, keys)]
            if len(kept) == len(events):
                continue
            removed += len(events) - len(kept)
            if kept:
                session.execute(
                    update(LogRecord)
                    .where(LogRecord.seq == seq)
                    .values(payload=event_log.seal(seq, orjson.dumps(kept)), event_count=len(kept))
                )
            else:
                session.execute(delete(LogRecord).where(LogRecord.seq == seq))
    return removed


# -- suppression (the workers) --------------------------------------------------------------------------


class ErasureNotFound(LookupError):
    pass


def erasures(session: Session, *, limit: int = 100) -> list[tuple[Tombstone, int]]:
    """Erasures, newest first: each person's tombstone and how many identifier digests still suppress."""
    stones = session.scalars(
        select(Tombstone)
        .where(Tombstone.profile_id == Tombstone.person_id)
        .order_by(Tombstone.erased_at.desc())
        .limit(limit)
    ).all()
    counted = dict(
        session.execute(
            select(ErasedIdentifier.erasure_id, func.count())
            .where(ErasedIdentifier.erasure_id.in_([s.erasure_id for s in stones]))
            .group_by(ErasedIdentifier.erasure_id)
        ).all()
    )
    return [(stone, int(counted.get(stone.erasure_id, 0))) for stone in stones]


def lift_suppression(session: Session, *, erasure_id: str) -> int:
    """Stop suppressing the identifiers of one erasure (the person came back and asked to be known again);
    later events with them make a new profile. The tombstones stay. Returns how many digests were removed."""
    if "\x00" in erasure_id or len(erasure_id) > 40:
        raise ErasureNotFound(f"no erasure {erasure_id[:60]!r}")
    if session.scalar(select(Tombstone.profile_id).where(Tombstone.erasure_id == erasure_id).limit(1)) is None:
        raise ErasureNotFound(f"no erasure {erasure_id[:60]!r}")
    return _count(session.execute(delete(ErasedIdentifier).where(ErasedIdentifier.erasure_id == erasure_id)))


def any_erased(session: Session) -> bool:
    return session.scalar(select(ErasedIdentifier.digest).limit(1)) is not None


def suppressed(session: Session, key: SigningKey, keys_by_item: Sequence[Sequence[Key]], now: datetime) -> set[int]:
    """The positions of the items that carry an erased identifier; counts them on their tombstones."""
    digests: dict[str, list[int]] = {}
    for position, keys in enumerate(keys_by_item):
        for kind, value in keys:
            digests.setdefault(identifier_digest(key, kind, value), []).append(position)
    if not digests:
        return set()
    hits = session.execute(
        select(ErasedIdentifier.digest, ErasedIdentifier.erasure_id).where(ErasedIdentifier.digest.in_(sorted(digests)))
    ).all()
    if not hits:
        return set()
    dropped: set[int] = set()
    per_erasure: dict[str, set[int]] = {}
    for digest, erasure_id in hits:
        positions = set(digests[digest])
        dropped |= positions
        per_erasure.setdefault(erasure_id, set()).update(positions)
    for erasure_id, positions in sorted(per_erasure.items()):
        session.execute(
            update(Tombstone)
            .where(Tombstone.erasure_id == erasure_id, Tombstone.profile_id == Tombstone.person_id)
            .values(suppressed_events=Tombstone.suppressed_events + len(positions), last_suppressed_at=now)
        )
    return dropped
