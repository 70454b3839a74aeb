from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field


class IdentifierTypeRule(BaseModel):
    type: str = Field(
        description="user_id, email, phone, anonymous_id, device_id, advertising_id, alias, or a "
        "custom type read from context.externalIds"
    )
    normalise: str = Field(default="trim", description="trim, lower, email or phone (E.164)")
    limit: int = Field(description="How many values of this type one profile may hold")


class MatchThresholds(BaseModel):
    auto_merge_above: float
    review_above: float


class RulesDocument(BaseModel):
    identifiers: list[IdentifierTypeRule] = Field(description="Identifier types in force, highest priority first")
    blocked: list[str] = Field(description="Regular expressions; a value matching one whole is never an identifier")
    phone_region: str | None = Field(description="Region for phone numbers written without +country code")
    match: MatchThresholds


class RulesRead(BaseModel):
    version: int = Field(description="0: the built-in defaults, never changed")
    rules: RulesDocument
    created_at: datetime | None = None
    actor: str | None = None


class HistoryEntry(BaseModel):
    id: int
    kind: str = Field(description="merge, unmerge or rederive")
    survivor_id: str
    absorbed_id: str
    identity_type: str | None
    identity_value: str | None
    source_id: str | None
    message_id: str | None
    at: datetime
    actor: str | None
    undone_by: int | None
    details: dict[str, Any] | None


class HistoryRead(BaseModel):
    profile_id: str
    data: list[HistoryEntry]


class UnmergeRequest(BaseModel):
    merge_id: int = Field(ge=1, le=2**62, description="The merge to undo, from GET .../merges")


class UnmergedProfile(BaseModel):
    id: str
    identities: list[dict[str, str]]


class UnmergeRead(BaseModel):
    merge_id: int
    unmerge_id: int
    profiles: list[UnmergedProfile]
    moved_events: int
