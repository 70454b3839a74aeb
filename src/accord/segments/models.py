from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from accord.db.base import Base, JSONDoc, UTCDateTime


class Segment(Base):
    """A segment in force: its current version's condition, and where its backfill stands."""

    __tablename__ = "segments"

    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(String(2000), default="")
    version: Mapped[int] = mapped_column(Integer)
    condition: Mapped[dict[str, Any]] = mapped_column(JSONDoc)
    # "backfilling" until every profile has been evaluated against this version, then "ready".
    status: Mapped[str] = mapped_column(String(20))
    backfill_after: Mapped[str | None] = mapped_column(String(40), nullable=True)  # last profile id done
    backfill_done: Mapped[int] = mapped_column(Integer, default=0)
    backfill_total: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str] = mapped_column(String(100))


class SegmentVersion(Base):
    """Every version ever saved (kept after a delete, so history reads and keys are not reused silently)."""

    __tablename__ = "segment_versions"

    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(String(2000), default="")
    condition: Mapped[dict[str, Any] | None] = mapped_column(JSONDoc, nullable=True)  # None: deleted
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str] = mapped_column(String(100))


class SegmentMembership(Base):
    __tablename__ = "segment_memberships"

    segment_key: Mapped[str] = mapped_column(String(100), primary_key=True)
    profile_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    entered_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_segment_memberships_profile", "profile_id"),)


class SegmentTransition(Base):
    """A profile entered or exited a segment: the profile's segment timeline and the change stream."""

    __tablename__ = "segment_transitions"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    segment_key: Mapped[str] = mapped_column(String(100))
    profile_id: Mapped[str] = mapped_column(String(40))
    kind: Mapped[str] = mapped_column(String(10))  # entered | exited
    version: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index("ix_segment_transitions_profile", "profile_id", "id"),
        Index("ix_segment_transitions_segment", "segment_key", "at"),
    )


class ComputedTrait(Base):
    """A computed trait's definition (see accord.segments.computed); `version` counts its changes."""

    __tablename__ = "computed_traits"

    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    version: Mapped[int] = mapped_column(Integer)
    definition: Mapped[dict[str, Any]] = mapped_column(JSONDoc)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str] = mapped_column(String(100))
