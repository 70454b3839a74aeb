from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

Key = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,99}$", description="Journey key: a-z, 0-9, _ . -")
STAGES = "Stages in order, each {key, name, condition, time_limit} (see GET /api/v1/journeys/schema)"


class JourneyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str = Key
    name: str = Field(default="", max_length=200)
    description: str = Field(default="", max_length=2000)
    stages: list[Any] = Field(description=STAGES)
    goal: dict[str, Any] | None = Field(default=None, description="A condition; holding in the journey completes it")
    exit: dict[str, Any] | None = Field(default=None, description="A condition; holding in the journey exits it")
    time_limit: str | None = Field(default=None, max_length=20, description="e.g. 30d: longer in the journey exits")

    def definition(self) -> dict[str, Any]:
        return document(self.stages, self.goal, self.exit, self.time_limit)


def document(stages: Any, goal: Any, exit: Any, time_limit: Any) -> dict[str, Any]:
    """The stored definition's shape from the body's fields (left-out ones are not in it)."""
    found: dict[str, Any] = {"stages": stages}
    for name, value in (("goal", goal), ("exit", exit), ("time_limit", time_limit)):
        if value is not None:
            found[name] = value
    return found


class JourneyUpdate(BaseModel):
    """A new version. With `stages`, the definition is replaced whole (goal, exit and time_limit left out
    are removed); without, only the name and description change."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, max_length=200)
    description: str | None = Field(default=None, max_length=2000)
    stages: list[Any] | None = Field(default=None, description=STAGES)
    goal: dict[str, Any] | None = None
    exit: dict[str, Any] | None = None
    time_limit: str | None = Field(default=None, max_length=20)


class Backfill(BaseModel):
    status: str = Field(description="backfilling (evaluating every profile against this version) or ready")
    done: int
    total: int


class JourneyRead(BaseModel):
    key: str
    name: str
    description: str
    version: int
    definition: dict[str, Any] = Field(description="{stages, goal, exit, time_limit}")
    backfill: Backfill
    positions: dict[str, int] = Field(description="Profiles by state: active, completed, exited")
    created_at: datetime
    updated_at: datetime
    actor: str


class JourneyList(BaseModel):
    data: list[JourneyRead]


class VersionRead(BaseModel):
    version: int
    name: str
    description: str
    definition: dict[str, Any] | None = Field(description="null: this version deleted the journey")
    created_at: datetime
    actor: str


class VersionList(BaseModel):
    key: str
    data: list[VersionRead]


class PositionRead(BaseModel):
    key: str = Field(description="The journey")
    name: str
    stage: str = Field(description="The current stage's key (the last stage reached, once completed or exited)")
    stage_name: str
    stage_index: int = Field(description="0 for the first stage; -1 if the journey no longer has this stage")
    stage_entered_at: datetime
    entered_at: datetime = Field(description="When the profile entered the journey")
    state: str = Field(description="active, completed or exited")
    ended_at: datetime | None
    reason: str | None = Field(description="goal, last_stage, exit or time_limit; null while active")


class ProfileJourneys(BaseModel):
    profile_id: str
    data: list[PositionRead]


class TransitionRead(BaseModel):
    id: int
    journey: str
    kind: str = Field(description="entered, advanced, completed or exited")
    stage: str
    from_stage: str | None
    reason: str | None
    version: int
    at: datetime


class TransitionPage(BaseModel):
    profile_id: str
    data: list[TransitionRead]


class StageFunnel(BaseModel):
    key: str
    name: str
    reached: int = Field(description="Profiles at or past this stage")
    entered: int = Field(description="Profiles that stood in this stage (not skipped over it)")
    conversion: float | None = Field(description="Reached the next stage / reached this one; null for the last")
    median_seconds_to_next: float | None = Field(
        description="Median time from entering this stage to entering the next, over profiles that stood in both"
    )
    timed: int = Field(description="How many profiles that median is over")


class FunnelRead(BaseModel):
    key: str
    version: int
    start: datetime = Field(alias="from", serialization_alias="from")
    to: datetime
    entered: int = Field(description="Profiles that entered the journey in [from, to)")
    active: int
    completed: int
    exited: int
    stages: list[StageFunnel]

    model_config = ConfigDict(populate_by_name=True)
