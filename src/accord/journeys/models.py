from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from accord.db.base import Base, JSONDoc, UTCDateTime


class Journey(Base):
    """A journey in force: its current version's definition (stages, goal, exit, time limits), and where
    its backfill stands."""

    __tablename__ = "journeys"

    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(String(2000), default="")
    version: Mapped[int] = mapped_column(Integer)
    definition: Mapped[dict[str, Any]] = mapped_column(JSONDoc)
    # "backfilling" until every profile has been evaluated against this version, then "ready".
    status: Mapped[str] = mapped_column(String(20))
    backfill_after: Mapped[str | None] = mapped_column(String(40), nullable=True)  # last profile id done
    backfill_done: Mapped[int] = mapped_column(Integer, default=0)
    backfill_total: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str] = mapped_column(String(100))


class JourneyVersion(Base):
    """Every version ever saved (kept after a delete)."""

    __tablename__ = "journey_versions"

    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(String(2000), default="")
    definition: Mapped[dict[str, Any] | None] = mapped_column(JSONDoc, nullable=True)  # None: deleted
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str] = mapped_column(String(100))


class JourneyPosition(Base):
    """Where a profile stands in a journey: its stage (forward-only), since when, and whether it is still
    in it (`active`), reached the goal (`completed`) or left (`exited`)."""

    __tablename__ = "journey_positions"

    journey_key: Mapped[str] = mapped_column(String(100), primary_key=True)
    profile_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    stage: Mapped[str] = mapped_column(String(100))  # the stage's key
    stage_entered_at: Mapped[datetime] = mapped_column(UTCDateTime)
    entered_at: Mapped[datetime] = mapped_column(UTCDateTime)  # when the profile entered the journey
    state: Mapped[str] = mapped_column(String(10))  # active | completed | exited
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    reason: Mapped[str | None] = mapped_column(String(20), nullable=True)  # goal | last_stage | exit | time_limit
    # {stage key: when it was entered} for the stages the profile stood in (a skipped stage has none)
    path: Mapped[dict[str, Any]] = mapped_column(JSONDoc)

    __table_args__ = (
        Index("ix_journey_positions_profile", "profile_id"),
        Index("ix_journey_positions_entered", "journey_key", "entered_at"),
    )


class JourneyTransition(Base):
    """A profile entered a journey, moved to a later stage, completed it or exited it: the profile's journey
    timeline and the change stream."""

    __tablename__ = "journey_transitions"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    journey_key: Mapped[str] = mapped_column(String(100))
    profile_id: Mapped[str] = mapped_column(String(40))
    kind: Mapped[str] = mapped_column(String(10))  # entered | advanced | completed | exited
    stage: Mapped[str] = mapped_column(String(100))  # the stage after the change
    from_stage: Mapped[str | None] = mapped_column(String(100), nullable=True)
    reason: Mapped[str | None] = mapped_column(String(20), nullable=True)
    version: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index("ix_journey_transitions_profile", "profile_id", "id"),
        Index("ix_journey_transitions_journey", "journey_key", "id"),
    )
