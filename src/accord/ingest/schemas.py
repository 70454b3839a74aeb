"""Pydantic models of the tracking calls, for the OpenAPI schema and the docs.

The hot path validates with `accord.ingest.spec` on plain dicts (faster); these describe the same
shape for readers and client generators.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Call(BaseModel):
    model_config = ConfigDict(extra="allow")

    userId: str | None = Field(default=None, description="Your id for the person; this or anonymousId")
    anonymousId: str | None = Field(default=None, description="A device or browser id; this or userId")
    messageId: str | None = Field(default=None, description="Unique per source; resends are stored once")
    timestamp: str | None = Field(default=None, description="ISO-8601, when it happened on the device")
    sentAt: str | None = Field(default=None, description="ISO-8601, when the device sent it (clock skew)")
    context: dict[str, Any] | None = None
    integrations: dict[str, Any] | None = None
    writeKey: str | None = Field(default=None, description="The source's write key, if not sent as HTTP Basic")


class TrackCall(_Call):
    event: str = Field(description="The action, e.g. Order Completed")
    properties: dict[str, Any] | None = None


class IdentifyCall(_Call):
    traits: dict[str, Any] | None = None


class PageCall(_Call):
    name: str | None = None
    category: str | None = None
    properties: dict[str, Any] | None = None


class GroupCall(_Call):
    groupId: str
    traits: dict[str, Any] | None = None


class AliasCall(_Call):
    previousId: str
    userId: str | None = Field(description="The new id (required)")


class BatchItem(_Call):
    type: Literal["track", "identify", "page", "screen", "group", "alias"]


class BatchCall(BaseModel):
    model_config = ConfigDict(extra="allow")

    batch: list[BatchItem] = Field(max_length=2500)
    context: dict[str, Any] | None = Field(default=None, description="Merged into every event's context")
    integrations: dict[str, Any] | None = None
    sentAt: str | None = None
    writeKey: str | None = None


class Accepted(BaseModel):
    success: bool = True


REQUEST_MODELS: dict[str, type[BaseModel]] = {
    "track": TrackCall,
    "identify": IdentifyCall,
    "page": PageCall,
    "screen": PageCall,
    "group": GroupCall,
    "alias": AliasCall,
    "batch": BatchCall,
    "import": BatchCall,
}
