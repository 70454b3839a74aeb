"""The consent catalogue: purposes (with a legal basis), channels and versioned notices."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from accord.consent.models import Channel, Notice, Purpose

# The W3C Data Privacy Vocabulary's legal bases (GDPR Art. 6).
LEGAL_BASES = {
    "consent": "dpv:Consent",
    "contract": "dpv:Contract",
    "legal_obligation": "dpv:LegalObligation",
    "vital_interest": "dpv:VitalInterest",
    "public_task": "dpv:PublicTask",
    "legitimate_interest": "dpv:LegitimateInterest",
}
BUILTIN_CHANNELS = {
    "email": "Email",
    "sms": "SMS",
    "phone": "Phone",
    "post": "Post",
    "push": "Push notifications",
    "web": "Web",
    "in_app": "In app",
    "branch": "Branch",
    "call_centre": "Call centre",
    # A record on `all` speaks for every channel (a Global Privacy Control signal, "never contact me").
    "all": "All channels",
}
# Purposes Accord records by itself, present in every catalogue.
BUILTIN_PURPOSES = {
    "sale_sharing": ("Sale and sharing of personal data", "consent", "Recorded as refused on a Sec-GPC: 1 signal."),
    "iab_tcf": ("IAB TCF v2 consent string", "consent", "A TC string from a consent management platform."),
}
KEY = re.compile(r"^[a-z0-9_]{1,40}(\.[a-z0-9_]{1,40}){0,5}$")
CHANNEL_KEY = re.compile(r"^[a-z0-9_]{1,60}$")
LANGUAGE = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")


class CatalogueError(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class PurposeView:
    key: str
    name: str
    description: str
    legal_basis: str
    expires_after_days: int | None
    version: int
    builtin: bool
    channels: tuple[str, ...] = ()
    created_at: datetime | None = None
    updated_at: datetime | None = None


def ancestors(purpose: str) -> list[str]:
    """`a.b.c` -> [`a`, `a.b`, `a.b.c`]: a statement about a parent purpose covers its children."""
    parts = purpose.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _view(row: Purpose) -> PurposeView:
    return PurposeView(
        key=row.key,
        name=row.name,
        description=row.description,
        legal_basis=row.legal_basis,
        expires_after_days=row.expires_after_days,
        version=row.version,
        builtin=False,
        channels=tuple(row.channels or ()),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _builtin(key: str) -> PurposeView:
    name, basis, description = BUILTIN_PURPOSES[key]
    return PurposeView(key, name, description, basis, None, 1, True, ("all",) if key == "sale_sharing" else ("web",))


def get_purpose(session: Session, key: str) -> PurposeView | None:
    if key in BUILTIN_PURPOSES:
        return _builtin(key)
    row = session.get(Purpose, key)
    return _view(row) if row else None


def list_purposes(session: Session) -> list[PurposeView]:
    rows = [_view(row) for row in session.scalars(select(Purpose).order_by(Purpose.key))]
    return sorted([*rows, *(_builtin(key) for key in BUILTIN_PURPOSES)], key=lambda view: view.key)


def put_purpose(
    session: Session,
    *,
    key: str,
    name: str,
    description: str,
    legal_basis: str,
    expires_after_days: int | None,
    channels: Sequence[str] = (),
    now: datetime,
) -> tuple[PurposeView, bool]:
    """Create or change a purpose; a change bumps its version. Returns the purpose and whether it is new."""
    if not KEY.match(key):
        raise CatalogueError(
            "invalid_purpose", "a purpose key is lower-case dotted words, e.g. marketing.email.newsletter"
        )
    if key in BUILTIN_PURPOSES:
        raise CatalogueError("builtin_purpose", f"{key} is built in and cannot be changed")
    if legal_basis not in LEGAL_BASES:
        raise CatalogueError("invalid_legal_basis", f"legal_basis must be one of {', '.join(LEGAL_BASES)}")
    unknown = [channel for channel in channels if not channel_exists(session, channel)]
    if unknown:
        raise CatalogueError("unknown_channel", f"no such channels: {unknown[:5]}; add custom ones first")
    wanted = sorted(set(channels))
    row = session.get(Purpose, key, with_for_update=True)
    created = row is None
    if row is None:
        row = Purpose(key=key, version=1, created_at=now)
        session.add(row)
    else:
        unchanged = (row.name, row.description, row.legal_basis, row.expires_after_days, row.channels) == (
            name,
            description,
            legal_basis,
            expires_after_days,
            wanted,
        )
        if unchanged:
            return _view(row), False
        row.version += 1
    row.name, row.description, row.legal_basis = name, description, legal_basis
    row.expires_after_days, row.updated_at, row.channels = expires_after_days, now, wanted
    session.flush()
    return _view(row), created


def channel_exists(session: Session, key: str) -> bool:
    return key in BUILTIN_CHANNELS or session.get(Channel, key) is not None


def list_channels(session: Session) -> list[tuple[str, str, bool]]:
    custom = [(row.key, row.name, False) for row in session.scalars(select(Channel).order_by(Channel.key))]
    return [*((key, name, True) for key, name in BUILTIN_CHANNELS.items()), *custom]


def add_channel(session: Session, *, key: str, name: str, now: datetime) -> bool:
    """Add a custom channel; False when it exists already (built in or added before)."""
    if not CHANNEL_KEY.match(key):
        raise CatalogueError("invalid_channel", "a channel key is lower-case letters, digits and _")
    if channel_exists(session, key):
        return False
    session.add(Channel(key=key, name=name, created_at=now))
    session.flush()
    return True


def notice_hash(title: str, text: str) -> str:
    return hashlib.sha256(f"{title}\n\n{text}".encode()).hexdigest()


def add_notice_version(
    session: Session,
    *,
    key: str,
    language: str,
    title: str,
    text: str,
    purposes: Sequence[str],
    url: str | None,
    now: datetime,
) -> Notice:
    """A new immutable version of notice `key` in `language` (versions count per key and language)."""
    if not KEY.match(key):
        raise CatalogueError("invalid_notice", "a notice key is lower-case dotted words, e.g. privacy.web")
    if not LANGUAGE.match(language):
        raise CatalogueError("invalid_language", "language is a BCP 47 tag such as en or pt-BR")
    unknown = [purpose for purpose in purposes if get_purpose(session, purpose) is None]
    if unknown:
        raise CatalogueError("unknown_purpose", f"the notice covers purposes not in the catalogue: {unknown[:5]}")
    if not purposes:
        raise CatalogueError("invalid_notice", "a notice covers at least one purpose")
    if url is not None and not url.startswith(("https://", "http://")):
        raise CatalogueError("invalid_notice", "a notice url is an http(s) address")
    # Two writers racing for the same version collide on the primary key; the loser's caller retries.
    latest = session.scalar(select(func.max(Notice.version)).where(Notice.key == key, Notice.language == language))
    row = Notice(
        key=key,
        version=(latest or 0) + 1,
        language=language,
        title=title,
        text=text,
        purposes=sorted(set(purposes)),
        url=url,
        sha256=notice_hash(title, text),
        created_at=now,
    )
    session.add(row)
    session.flush()
    return row


def get_notice(session: Session, key: str, version: int, language: str) -> Notice | None:
    return session.get(Notice, (key, version, language))


def list_notices(session: Session) -> Sequence[Notice]:
    return session.scalars(select(Notice).order_by(Notice.key, Notice.language, Notice.version)).all()


def covers(notice: Notice, purpose: str) -> bool:
    return any(ancestor in notice.purposes for ancestor in ancestors(purpose))
