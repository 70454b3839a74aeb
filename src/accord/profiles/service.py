"""Reading profiles: resolve a reference, traits, identities and the timeline."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson
from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from accord.identity.blind import Revealer, protect_one
from accord.identity.models import Identity
from accord.identity.service import current_rules
from accord.profiles.models import Profile, ProfileEvent
from accord.profiles.sealed import opened

MAX_MERGE_HOPS = 32


class BadReference(ValueError):
    pass


class BadCursor(ValueError):
    pass


def resolve(session: Session, ref: str) -> Profile | None:
    """The live profile that `ref` names: a profile id (absorbed ids follow their merge) or `type:value`."""
    kind, sep, _ = ref.partition(":")
    if sep:
        rules = current_rules(session)
        if kind not in rules.limits:
            raise BadReference(f"unknown identifier type {kind[:40]!r}; use one of {', '.join(rules.limits)}")
        key = rules.parse_ref(ref)
        if key is None:
            return None
        key = protect_one(session, rules, key)  # personal identifiers are found by their blind index
        profile_id = session.scalar(
            select(Identity.profile_id).where(
                Identity.type == key[0], Identity.value == key[1], Identity.profile_id.is_not(None)
            )
        )
        if profile_id is None:
            return None
    else:
        profile_id = ref
        if len(profile_id) > 40 or "\x00" in profile_id:
            return None  # no profile id looks like that
    profile = session.get(Profile, profile_id)
    for _ in range(MAX_MERGE_HOPS):
        if profile is None or profile.merged_into is None:
            return profile
        profile = session.get(Profile, profile.merged_into)
    return profile


@dataclass(frozen=True, slots=True)
class ShownIdentity:
    """An identifier as someone allowed to see it sees it: its value decrypted."""

    type: str
    value: str
    first_seen: datetime


def identities(session: Session, profile_id: str) -> list[ShownIdentity]:
    rows = session.scalars(
        select(Identity).where(Identity.profile_id == profile_id).order_by(Identity.type, Identity.first_seen)
    ).all()
    reveal = Revealer.of(session)
    return [ShownIdentity(row.type, reveal.value(row.type, row.value, row.value_enc), row.first_seen) for row in rows]


def merged_ids(session: Session, profile_id: str) -> list[str]:
    return list(session.scalars(select(Profile.id).where(Profile.merged_into == profile_id).order_by(Profile.id)))


@dataclass(frozen=True, slots=True)
class EventPage:
    events: Sequence[ProfileEvent]
    next_cursor: str | None


def encode_cursor(event: ProfileEvent) -> str:
    raw = orjson.dumps([event.timestamp.isoformat(), event.id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        moment, event_id = orjson.loads(raw)
        parsed = datetime.fromisoformat(moment)
        if parsed.tzinfo is None or not isinstance(event_id, int) or not 0 < event_id < 2**63:
            raise ValueError("not a cursor")
        return parsed.astimezone(UTC), event_id
    except (ValueError, TypeError, OverflowError, orjson.JSONDecodeError):
        raise BadCursor("cursor is not one this API gave out") from None


def timeline(
    session: Session,
    profile_id: str,
    *,
    limit: int = 50,
    cursor: str | None = None,
    types: Sequence[str] = (),
    event: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> EventPage:
    """A profile's events, newest first, `limit` at a time."""
    query = select(ProfileEvent).where(ProfileEvent.profile_id == profile_id)
    if types:
        query = query.where(ProfileEvent.type.in_(list(types)))
    if event is not None:
        query = query.where(ProfileEvent.event == event)
    if since is not None:
        query = query.where(ProfileEvent.timestamp >= since)
    if until is not None:
        query = query.where(ProfileEvent.timestamp < until)
    if cursor is not None:
        moment, event_id = decode_cursor(cursor)
        query = query.where(
            or_(
                ProfileEvent.timestamp < moment,
                and_(ProfileEvent.timestamp == moment, ProfileEvent.id < event_id),
            )
        )
    rows = session.scalars(query.order_by(ProfileEvent.timestamp.desc(), ProfileEvent.id.desc()).limit(limit + 1)).all()
    page = opened(session, rows[:limit])
    return EventPage(events=page, next_cursor=encode_cursor(page[-1]) if len(rows) > limit else None)
