from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Integer, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from accord.db.base import Base, UTCDateTime


class LogRecord(Base):
    """One accepted tracking request: its normalised events, as a JSON array, awaiting processing.

    The log is a queue: a record is deleted once its events are in the per-profile event store.
    """

    __tablename__ = "event_log"

    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    source_id: Mapped[str] = mapped_column(String(40))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    event_count: Mapped[int] = mapped_column(Integer)
    payload: Mapped[bytes] = mapped_column(LargeBinary)

    # Never reuse a deleted record's seq on SQLite: a late acknowledgement must not delete a newcomer.
    __table_args__ = {"sqlite_autoincrement": True}
