from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field


class IdentityRead(BaseModel):
    type: str
    value: str
    first_seen: datetime


class ProfileRead(BaseModel):
    id: str
    traits: dict[str, Any]
    identities: list[IdentityRead]
    counts: dict[str, dict[str, int]] = Field(description='{"events": {track event name: n}, "types": {call type: n}}')
    first_seen: datetime
    last_seen: datetime
    created_at: datetime
    updated_at: datetime
    merged_ids: list[str] = Field(description="Ids of profiles merged into this one; they still resolve here.")


class TraitSource(BaseModel):
    """Where a trait's current value came from: the write that won last-writer-wins."""

    timestamp: str | None = Field(description="The winning event's time (ISO-8601)")
    message_id: str | None = Field(description="The winning event's messageId")
    source_id: str | None = Field(description="The source that sent it; null for traits set before Accord kept it")
    run_id: str | None = Field(
        description="The run that set it: an import run (`imp_...`) or a SQL computed trait's run (`ctr_...`); "
        "else null"
    )


class TraitsRead(BaseModel):
    profile_id: str
    traits: dict[str, Any]
    sources: dict[str, TraitSource] = Field(description="Per trait, which source (and import run) set its value")


class IdentitiesRead(BaseModel):
    profile_id: str
    identities: list[IdentityRead]


class EventRead(BaseModel):
    id: int
    message_id: str
    source_id: str
    type: str
    event: str | None
    timestamp: datetime
    received_at: datetime
    properties: dict[str, Any] | None = None
    traits: dict[str, Any] | None = None
    context: dict[str, Any] | None = None


class EventPageRead(BaseModel):
    profile_id: str
    data: list[EventRead]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next (older) page; null at the end.")
