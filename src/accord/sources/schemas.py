"""The import API's request and response models."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

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
    error: str | None = Field(
        description="Why the run failed (stored sealed under the run's key, as it may quote the input); "
        "a placeholder once purged with the run's rejects"
    )
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


# -- SQL computed traits and schedules ---------------------------------------------------------------------
SQL_KEY = r"^[A-Za-z_][A-Za-z0-9_]{0,99}$"


class SqlTraitCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str = Field(pattern=SQL_KEY, description="The trait it sets: letters, digits and _, not starting with a digit")
    sql: str = Field(min_length=1, max_length=20_000, description="One SELECT over the analytical view")
    pii: bool = Field(
        default=False, description="Reads personal data unmasked; its values are flagged as PII and stored encrypted"
    )
    description: str = Field(default="", max_length=2000)


class SqlTraitUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sql: str = Field(min_length=1, max_length=20_000)
    pii: bool | None = Field(default=None, description="Unchanged when left out")
    description: str | None = Field(default=None, max_length=2000)
    version: int | None = Field(default=None, ge=1, description="The version you read: 409 if it changed since")


class SqlTraitRun(BaseModel):
    run_id: str = Field(description="The run's id (`ctr_...`): what each trait it set remembers as `run_id`")
    at: datetime
    status: str = Field(description="done or failed")
    result: dict[str, Any] = Field(
        description='{"version", "rows", "appended", "unchanged", "skipped", "seconds"}, or {"version", "error"}'
    )


class SqlTraitRead(BaseModel):
    key: str
    sql: str
    pii: bool
    description: str
    version: int = Field(description="1 when defined; each change adds one")
    created_at: datetime
    updated_at: datetime
    actor: str
    running: bool = Field(description="A run is under way")
    last_run: SqlTraitRun | None
    schedules: list[str] = Field(description="The schedules that run it")


class SqlTraitList(BaseModel):
    data: list[SqlTraitRead]


class SqlPreviewRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sql: str = Field(min_length=1, max_length=20_000)
    pii: bool = Field(default=False, description="See personal data unmasked (roles with PII access only)")
    limit: int = Field(default=20, ge=1, le=100)


class SqlPreviewRow(BaseModel):
    profile_id: str | None
    value: Any = None


class SqlPreviewRead(BaseModel):
    masked: bool = Field(description="Personal data was masked in the view the query saw")
    rows: list[SqlPreviewRow]


class SqlRunAccepted(BaseModel):
    key: str
    run_id: str = Field(description="Follow it with GET /api/v1/sql-traits/{key} (last_run)")
    version: int


ScheduleKind = Literal["computed", "table"]
MINUTES = Field(ge=1, le=527_040, description="Minutes between runs (at most 366 days)")


class ScheduleCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,100}$")
    kind: ScheduleKind
    every_minutes: int = MINUTES
    trait: str | None = Field(default=None, max_length=100, description="computed: the SQL computed trait to run")
    url_env: str | None = Field(
        default=None, max_length=100, description="table: the environment variable holding the database URL"
    )
    table: str | None = Field(default=None, max_length=200, description="table: a table (or schema.table)")
    query: str | None = Field(default=None, max_length=100_000, description="table: or one SELECT")
    cursor: str | None = Field(default=None, max_length=200, description="table: a column that grows")
    mapping: dict[str, Any] | None = Field(default=None, description="table: the mapping, as JSON")
    source: str | None = Field(default=None, max_length=200, description="table: the source's id or name")


class ScheduleUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    every_minutes: int | None = Field(default=None, ge=1, le=527_040)
    enabled: bool | None = None
    trait: str | None = Field(default=None, max_length=100, description="computed: another SQL computed trait")
    version: int | None = Field(default=None, ge=1, description="The version you read: 409 if it changed since")


class ScheduleRead(BaseModel):
    name: str
    kind: str
    every_minutes: int
    enabled: bool
    next_at: datetime
    version: int
    spec: dict[str, Any] = Field(
        description='computed: {"trait"}; table: {"url_env", "table", "query", "cursor", "mapping", "source_id"}'
    )
    created_at: datetime
    updated_at: datetime | None
    actor: str | None
    last_started_at: datetime | None
    last_status: str | None = Field(description="done or failed")
    last_result: str | None = Field(
        description="The run's id and counts (a failed run's error is read with the run), or the error"
    )


class ScheduleList(BaseModel):
    data: list[ScheduleRead]
