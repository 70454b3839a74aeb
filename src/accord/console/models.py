from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from accord.db.base import Base, UTCDateTime


class RecentView(Base):
    """The customers a console user opened lately, for the home page (a few per user)."""

    __tablename__ = "console_recent_views"

    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    profile_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    viewed_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Note(Base):
    """A note an agent wrote about a customer. Personal data: it belongs to the person (`profile_id`, which
    follows merges through the profile's merged ids) and goes with them on erasure."""

    __tablename__ = "profile_notes"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    profile_id: Mapped[str] = mapped_column(String(40))
    author_id: Mapped[str] = mapped_column(String(40))
    author_email: Mapped[str] = mapped_column(String(254))
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_profile_notes_profile", "profile_id", "created_at"),)
