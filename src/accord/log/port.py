"""The event-log port: gateways append accepted requests, workers claim and acknowledge them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy.orm import Session


@dataclass(frozen=True, slots=True)
class NewRecord:
    source_id: str
    received_at: datetime
    events: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Delivery:
    """A claimed log record; its effects and its acknowledgement commit together."""

    seq: int
    source_id: str
    events: list[dict[str, Any]]


class EventLog(Protocol):
    def append(self, record: NewRecord) -> None:
        """Store the record durably; returns only once it is safe to acknowledge the caller."""

    def claim(self, session: Session, max_events: int) -> list[Delivery]:
        """Claim pending records for this session's transaction; others skip them."""

    def acknowledge(self, session: Session, deliveries: list[Delivery]) -> None:
        """Mark records processed, in the same transaction as their effects."""

    def pending(self, session: Session) -> int:
        """Events appended and not yet processed."""

    def purge(self, session: Session, *, retention: timedelta, now: datetime | None = None) -> int:
        """Drop processed records older than the retention; returns how many went."""
