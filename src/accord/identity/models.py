from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from accord.db.base import Base, JSONDoc, UTCDateTime, utcnow


class Identity(Base):
    """One identifier (type and normalised value) and the profile it belongs to.

    `profile_id` is NULL when a limit left the identifier out of every profile (it is then remembered
    in its `cluster_id`, so a later replay sees it). `home_id` is the profile it was first attached to:
    re-derivation uses it to give a split profile back its own id. For a type that is personal data
    (email, phone), `value` is the blind index and `value_enc` the value, encrypted (accord.identity.blind)."""

    __tablename__ = "identities"

    type: Mapped[str] = mapped_column(String(40), primary_key=True)
    value: Mapped[str] = mapped_column(String(400), primary_key=True)
    value_enc: Mapped[str | None] = mapped_column(Text, nullable=True)
    profile_id: Mapped[str | None] = mapped_column(ForeignKey("profiles.id"), nullable=True)
    home_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    cluster_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime)
    message_id: Mapped[str] = mapped_column(String(200))

    __table_args__ = (
        Index("ix_identities_profile_id", "profile_id"),
        Index(
            "ix_identities_cluster_id",
            "cluster_id",
            postgresql_where=text("cluster_id IS NOT NULL"),
            sqlite_where=text("cluster_id IS NOT NULL"),
        ),
    )


class Merge(Base):
    """The identity history of profiles: a merge (`absorbed_id` into `survivor_id`, through which identifier
    and event), an unmerge, or a re-derivation of a cluster. `details` holds what an unmerge needs (each
    side's identifiers at the time) or what a re-derivation changed."""

    __tablename__ = "merges"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(20), default="merge", server_default="merge")
    survivor_id: Mapped[str] = mapped_column(String(40), index=True)
    absorbed_id: Mapped[str] = mapped_column(String(40), index=True)
    identity_type: Mapped[str | None] = mapped_column(String(40), nullable=True)
    identity_value: Mapped[str | None] = mapped_column(String(400), nullable=True)
    source_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    message_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    merged_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    actor: Mapped[str | None] = mapped_column(String(100), nullable=True)
    details: Mapped[dict[str, Any] | None] = mapped_column(JSONDoc, nullable=True)
    undone_by: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class IdentityRules(Base):
    """One version of the identity rules; the highest version is in force."""

    __tablename__ = "identity_rules"

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    document: Mapped[dict[str, Any]] = mapped_column(JSONDoc)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str] = mapped_column(String(100))


class SeparationRow(Base):
    """An unmerge: the identifiers of each side, which no profile may hold together from then on."""

    __tablename__ = "identity_separations"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    cluster_id: Mapped[str] = mapped_column(String(40), index=True)
    merge_id: Mapped[int] = mapped_column(BigInteger)
    left: Mapped[list[list[str]]] = mapped_column(JSONDoc)
    right: Mapped[list[list[str]]] = mapped_column(JSONDoc)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class MatchModel(Base):
    """One trained version of the probabilistic matching model; the highest version is in force.
    `document` holds Splink's model JSON (`splink`), the scorer's weights, the match settings it was
    trained under and how many profiles it learnt from."""

    __tablename__ = "identity_match_models"

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    document: Mapped[dict[str, Any]] = mapped_column(JSONDoc)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str] = mapped_column(String(100))


class MatchKey(Base):
    """The blocking index: a hash of one blocking rule's values, and a live profile that has them."""

    __tablename__ = "identity_match_keys"

    key: Mapped[str] = mapped_column(String(32), primary_key=True)
    profile_id: Mapped[str] = mapped_column(String(40), primary_key=True)

    __table_args__ = (Index("ix_identity_match_keys_profile_id", "profile_id"),)


class MatchReview(Base):
    """A pair of profiles the model found alike, and what was decided: `merged` (above the automatic
    threshold), `pending` (in the review queue), `accepted` or `rejected` (by a person), `blocked` (a
    limit or an unmerge kept them apart)."""

    __tablename__ = "identity_match_reviews"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    left_id: Mapped[str] = mapped_column(String(40))
    right_id: Mapped[str] = mapped_column(String(40))
    probability: Mapped[float] = mapped_column(Float)
    match_weight: Mapped[float] = mapped_column(Float)
    model_version: Mapped[int] = mapped_column(Integer)
    levels: Mapped[dict[str, Any]] = mapped_column(JSONDoc)
    status: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    actor: Mapped[str | None] = mapped_column(String(100), nullable=True)
    reason: Mapped[str | None] = mapped_column(String(500), nullable=True)
    message_id: Mapped[str | None] = mapped_column(String(200), nullable=True)

    __table_args__ = (
        UniqueConstraint("left_id", "right_id"),
        Index("ix_identity_match_reviews_status", "status", "id"),
    )
