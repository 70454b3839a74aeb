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


class MatchFieldRule(BaseModel):
    name: str = Field(description="The field's name, used in blocking rules")
    traits: list[str] = Field(description="Trait paths read for it, the first one set wins (e.g. address.city)")
    compare: str = Field(description="name, exact, code, date, email or phone: which comparison levels apply")


class MatchThresholds(BaseModel):
    auto_merge_above: float = Field(description="Pairs more probable than this are merged by the dedupe job")
    review_above: float = Field(description="Pairs more probable than this (and not merged) go to review")
    fields: list[MatchFieldRule] = Field(description="The traits the matching model compares")
    blocking: list[list[str]] = Field(description="Candidates share every field of at least one rule")
    deterministic: list[list[str]] = Field(description="Rules that find almost only true matches (for the prior)")
    recall: float = Field(description="The share of all true matches the deterministic rules are thought to find")


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


class MatchRequest(BaseModel):
    traits: dict[str, Any] = Field(description="Traits as on a profile (firstName, lastName, birthday, address...)")
    limit: int = Field(default=10, ge=1, le=100, description="At most this many candidates")
    min_probability: float = Field(default=0.0, ge=0, le=1, description="Leave out candidates below this")


class MatchCandidate(BaseModel):
    profile_id: str
    probability: float = Field(description="The model's probability that the traits describe this person")
    match_weight: float = Field(description="log2 of the odds: the prior plus each field's weight")
    decision: str = Field(description="merge, review or ignore, by the thresholds of the identity rules")
    levels: dict[str, str] = Field(description="Per field, the comparison level found (exact, null, else, ...)")


class MatchRead(BaseModel):
    model_version: int
    candidates: list[MatchCandidate]


class ReviewRead(BaseModel):
    id: int
    left_id: str
    right_id: str
    probability: float
    match_weight: float
    model_version: int
    levels: dict[str, Any]
    status: str = Field(description="pending, accepted, rejected, merged (automatic), blocked, or merging")
    created_at: datetime
    decided_at: datetime | None
    actor: str | None
    reason: str | None
    message_id: str | None = Field(
        description="The link event that merged the pair (in the timeline); null if they were one profile already"
    )


class ReviewList(BaseModel):
    data: list[ReviewRead]


class DecisionRequest(BaseModel):
    reason: str = Field(min_length=1, max_length=500, description="Why: recorded with the decision")


class ModelLevel(BaseModel):
    label: str
    weight: float


class ModelField(BaseModel):
    name: str
    compare: str
    levels: list[ModelLevel]


class ModelRead(BaseModel):
    version: int
    created_at: datetime
    profiles: int | None
    prior_weight: float
    fields: list[ModelField]
