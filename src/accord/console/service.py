"""What the console needs beyond the features' own services: finding customers, recently viewed, notes,
new timeline events for the live view, and trait corrections sent through the event log."""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, distinct, func, select
from sqlalchemy.orm import Session

from accord.console.models import Note, RecentView
from accord.identity.models import Identity
from accord.identity.service import current_rules
from accord.ingest.spec import SpecError, normalise_request
from accord.journeys import service as journeys
from accord.log.models import LogRecord
from accord.log.port import NewRecord
from accord.profiles import private
from accord.profiles.models import Profile, ProfileEvent
from accord.profiles.private import NAME_TRAITS, profile_traits
from accord.profiles.sealed import opened
from accord.profiles.service import BadReference, resolve
from accord.security.crypto import Undecryptable, aad, is_ciphertext
from accord.security.datakeys import DataKeys, keyring_of
from accord.segments import service as segments
from accord.segments.models import SegmentTransition
from accord.sources import service as sources

MAX_QUERY = 200
MAX_RESULTS = 20
RECENT_KEPT = 10
MAX_NOTE = 4000
CONSOLE_SOURCE = "accord-console"  # the source that trait corrections are recorded under
_PHONE = re.compile(r"^\+?[\d\s().\-/]{6,40}$")
TRAIT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,99}$")


@dataclass(frozen=True, slots=True)
class Found:
    profile_id: str
    name: str
    matched: str  # which way the query found the profile: "email", "name", ...
    last_seen: datetime


def display_name(traits: dict[str, Any]) -> str:
    """The person's name from their traits, or an empty string."""
    for keys in NAME_TRAITS:
        parts = [traits.get(key) for key in keys]
        text = " ".join(str(part).strip() for part in parts if isinstance(part, str | int) and str(part).strip())
        if text:
            return text[:200]
    return ""


def _found(session: Session, profile: Profile, matched: str) -> Found:
    return Found(profile.id, display_name(profile_traits(session, profile)), matched, profile.last_seen)


def _by_identifier(session: Session, text: str) -> list[Found]:
    rules = current_rules(session)
    kinds = ["user_id"]
    if "@" in text:
        kinds.insert(0, "email")
    if _PHONE.match(text) and sum(c.isdigit() for c in text) >= 6:
        kinds.insert(0, "phone")
    found = []
    for kind in kinds:
        if kind in rules.limits:
            profile = resolve(session, f"{kind}:{text}")
            if profile is not None:
                found.append(_found(session, profile, kind.replace("_", " ")))
    try:  # a profile id, or a reference as the REST API takes it (email:..., anonymous_id:...)
        profile = resolve(session, text)
    except BadReference:
        profile = None
    if profile is not None:
        found.append(_found(session, profile, "reference" if ":" in text else "profile id"))
    return found


def _by_name(session: Session, text: str, limit: int) -> list[Profile]:
    """Live profiles whose name has every word of `text` (as a whole word, case-insensitive): found through
    the blind index of name words, since names are stored encrypted (accord.profiles.private)."""
    words = sorted(private.blind_words(keyring_of(session), private.query_words(text)))[: private.MAX_WORDS]
    if not words:
        return []
    w = private.WORDS.c
    having = (
        select(w.profile_id)
        .where(w.word.in_(words))
        .group_by(w.profile_id)
        .having(func.count(distinct(w.word)) == len(words))
    )
    return list(
        session.scalars(
            select(Profile)
            .where(Profile.id.in_(having), Profile.merged_into.is_(None))
            .order_by(Profile.last_seen.desc())
            .limit(limit)
        )
    )


def find_customers(session: Session, text: str, *, limit: int = MAX_RESULTS) -> list[Found]:
    """Profiles that `text` names: exactly by email, phone, user id or profile id, or by words of their
    name (whole words, case-insensitive: "ann smith" and "Smith" find Ann Smith, "ann" does not find
    Anna). Live profiles only, most recently seen first after the exact matches."""
    text = text.strip()[:MAX_QUERY]
    if not text:
        return []
    exact = _by_identifier(session, text)
    results: dict[str, Found] = {}
    for hit in exact:
        results.setdefault(hit.profile_id, hit)
    for profile in _by_name(session, text, limit):
        results.setdefault(profile.id, _found(session, profile, "name"))
    return list(results.values())[:limit]


def remember_view(session: Session, *, user_id: str, profile_id: str, now: datetime) -> None:
    row = session.get(RecentView, (user_id, profile_id))
    if row is None:
        session.add(RecentView(user_id=user_id, profile_id=profile_id, viewed_at=now))
    else:
        row.viewed_at = now
    session.flush()
    keep = select(RecentView.profile_id).where(RecentView.user_id == user_id)
    keep = keep.order_by(RecentView.viewed_at.desc()).limit(RECENT_KEPT)
    session.execute(
        delete(RecentView).where(RecentView.user_id == user_id, RecentView.profile_id.not_in(keep.scalar_subquery()))
    )


def recently_viewed(session: Session, *, user_id: str) -> list[Found]:
    """The user's recently opened customers, newest first, each as the live profile it now is."""
    rows = session.scalars(
        select(RecentView).where(RecentView.user_id == user_id).order_by(RecentView.viewed_at.desc()).limit(RECENT_KEPT)
    ).all()
    found: dict[str, Found] = {}
    for row in rows:
        profile = resolve(session, row.profile_id)
        if profile is not None:
            found.setdefault(profile.id, _found(session, profile, "recent"))
    return list(found.values())


def add_note(session: Session, *, profile_id: str, author_id: str, author_email: str, text: str, now: datetime) -> Note:
    text = text.strip()
    if not text:
        raise ValueError("a note needs some text")
    if len(text) > MAX_NOTE:
        raise ValueError(f"a note has at most {MAX_NOTE} characters")
    note = Note(profile_id=profile_id, author_id=author_id, author_email=author_email, text="", created_at=now)
    session.add(note)
    session.flush()
    # Sealed under the person's data key, bound to the note's id (known once flushed).
    note.text = DataKeys.of(session).encrypt(profile_id, text.encode(), _note_aad(note.id))
    session.flush()
    return note


def _note_aad(note_id: int) -> bytes:
    return aad("profile_notes", "text", str(note_id))


@dataclass(frozen=True, slots=True)
class NoteRead:
    id: int
    profile_id: str
    author_id: str
    author_email: str
    text: str
    created_at: datetime


def notes(session: Session, profile_ids: Sequence[str], *, limit: int = 100) -> list[NoteRead]:
    """The notes about these profiles, newest first, their text decrypted."""
    rows = session.scalars(
        select(Note)
        .where(Note.profile_id.in_(profile_ids))
        .order_by(Note.created_at.desc(), Note.id.desc())
        .limit(limit)
    ).all()
    keys = DataKeys.of(session)
    return [NoteRead(n.id, n.profile_id, n.author_id, n.author_email, _note_text(keys, n), n.created_at) for n in rows]


def _note_text(keys: DataKeys, note: Note) -> str:
    if not is_ciphertext(note.text):
        return note.text
    try:
        return keys.decrypt(note.text, _note_aad(note.id)).decode()
    except Undecryptable:
        return "(unreadable: its key was destroyed or the note was altered)"


def newest_event_id(session: Session, profile_id: str) -> int:
    return int(session.scalar(select(func.max(ProfileEvent.id)).where(ProfileEvent.profile_id == profile_id)) or 0)


def events_since(session: Session, profile_id: str, *, after: int, limit: int = 100) -> Sequence[ProfileEvent]:
    """The profile's events stored with an id above `after`, oldest first."""
    rows = session.scalars(
        select(ProfileEvent)
        .where(ProfileEvent.profile_id == profile_id, ProfileEvent.id > after)
        .order_by(ProfileEvent.id)
        .limit(limit)
    ).all()
    return opened(session, rows)


def source_names(session: Session) -> dict[str, str]:
    return {source.id: source.name for source in sources.list_sources(session)}


def console_source_id(session: Session) -> str:
    """The source trait corrections are recorded under, made on first use. Its write key is thrown away:
    nothing outside Accord sends as the console."""
    for source in sources.list_sources(session):
        if source.name == CONSOLE_SOURCE:
            return source.id
    return sources.create_source(session, name=CONSOLE_SOURCE).id


def addressing(session: Session, profile_id: str) -> dict[str, str] | None:
    """The identifier an event must carry to land on this profile: its user id, else an anonymous id."""
    for kind, field in (("user_id", "userId"), ("anonymous_id", "anonymousId")):
        value = session.scalar(
            select(Identity.value)
            .where(Identity.profile_id == profile_id, Identity.type == kind)
            .order_by(Identity.first_seen)
            .limit(1)
        )
        if value is not None:
            return {field: value}
    return None


class CorrectionError(ValueError):
    pass


def trait_correction(
    session: Session, *, profile_id: str, name: str, value: str | None, user_id: str, now: datetime
) -> NewRecord:
    """An identify event that sets (or with None clears) one trait, for the caller to append to the event
    log: the correction then goes through the pipeline like any other change, and survives replays."""
    if not TRAIT_NAME.match(name):
        raise CorrectionError("a trait name is 1 to 100 letters, digits, '_', '.' or '-', not starting with a digit")
    address = addressing(session, profile_id)
    if address is None:
        raise CorrectionError("this profile has no user id or anonymous id that a correction could be sent to")
    event = {
        "type": "identify",
        **address,
        "traits": {name: value},
        "timestamp": now.isoformat(),
        "messageId": f"console-{uuid.uuid4()}",
        "context": {"library": {"name": "accord-console"}, "console": {"user_id": user_id}},
    }
    try:
        events = normalise_request({"batch": [event]}, endpoint="batch", received_at=now, client_ip=None)
    except SpecError as error:
        raise CorrectionError(error.message) from None
    return NewRecord(source_id=console_source_id(session), received_at=now, events=events)


# -- dashboards ------------------------------------------------------------------------------------------

RATE_MINUTES = 15
RATE_ROWS = 200_000  # the event-rate chart reads at most this many newest events (a bounded, indexed read)


@dataclass(frozen=True, slots=True)
class Bar:
    label: str
    value: int


def event_rate(session: Session, *, now: datetime) -> tuple[list[Bar], bool]:
    """Events stored per minute over the last RATE_MINUTES, by arrival; True when the bound cut it short."""
    start = (now - timedelta(minutes=RATE_MINUTES - 1)).replace(second=0, microsecond=0)
    newest = session.scalar(select(func.max(ProfileEvent.id))) or 0
    times = session.scalars(
        select(ProfileEvent.received_at).where(ProfileEvent.id > newest - RATE_ROWS, ProfileEvent.received_at >= start)
    ).all()
    counts: dict[datetime, int] = {}
    for moment in times:
        minute = moment.replace(second=0, microsecond=0)
        counts[minute] = counts.get(minute, 0) + 1
    bars = [
        Bar((start + timedelta(minutes=i)).strftime("%H:%M"), counts.get(start + timedelta(minutes=i), 0))
        for i in range(RATE_MINUTES)
    ]
    return bars, newest > RATE_ROWS and len(times) >= RATE_ROWS


def oldest_pending(log_session: Session) -> datetime | None:
    """When the oldest request still waiting in the event log arrived: how far behind the workers are."""
    return log_session.scalar(select(LogRecord.received_at).order_by(LogRecord.seq).limit(1))


def segment_history(session: Session, *, now: datetime, days: int = 14) -> dict[str, list[Bar]]:
    """Each segment's size at the end of each of the last `days` days, worked back from today's size
    through the day's entries and exits."""
    keys = [row.key for row in segments.listing(session)]
    sizes = segments.sizes(session, keys)
    first = (now - timedelta(days=days - 1)).date()
    day = func.date(SegmentTransition.at)
    rows = session.execute(
        select(SegmentTransition.segment_key, day, SegmentTransition.kind, func.count())
        .where(SegmentTransition.at >= datetime.combine(first, datetime.min.time(), now.tzinfo))
        .group_by(SegmentTransition.segment_key, day, SegmentTransition.kind)
    ).all()
    net: dict[tuple[str, str], int] = {}
    for key, when, kind, count in rows:
        stamp = when.isoformat()[:10] if hasattr(when, "isoformat") else str(when)[:10]
        net[(key, stamp)] = net.get((key, stamp), 0) + (count if kind == "entered" else -count)
    history: dict[str, list[Bar]] = {}
    for key in keys:
        bars: list[Bar] = []
        level = sizes.get(key, 0)
        for back in range(days):
            date = (now - timedelta(days=back)).date().isoformat()
            bars.append(Bar(date[5:], max(level, 0)))
            level -= net.get((key, date), 0)
        history[key] = list(reversed(bars))
    return history


@dataclass(frozen=True, slots=True)
class JourneyRow:
    key: str
    name: str
    stage: str
    stage_name: str
    stage_number: int  # 1 for the first stage; 0 if the journey no longer has it
    stages: int
    state: str
    reason: str | None
    stage_entered_at: datetime
    in_stage_seconds: float  # until now, or until it ended


def journey_positions(session: Session, profile_id: str, *, now: datetime) -> list[JourneyRow]:
    """Where the profile stands in each journey it entered, with how long it has been in its stage."""
    rows = []
    for position, journey in journeys.profile_positions(session, profile_id):
        stages = [s for s in journey.definition.get("stages", []) if isinstance(s, dict)]
        index = next((i for i, s in enumerate(stages) if s.get("key") == position.stage), -1)
        until = position.ended_at or now
        rows.append(
            JourneyRow(
                key=journey.key,
                name=journey.name,
                stage=position.stage,
                stage_name=(stages[index].get("name") or position.stage) if index >= 0 else position.stage,
                stage_number=index + 1,
                stages=len(stages),
                state=position.state,
                reason=position.reason,
                stage_entered_at=position.stage_entered_at,
                in_stage_seconds=(until - position.stage_entered_at).total_seconds(),
            )
        )
    return rows


@dataclass(frozen=True, slots=True)
class FunnelView:
    key: str
    name: str
    funnel: journeys.Funnel


def journey_funnels(session: Session, *, now: datetime, days: int = 30) -> list[FunnelView]:
    """Each journey's funnel for the profiles that entered it in the last `days` days."""
    views = []
    for row in journeys.listing(session):
        views.append(
            FunnelView(row.key, row.name, journeys.funnel(session, row.key, start=now - timedelta(days=days), end=now))
        )
    return views
