"""The import API's request and response models."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ImportRunRead(BaseModel):
    """An import run: its status and counts, which always reconcile: read = imported + rejected."""

    id: str
    source_id: str
    kind: str = Field(description="file, upload, replay, postgresql, mysql or sqlite")
    status: str = Field(description="queued, running, interrupted, done or failed")
    location: str = Field(description="The file, upload name, or table/query read")
    format: str | None
    mapping_name: str
    mapping_version: int
    parent_id: str | None = Field(description="For a replay: the run whose rejected rows it imports again")
    read: int
    imported: int = Field(description="Rows that became events (appended now, or stored already)")
    appended: int = Field(description="Of the imported, the events this run wrote to the event log")
    rejected: int
    checkpoint: int = Field(description="Input rows dealt with; an interrupted run resumes after them")
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class ImportRunsRead(BaseModel):
    data: list[ImportRunRead]


class RejectRead(BaseModel):
    id: int
    origin: str = Field(description="row: a row of the input; line: a CSV line the reader refused")
    position: int = Field(description="The row's number (from 1), or the line's")
    row: dict[str, Any] | None = Field(description="The row as read (for origin row)")
    text: str | None = Field(description="The line as read (for origin line)")
    reason: str
    replayed_by: str | None = Field(description="The replay run that imported it again")


class RejectsRead(BaseModel):
    run_id: str
    data: list[RejectRead]
    next_after: int | None = Field(description="Pass as `after` for the next page; null on the last")


class ReplayRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mapping: dict[str, Any] | None = Field(default=None, description="A fixed mapping (default: the run's own)")


class PreviewRow(BaseModel):
    position: int
    input: dict[str, Any] = Field(description="The row as read")
    values: dict[str, Any] = Field(description="The mapped fields")
    event: dict[str, Any] | None = Field(description="The event it would become; null when it would be rejected")
    error: str | None = Field(description="Why it would be rejected")
    profiles: list[str] = Field(description="Profiles its identifiers belong to already; empty: a new profile")
    candidates: list[dict[str, Any]] = Field(
        description="Profiles probabilistic matching finds like its traits (profile_id, probability at least 0.5), "
        "best first; empty without a trained model"
    )


class LineError(BaseModel):
    line: int
    text: str
    reason: str


class PreviewRead(BaseModel):
    columns: list[str]
    rows: list[PreviewRow]
    line_errors: list[LineError] = Field(description="CSV lines the reader refused among those read")


class MappingRead(BaseModel):
    name: str
    version: int = Field(description="1 for the first; each PUT adds one")
    mapping: dict[str, Any]
    actor: str
    created_at: datetime


class WebhookReject(BaseModel):
    position: int = Field(description="The row's place in the call (from 1)")
    reason: str


class WebhookAccepted(BaseModel):
    accepted: int = Field(description="Rows that became events, durable in the event log")
    rejected: list[WebhookReject]
