"""Consent tables: the catalogue (purposes, channels, notices), the chained ledger and its projections."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from accord.db.base import Base, JSONDoc, UTCDateTime


class Purpose(Base):
    """Why data is used (`marketing.email.newsletter`) and on which legal basis."""

    __tablename__ = "consent_purposes"

    key: Mapped[str] = mapped_column(String(120), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    legal_basis: Mapped[str] = mapped_column(String(40))
    # Consent given for this purpose lapses after this many days unless renewed; None: never.
    expires_after_days: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # The channels the preference centre offers for this purpose.
    channels: Mapped[list[str]] = mapped_column(JSONDoc, default=list)
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Channel(Base):
    """A custom channel besides the built-in ones (email, sms, phone, ...)."""

    __tablename__ = "consent_channels"

    key: Mapped[str] = mapped_column(String(60), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Notice(Base):
    """One immutable version of a notice text in one language, and the purposes it covers."""

    __tablename__ = "consent_notices"

    key: Mapped[str] = mapped_column(String(120), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    language: Mapped[str] = mapped_column(String(20), primary_key=True)
    title: Mapped[str] = mapped_column(String(300))
    text: Mapped[str] = mapped_column(Text)
    purposes: Mapped[list[str]] = mapped_column(JSONDoc)
    url: Mapped[str | None] = mapped_column(String(1000), nullable=True)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class LedgerRecord(Base):
    """One link of the consent chain. `body` is the record's canonical JSON (RFC 8785), exactly the bytes
    hashed; it names `seq` and the previous record's hash. The other columns repeat a few fields for
    queries, and verification checks that they agree with the body. No PII: the subject is a profile
    id, and the evidence is a salted digest of a row kept in `consent_evidence`."""

    __tablename__ = "consent_ledger"

    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False
    )
    id: Mapped[str] = mapped_column(String(40), unique=True)
    profile_id: Mapped[str] = mapped_column(String(40))
    purpose: Mapped[str] = mapped_column(String(120))
    channel: Mapped[str] = mapped_column(String(60))
    status: Mapped[str] = mapped_column(String(20))
    body: Mapped[bytes] = mapped_column(LargeBinary)
    hash: Mapped[str] = mapped_column(String(64))
    # HMAC-SHA256 of the hash under a key kept outside the database: a well-formed record appended
    # by someone who can write the table but is not Accord does not verify.
    mac: Mapped[str] = mapped_column(String(64))

    __table_args__ = (Index("ix_consent_ledger_profile", "profile_id", "seq"),)


class Evidence(Base):
    """What proves a record (IP, user agent, agent, call or form reference, confirmation). Personal data,
    so outside the chain: erasure deletes the row, the chain keeps its digest and still verifies."""

    __tablename__ = "consent_evidence"

    record_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    profile_id: Mapped[str] = mapped_column(String(40), index=True)
    salt: Mapped[str] = mapped_column(String(32))
    # Canonical JSON; the chain holds sha256(salt + body).
    body: Mapped[bytes] = mapped_column(LargeBinary)


class ChainHead(Base):
    """The last link: one row, locked by every append so the chain stays a line."""

    __tablename__ = "consent_chain_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))
    mac: Mapped[str] = mapped_column(String(64))
    checkpoint_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    checkpoint_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Checkpoint(Base):
    """A signed statement that the chain had `seq` records ending in `hash`."""

    __tablename__ = "consent_checkpoints"

    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False
    )
    hash: Mapped[str] = mapped_column(String(64))
    signed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    jws: Mapped[str] = mapped_column(Text)


class Receipt(Base):
    """The signed consent receipt (compact JWS) handed out for one ledger record."""

    __tablename__ = "consent_receipts"

    record_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    profile_id: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    jws: Mapped[str] = mapped_column(Text)

    __table_args__ = (Index("ix_consent_receipts_profile", "profile_id", "created_at"),)


class ConsentState(Base):
    """Projection: the latest record per (profile, purpose, channel), by the time it was given, then seq.
    Rebuildable from the ledger; a merged person's state is the fold of all their profiles' rows."""

    __tablename__ = "consent_state"

    profile_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    purpose: Mapped[str] = mapped_column(String(120), primary_key=True)
    channel: Mapped[str] = mapped_column(String(60), primary_key=True)
    status: Mapped[str] = mapped_column(String(20))
    seq: Mapped[int] = mapped_column(BigInteger)
    record_id: Mapped[str] = mapped_column(String(40))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True, index=True)


class Subject(Base):
    """Whom a record is about now, when that changed after it was recorded: an unmerge or a re-derivation
    moved the event that made it to another profile. No row: the record's own `profile_id`. The chain is
    never rewritten; this says which person the record counts for."""

    __tablename__ = "consent_subjects"

    record_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    profile_id: Mapped[str] = mapped_column(String(40), index=True)
    moved_at: Mapped[datetime] = mapped_column(UTCDateTime)
