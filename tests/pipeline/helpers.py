"""Feeding events to the pipeline the way the gateway does, and reading back what it made."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select

from accord.consent.capture import Capture
from accord.identity.models import Identity
from accord.identity.service import set_rules
from accord.ingest.spec import normalise_request
from accord.log.port import NewRecord
from accord.pipeline.worker import Worker
from accord.profiles.models import Profile, ProfileEvent
from accord.profiles.private import profile_traits
from accord.runtime import Runtime

RECEIVED = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def send(rt: Runtime, events: list[dict[str, Any]], *, source_id: str = "src_test") -> None:
    """Normalise a batch as the tracking API would and append it to the log."""
    normalised = normalise_request({"batch": events}, endpoint="batch", received_at=RECEIVED, client_ip=None)
    rt.log.append(NewRecord(source_id=source_id, received_at=RECEIVED, events=normalised))


def process(rt: Runtime, *, batch_size: int = 500) -> int:
    return Worker(
        db=rt.db, log=rt.log, batch_size=batch_size, consent=Capture(key=rt.signing, settings=rt.settings)
    ).drain()


def snapshot(rt: Runtime) -> list[tuple[Any, ...]]:
    """Every live profile by content (ids aside): identities, traits, counts, first/last seen, events."""
    with rt.db.read() as session:
        identities: dict[str, set[tuple[str, str]]] = {}
        for kind, value, profile_id in session.execute(select(Identity.type, Identity.value, Identity.profile_id)):
            identities.setdefault(profile_id, set()).add((kind, value))
        events: dict[str, set[str]] = {}
        for profile_id, message_id in session.execute(select(ProfileEvent.profile_id, ProfileEvent.message_id)):
            events.setdefault(profile_id, set()).add(message_id)
        rows = []
        for profile in session.scalars(select(Profile).where(Profile.merged_into.is_(None))):
            rows.append(
                (
                    tuple(sorted(identities.get(profile.id, set()))),
                    tuple(sorted((k, repr(v)) for k, v in profile_traits(session, profile).items())),
                    tuple(sorted((g, tuple(sorted(c.items()))) for g, c in profile.counts.items())),
                    profile.first_seen,
                    profile.last_seen,
                    tuple(sorted(events.get(profile.id, set()))),
                )
            )
    return sorted(rows)


def use_rules(rt: Runtime, document: dict[str, Any]) -> None:
    """Put identity rules in force, as `PUT /api/v1/identity/rules` does."""
    with rt.db.unit_of_work() as session:
        set_rules(session, document, actor="test", now=datetime.now(UTC))


def reset(rt: Runtime) -> None:
    """Empty every table, for tests that need a fresh database per Hypothesis example."""
    from accord.db.models import Base
    from accord.log.models import LogRecord

    with rt.log.db.unit_of_work() as session:
        session.execute(LogRecord.__table__.delete())
    with rt.db.unit_of_work() as session:
        for table in reversed(Base.metadata.sorted_tables):
            if table.name != LogRecord.__tablename__:
                session.execute(table.delete())


def unmerge_the_merge(rt: Runtime, ref: str, now: datetime) -> None:
    """Undo the one merge stored, from its survivor `ref` (a profile reference: "user_id:ann")."""
    from accord.identity import history
    from accord.identity.models import Merge
    from accord.profiles.service import resolve

    with rt.db.unit_of_work() as session:
        merge = session.scalars(select(Merge)).one()
        profile = resolve(session, ref)
        assert profile is not None
        history.unmerge(
            session, profile, merge_id=merge.id, actor="t", now=now, lock_rows=rt.db.dialect == "postgresql"
        )


def backlog(rt: Runtime, events: int, *, first: int = 0) -> None:
    """`events` tracks in log records of 10 (as /v1/batch requests of 10 write them)."""
    for start in range(first, first + events, 10):
        send(
            rt,
            [
                {"type": "track", "event": "Seen", "userId": f"u{i % 7}", "messageId": f"m{i}"}
                for i in range(start, start + 10)
            ],
        )


def stored_events(rt: Runtime) -> int:
    with rt.db.read() as session:
        return int(session.scalar(select(func.count()).select_from(ProfileEvent)) or 0)
