from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from accord.db.base import Base, UTCDateTime, utcnow


class Identity(Base):
    """One identifier (type and normalised value) and the profile it belongs to."""

    __tablename__ = "identities"

    type: Mapped[str] = mapped_column(String(40), primary_key=True)
    value: Mapped[str] = mapped_column(String(400), primary_key=True)
    profile_id: Mapped[str] = mapped_column(ForeignKey("profiles.id"))
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime)
    message_id: Mapped[str] = mapped_column(String(200))

    __table_args__ = (Index("ix_identities_profile_id", "profile_id"),)


class Merge(Base):
    """A record that `absorbed_id` was merged into `survivor_id`, and what caused it."""

    __tablename__ = "merges"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    survivor_id: Mapped[str] = mapped_column(String(40), index=True)
    absorbed_id: Mapped[str] = mapped_column(String(40), index=True)
    identity_type: Mapped[str] = mapped_column(String(40))
    identity_value: Mapped[str] = mapped_column(String(400))
    source_id: Mapped[str] = mapped_column(String(40))
    message_id: Mapped[str] = mapped_column(String(200))
    merged_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
