"""The event-log port: gateways append accepted requests; workers claim, process and acknowledge them.

A worker commits a claim's effects to the store first and acknowledges the claim after; a crash in
between redelivers the records, and dedupe by messageId makes that harmless. This is the shape both
the sql log and a stream engine such as NATS JetStream have.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class NewRecord:
    source_id: str
    received_at: datetime
    events: list[dict[str, Any]]
    payload: bytes | None = None  # the events as a JSON array, when the caller has encoded them already


@dataclass(frozen=True, slots=True)
class Delivery:
    """One log record handed to a worker."""

    seq: int
    source_id: str
    events: list[dict[str, Any]]
    # Set when the record could not be read (altered, or under a key that is gone) after several tries:
    # its events are unknown; the worker sets the record aside in the quarantine with this reason.
    unreadable: str | None = None
    raw: bytes = b""  # the stored payload of an unreadable record, kept for whoever investigates


@dataclass(slots=True)
class Claim:
    """Records a worker holds; call `acknowledge` once their effects have committed."""

    deliveries: list[Delivery]
    acknowledged: bool = field(default=False)

    def acknowledge(self) -> None:
        self.acknowledged = True


class EventLog(Protocol):
    def append(self, record: NewRecord) -> None:
        """Store the record durably; returns only once it is safe to acknowledge the caller."""

    def claim(self, max_events: int) -> AbstractContextManager[Claim]:
        """Hold up to about `max_events` pending events; acknowledged ones leave the log on exit."""

    def pending(self) -> int:
        """Events appended and not yet acknowledged."""
