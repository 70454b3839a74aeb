"""API models of the data subject rights routes."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class ErasureRead(BaseModel):
    erasure_id: str
    profile_id: str = Field(description="The live profile the request named")
    profile_ids: list[str] = Field(description="It and every profile merged into it: each answers 410 from now on")
    erased_at: datetime
    deleted: dict[str, int] = Field(description="Rows deleted, by kind")
