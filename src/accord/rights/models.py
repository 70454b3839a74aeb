"""What erasure keeps: a tombstone per erased profile id, and keyed digests of the erased identifiers that
stop later events from bringing the person back unnoticed."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from accord.db.base import Base, UTCDateTime


class Tombstone(Base):
    """An erased profile id: it answers 410 Gone from then on. No personal data: ids, a time, who, counts."""

    __tablename__ = "erasures"

    profile_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    erasure_id: Mapped[str] = mapped_column(String(40), index=True)
    person_id: Mapped[str] = mapped_column(String(40))  # the live profile the request named
    erased_at: Mapped[datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str] = mapped_column(String(120))
    # Events that arrived later carrying an erased identifier, dropped by the workers (see docs/security.md).
    suppressed_events: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), default=0)
    last_suppressed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class ErasedIdentifier(Base):
    """HMAC-SHA256 of an erased identifier (type and normalised value) under a key outside the database: the
    workers can recognise the identifier again, nobody can read it back from this table."""

    __tablename__ = "erased_identifiers"

    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    erasure_id: Mapped[str] = mapped_column(String(40), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
