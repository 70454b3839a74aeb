"""API models of the audit trail."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class AuditRecordRead(BaseModel):
    seq: int
    id: str
    hash: str
    prev: str
    at: str
    actor_type: str
    actor_id: str | None
    actor_role: str | None
    action: str
    target_type: str | None
    target_id: str | None
    ip: str | None
    details: dict[str, Any]


class AuditPage(BaseModel):
    records: list[AuditRecordRead]
    next_before: int | None


class AuditProblemRead(BaseModel):
    seq: int | None
    record_id: str | None
    problem: str


class AuditVerifyRead(BaseModel):
    ok: bool
    records: int
    checkpoints: int
    head_seq: int
    head_hash: str
    first_bad: AuditProblemRead | None
