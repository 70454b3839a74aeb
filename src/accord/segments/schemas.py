from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

Key = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,99}$", description="Segment key: a-z, 0-9, _ . -")


class SegmentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str = Key
    name: str = Field(default="", max_length=200)
    description: str = Field(default="", max_length=2000)
    condition: dict[str, Any] = Field(description="A condition (see GET /api/v1/segments/schema)")


class SegmentUpdate(BaseModel):
    """A new version: fields left out keep their value."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, max_length=200)
    description: str | None = Field(default=None, max_length=2000)
    condition: dict[str, Any] | None = None


class Backfill(BaseModel):
    status: str = Field(description="backfilling (evaluating every profile against this version) or ready")
    done: int
    total: int


class SegmentRead(BaseModel):
    key: str
    name: str
    description: str
    version: int
    condition: dict[str, Any]
    backfill: Backfill
    size: int = Field(description="Members now")
    created_at: datetime
    updated_at: datetime
    actor: str


class SegmentList(BaseModel):
    data: list[SegmentRead]


class VersionRead(BaseModel):
    version: int
    name: str
    description: str
    condition: dict[str, Any] | None = Field(description="null: this version deleted the segment")
    created_at: datetime
    actor: str


class VersionList(BaseModel):
    key: str
    data: list[VersionRead]


class MembershipRead(BaseModel):
    key: str
    name: str
    entered_at: datetime


class ProfileSegments(BaseModel):
    profile_id: str
    data: list[MembershipRead]


class TransitionRead(BaseModel):
    id: int
    segment: str
    kind: str = Field(description="entered or exited")
    version: int
    at: datetime


class TransitionPage(BaseModel):
    profile_id: str
    data: list[TransitionRead]


class MemberRead(BaseModel):
    profile_id: str
    entered_at: datetime


class MemberPage(BaseModel):
    key: str
    size: int
    data: list[MemberRead]
    next_cursor: str | None = Field(description="Pass as ?after= for the next page; null at the end")


class ComputedCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str = Key
    name: str = Field(default="", max_length=200)
    definition: dict[str, Any] = Field(
        description='{"event", "function", "property", "where", "within"}: see docs/segments.md#computed-traits'
    )


class ComputedUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, max_length=200)
    definition: dict[str, Any]


class ComputedRead(BaseModel):
    key: str
    name: str
    version: int
    definition: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    actor: str


class ComputedList(BaseModel):
    data: list[ComputedRead]


class ProfileComputed(BaseModel):
    profile_id: str
    traits: dict[str, Any] = Field(description="Each computed trait's value now (null: no event counted)")


class SizeRead(BaseModel):
    date: str = Field(description="A UTC date, YYYY-MM-DD")
    size: int = Field(description="Members at the end of that day (today: now)")


class SizesRead(BaseModel):
    key: str
    data: list[SizeRead]
