"""The audit API: read the trail (auditors and admins) and verify its chain."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.concurrency import run_in_threadpool

from accord.audit import service
from accord.audit.schemas import AuditPage, AuditProblemRead, AuditRecordRead, AuditVerifyRead
from accord.errors import ApiError, documented
from accord.profiles.api import TimeQuery, moment
from accord.runtime import Runtime, runtime
from accord.security.auth import Principal, require_role

router = APIRouter(prefix="/api/v1/audit", tags=["audit"])
Rt = Annotated[Runtime, Depends(runtime)]
Auditor = Annotated[Principal, Depends(require_role("auditor"))]


def _read(entry: service.Entry) -> AuditRecordRead:
    body = entry.body
    return AuditRecordRead(
        seq=entry.seq,
        id=body["id"],
        hash=entry.hash,
        prev=body["prev"],
        at=body["at"],
        actor_type=body["actor_type"],
        actor_id=body["actor_id"],
        actor_role=body["actor_role"],
        action=body["action"],
        target_type=body["target_type"],
        target_id=body["target_id"],
        ip=body["ip"],
        details=body.get("details") or {},
    )


@router.get(
    "",
    response_model=AuditPage,
    responses=documented(400, 401, 403, 422, 429),
    summary="The audit trail, newest first, filtered (who did what to which thing, when, from where)",
)
def list_audit(
    rt: Rt,
    _: Auditor,
    action: Annotated[
        str | None, Query(max_length=60, description="An action (profile.read), or a prefix ending in a dot")
    ] = None,
    actor_id: Annotated[str | None, Query(max_length=100, description="A token id, e.g. tok_...")] = None,
    target_type: Annotated[str | None, Query(max_length=40, description="profile, source, token, purpose, ...")] = None,
    target_id: Annotated[str | None, Query(max_length=200, description="A profile id, a source id, ...")] = None,
    since: Annotated[str | None, TimeQuery(description="Records at or after this ISO-8601 time, with zone")] = None,
    until: Annotated[str | None, TimeQuery(description="Records before this ISO-8601 time, with zone")] = None,
    before: Annotated[int | None, Query(ge=1, le=2**62, description="Records with a smaller seq (paging)")] = None,
    limit: Annotated[int, Query(ge=1, le=service.MAX_PAGE)] = 100,
) -> AuditPage:
    named = {"action": action, "actor_id": actor_id, "target_type": target_type, "target_id": target_id}
    for name, value in named.items():
        if value is not None and "\x00" in value:
            raise ApiError(400, "invalid_filter", f"{name} may not hold a NUL character")
    filters = service.Filters(
        action=action,
        actor_id=actor_id,
        target_type=target_type,
        target_id=target_id,
        since=moment("since", since),
        until=moment("until", until),
    )
    with rt.db.read() as session:
        entries = service.records(session, filters, before=before, limit=limit)
    return AuditPage(
        records=[_read(e) for e in entries],
        next_before=entries[-1].seq if len(entries) == limit else None,
    )


@router.get(
    "/verify",
    response_model=AuditVerifyRead,
    responses=documented(401, 403, 429),
    summary="Walk the whole audit chain: hashes, order, MACs, checkpoints; name the first bad record",
)
async def verify_audit(rt: Rt, _: Auditor) -> AuditVerifyRead:
    report = await run_in_threadpool(service.verify, rt.db.engine, key=rt.signing)
    bad = report.first_bad
    return AuditVerifyRead(
        ok=report.ok,
        records=report.records,
        checkpoints=report.checkpoints,
        head_seq=report.head_seq,
        head_hash=report.head_hash,
        first_bad=AuditProblemRead(seq=bad.seq, record_id=bad.record_id, problem=bad.problem) if bad else None,
    )
