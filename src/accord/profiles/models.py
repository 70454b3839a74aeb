from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from accord.db.base import Base, JSONDoc, UTCDateTime


class Profile(Base):
    """One customer: a projection of their events. `merged_into` points an absorbed profile at its survivor."""

    __tablename__ = "profiles"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    merged_into: Mapped[str | None] = mapped_column(String(40), nullable=True, index=True)
    # Traits that are not personal data, in clear; the personal ones are in `traits_enc`, one ciphertext
    # under the profile's data key (see accord.profiles.private).
    traits: Mapped[dict[str, Any]] = mapped_column(JSONDoc, default=dict)
    traits_enc: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Per trait, the [timestamp, messageId] of the write that won: last writer wins, in any order.
    trait_versions: Mapped[dict[str, Any]] = mapped_column(JSONDoc, default=dict)
    # {"events": {track event name: n}, "types": {call type: n}}
    counts: Mapped[dict[str, Any]] = mapped_column(JSONDoc, default=dict)
    # {identifier type: how many this profile holds}, for the limits; kept with the identities.
    identity_counts: Mapped[dict[str, int]] = mapped_column(JSONDoc, default=dict)
    # Set when the profile is one of several that limits or an unmerge keep apart although events link
    # them (a conflicted cluster): such profiles are locked, replayed and re-derived together.
    cluster_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index(
            "ix_profiles_cluster_id",
            "cluster_id",
            postgresql_where=text("cluster_id IS NOT NULL"),
            sqlite_where=text("cluster_id IS NOT NULL"),
        ),
    )


class ProfileWord(Base):
    """The name index: a blind index (keyed HMAC) of each word of a profile's name, found by equality."""

    __tablename__ = "profile_words"

    word: Mapped[str] = mapped_column(String(60), primary_key=True)
    profile_id: Mapped[str] = mapped_column(String(40), primary_key=True, index=True)


class ProfileEvent(Base):
    """The lasting per-profile event store: the timeline and the source for replays."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    profile_id: Mapped[str] = mapped_column(ForeignKey("profiles.id"))
    source_id: Mapped[str] = mapped_column(String(40))
    message_id: Mapped[str] = mapped_column(String(200))
    type: Mapped[str] = mapped_column(String(20))
    event: Mapped[str | None] = mapped_column(String(200), nullable=True)
    timestamp: Mapped[datetime] = mapped_column(UTCDateTime)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONDoc)

    __table_args__ = (
        UniqueConstraint("source_id", "message_id"),
        # type and event ride along at the end: a count of a profile's events of a name in a window (the
        # segments' backfill, pushdown) and the names and times a run's evaluation reads are then answered
        # from the index alone, without a lookup of each event's row. The timeline's order is the first three.
        Index("ix_events_timeline", "profile_id", "timestamp", "id", "type", "event"),
    )
