"""Mappings kept with a source (versioned), and inbound webhooks that map their JSON rows with them.

A webhook call's body is a JSON object or an array of objects: each object is a row whose top-level keys
are its columns (nested values as JSON text). The rows go through the same DuckDB transform and event
builder as a file import, and their events through the event log like tracked events. The caller hears
at once which rows were rejected and why; a retried call adds nothing (deterministic messageIds).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from accord.identity.rules import Rules
from accord.ingest.spec import iso
from accord.sources import imports
from accord.sources.connectors import FileInput
from accord.sources.mapping import Mapping
from accord.sources.models import SourceMapping
from accord.sources.transform import Rejected, RowMapper

MAX_ROWS = 2500


def put_mapping(
    session: Session, *, source_id: str, name: str, mapping: Mapping, actor: str, now: datetime
) -> SourceMapping:
    """Keep `mapping` as the newest version of the source's mapping `name`."""
    current = session.scalar(
        select(func.max(SourceMapping.version)).where(SourceMapping.source_id == source_id, SourceMapping.name == name)
    )
    row = SourceMapping(
        source_id=source_id,
        name=name,
        version=int(current or 0) + 1,
        document=mapping.document(),
        actor=actor[:100],
        created_at=now,
    )
    session.add(row)
    session.flush()
    return row


def latest_mapping(session: Session, *, source_id: str, name: str) -> SourceMapping | None:
    return session.scalar(
        select(SourceMapping)
        .where(SourceMapping.source_id == source_id, SourceMapping.name == name)
        .order_by(SourceMapping.version.desc())
        .limit(1)
    )


def mapping_history(session: Session, *, source_id: str, name: str) -> Sequence[SourceMapping]:
    return session.scalars(
        select(SourceMapping)
        .where(SourceMapping.source_id == source_id, SourceMapping.name == name)
        .order_by(SourceMapping.version.desc())
    ).all()


@dataclass(slots=True)
class Mapped:
    events: list[dict[str, Any]] = field(default_factory=list)
    encoded: list[bytes] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (position from 1, reason)


def map_rows(
    rows: list[dict[str, Any]], *, mapping: Mapping, rules: Rules, source_id: str, folder: Path, now: datetime
) -> Mapped:
    """Map webhook rows to events (DuckDB reads them as JSON lines from a scratch file, removed after)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"webhook-{uuid.uuid4().hex}.jsonl"
    mapped = Mapped()
    try:
        path.write_bytes(b"\n".join(orjson.dumps(row) for row in rows) + b"\n")
        found = FileInput.at(path, declared="jsonl", csv=mapping.csv, kind="webhook")
        connection = imports.sandboxed_duckdb(found)
        try:
            query = imports.prepare(connection, found, mapping)
            mapper = RowMapper(
                mapping=mapping,
                query=query,
                rules=rules,
                source_id=source_id,
                run_id="",
                default_time=iso(now),
                received_at=iso(now),
            )
            for position, row in enumerate(connection.execute(query.sql).fetchall(), start=1):
                try:
                    event, data = mapper.event(row)
                except Rejected as reason:
                    mapped.rejected.append((position, str(reason)))
                    continue
                mapped.events.append(event)
                mapped.encoded.append(data)
        finally:
            connection.close()
    finally:
        path.unlink(missing_ok=True)
    return mapped
