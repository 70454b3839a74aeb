from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from accord.db.base import Base, JSONDoc, UTCDateTime, utcnow


class Source(Base):
    """A place events come from (a website, an app, a server); its write key authenticates tracking calls."""

    __tablename__ = "sources"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    # SHA-256 of the write key: keys are 256-bit random, so a fast hash is enough and lookups stay O(1).
    write_key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ImportRun(Base):
    """One run of an import job: a file or table read through a mapping into the event log.

    `checkpoint` is how many rows of the input have been dealt with; a run killed part way resumes from it,
    and the counts stored with it always reconcile: read = imported + rejected."""

    __tablename__ = "import_runs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    source_id: Mapped[str] = mapped_column(String(40), index=True)
    kind: Mapped[str] = mapped_column(String(20))  # file, upload, postgresql, mysql, sqlite, replay
    status: Mapped[str] = mapped_column(String(20))  # queued, running, done, failed
    location: Mapped[str] = mapped_column(Text)  # path, upload name or table/query; never credentials
    format: Mapped[str | None] = mapped_column(String(20), nullable=True)
    fingerprint: Mapped[str] = mapped_column(String(64))  # input and mapping, to find a run to resume
    mapping: Mapped[dict[str, Any]] = mapped_column(JSONDoc)
    mapping_name: Mapped[str] = mapped_column(String(100))
    mapping_version: Mapped[int] = mapped_column(Integer)
    options: Mapped[dict[str, Any]] = mapped_column(JSONDoc, default=dict)  # connector settings, cursor
    parent_id: Mapped[str | None] = mapped_column(String(40), nullable=True)  # a replay's run
    read: Mapped[int] = mapped_column(BigInteger, default=0)
    imported: Mapped[int] = mapped_column(BigInteger, default=0)
    appended: Mapped[int] = mapped_column(BigInteger, default=0)
    rejected: Mapped[int] = mapped_column(BigInteger, default=0)
    checkpoint: Mapped[int] = mapped_column(BigInteger, default=0)
    cursor: Mapped[str | None] = mapped_column(Text, nullable=True)  # incremental imports: last cursor value
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class ImportReject(Base):
    """A row an import run could not use, with the reason and the row as read, until it is replayed."""

    __tablename__ = "import_rejects"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(40))
    origin: Mapped[str] = mapped_column(String(10))  # row: a row of the input; line: a line the reader refused
    position: Mapped[int] = mapped_column(BigInteger)
    row: Mapped[dict[str, Any] | None] = mapped_column(JSONDoc, nullable=True)
    text: Mapped[str | None] = mapped_column(Text, nullable=True)  # the line as read, when the reader refused it
    reason: Mapped[str] = mapped_column(Text)  # sealed too: it may quote the value that failed
    replayed_by: Mapped[str | None] = mapped_column(String(40), nullable=True)

    __table_args__ = (UniqueConstraint("run_id", "origin", "position"),)


class SourceMapping(Base):
    """A mapping kept with a source under a name, versioned: each change is a new row. Inbound webhooks
    (`POST /v1/webhooks/{name}`) map their rows with the newest version."""

    __tablename__ = "source_mappings"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    source_id: Mapped[str] = mapped_column(String(40))
    name: Mapped[str] = mapped_column(String(100))
    version: Mapped[int] = mapped_column(Integer)
    document: Mapped[dict[str, Any]] = mapped_column(JSONDoc)
    actor: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (UniqueConstraint("source_id", "name", "version"),)


class Schedule(Base):
    """A recurring import of a table or query, or a recurring computed trait. Database URLs are never
    stored: a table schedule names the environment variable that holds the URL."""

    __tablename__ = "schedules"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))  # table or computed
    spec: Mapped[dict[str, Any]] = mapped_column(JSONDoc)
    every_seconds: Mapped[int] = mapped_column(Integer)
    next_at: Mapped[datetime] = mapped_column(UTCDateTime)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    last_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_status: Mapped[str | None] = mapped_column(String(20), nullable=True)
    last_result: Mapped[str | None] = mapped_column(Text, nullable=True)  # a run id, counts or the error
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")  # counts its changes
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    actor: Mapped[str | None] = mapped_column(String(100), nullable=True)


class SqlTrait(Base):
    """A SQL computed trait: a read-only query over the analytical view whose result sets trait `key`
    (see accord.profiles.computed). `version` counts its changes; the last run is kept with it."""

    __tablename__ = "sql_traits"

    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    sql: Mapped[str] = mapped_column(Text)
    pii: Mapped[bool] = mapped_column(Boolean, default=False)  # reads personal data unmasked; flags its values
    description: Mapped[str] = mapped_column(Text, default="")
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str] = mapped_column(String(100))
    running_since: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)  # a run's claim
    last_run_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    last_run_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_status: Mapped[str | None] = mapped_column(String(20), nullable=True)  # done, failed
    last_result: Mapped[dict[str, Any] | None] = mapped_column(JSONDoc, nullable=True)  # counts, or the error
