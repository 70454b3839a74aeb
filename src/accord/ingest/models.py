from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from accord.db.base import Base, JSONDoc, UTCDateTime, utcnow


class QuarantinedEvent(Base):
    """An accepted event that failed processing, kept with its error until it is replayed."""

    __tablename__ = "quarantine"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    source_id: Mapped[str] = mapped_column(String(40))
    message_id: Mapped[str] = mapped_column(String(200))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONDoc)
    error: Mapped[str] = mapped_column(Text)  # sealed under the log key too: it may quote the value that failed
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    quarantined_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    replayed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (UniqueConstraint("source_id", "message_id"),)
