from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Index, Integer, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from accord.db.base import Base, UTCDateTime


class LogRecord(Base):
    """One accepted tracking request: its normalised events, as a JSON array, awaiting processing.

    The log is a queue with bounded retention; the lasting record is the per-profile event store.
    """

    __tablename__ = "event_log"

    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    source_id: Mapped[str] = mapped_column(String(40))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    event_count: Mapped[int] = mapped_column(Integer)
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (
        # The worker's scan: unprocessed records in order. Partial, so it stays small.
        Index(
            "ix_event_log_pending",
            "seq",
            sqlite_where=processed_at.is_(None),
            postgresql_where=processed_at.is_(None),
        ),
        Index("ix_event_log_processed_at", "processed_at"),
    )
