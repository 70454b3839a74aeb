"""Data subject rights over REST: a copy of everything about a person, and erasure."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select

from accord.audit.service import record_audit
from accord.db.base import utcnow
from accord.errors import documented
from accord.identity.history import person_ids
from accord.identity.service import current_rules
from accord.profiles.api import Ref, resolve_or_404
from accord.profiles.models import Profile
from accord.rights import service
from accord.rights.schemas import ErasureRead
from accord.runtime import Runtime, runtime
from accord.security.auth import Principal, actor_of, require_role

router = APIRouter(prefix="/api/v1/profiles", tags=["data subject rights"])
Rt = Annotated[Runtime, Depends(runtime)]
Admin = Annotated[Principal, Depends(require_role("admin"))]
ERRORS = documented(400, 401, 403, 404, 410, 422, 429)


@router.post(
    "/{ref}/export",
    responses=ERRORS,
    summary="Everything Accord holds about the person, as one JSON document (subject access)",
)
async def post_export(request: Request, ref: Ref, rt: Rt, principal: Admin) -> dict[str, Any]:
    def work() -> dict[str, Any]:
        now = utcnow()
        with rt.db.read() as session:
            profile = resolve_or_404(session, ref)
            keys = service.person_keys(session, profile)
            rules = current_rules(session)
            pending = service.pending_events(rt.log, rules, keys)
            document = service.export(session, profile, pending=pending, now=now)
        with rt.db.unit_of_work() as session:
            record_audit(
                session,
                key=rt.signing,
                actor=actor_of(request, principal),
                action="profile.export",
                target_type="profile",
                target_id=profile.id,
                details={
                    "identities": len(document["identities"]),
                    "events": len(document["events"]),
                    "pending_events": len(pending),
                    "consent_records": len(document["consent"]["history"]),
                },
                now=now,
            )
        return document

    return await run_in_threadpool(work)


@router.delete(
    "/{ref}",
    response_model=ErasureRead,
    responses=ERRORS,
    summary="Erase the person: delete their data, keep a tombstone (410 from then on), suppress their identifiers",
)
async def delete_profile(request: Request, ref: Ref, rt: Rt, principal: Admin) -> ErasureRead:
    who = actor_of(request, principal)

    def work() -> ErasureRead:
        now = utcnow()
        with rt.db.unit_of_work() as session:
            profile = resolve_or_404(session, ref)
            if rt.db.dialect == "postgresql":
                # Wait for any worker busy with this person; it retries and finds them erased.
                ids = person_ids(session, profile)
                session.execute(
                    select(Profile.id).where(Profile.id.in_(sorted(ids))).order_by(Profile.id).with_for_update()
                )
            done = service.erase(session, profile, key=rt.signing, actor=f"token:{principal.token_id}", now=now)
            rules = current_rules(session)
            record_audit(
                session,
                key=rt.signing,
                actor=who,
                action="profile.erase",
                target_type="profile",
                target_id=profile.id,
                details={"erasure_id": done.erasure_id, "profile_ids": done.profile_ids, **done.counts()},
                now=now,
            )
        done.pending_events = service.scrub_log(rt.log, rules, done.keys)
        rt.db.checkpoint_wal()
        if rt.log.db is not rt.db:
            rt.log.db.checkpoint_wal()
        return ErasureRead(
            erasure_id=done.erasure_id,
            profile_id=done.person_id,
            profile_ids=done.profile_ids,
            erased_at=now,
            deleted=done.counts(),
        )

    return await run_in_threadpool(work)
