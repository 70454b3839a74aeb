"""The profile API: `/api/v1/profiles/{ref}` and its sub-resources."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from accord.audit.writer import Pending
from accord.errors import ApiError, documented
from accord.hashchain import iso
from accord.profiles import service
from accord.profiles.models import Profile, ProfileEvent
from accord.profiles.private import profile_traits
from accord.profiles.schemas import (
    EventPageRead,
    EventRead,
    IdentitiesRead,
    IdentityRead,
    ProfileRead,
    TraitSource,
    TraitsRead,
)
from accord.rights import service as rights
from accord.runtime import Runtime, runtime
from accord.security.auth import Principal, actor_of, require_role

router = APIRouter(prefix="/api/v1/profiles", tags=["profiles"])
Reader = Annotated[Principal, Depends(require_role("analyst", "agent"))]
Rt = Annotated[Runtime, Depends(runtime)]
CALL_TYPES = ("track", "identify", "page", "screen", "group", "alias")
ERRORS = documented(400, 401, 403, 404, 410, 422, 429)
Ref = Annotated[
    str,
    Path(
        max_length=500, description="A profile id, or type:value (user_id:42, email:ann@example.com, anonymous_id:...)"
    ),
]


def resolve_or_404(session: Session, ref: str) -> Profile:
    try:
        profile = service.resolve(session, ref)
    except service.BadReference as error:
        raise ApiError(400, "invalid_reference", str(error)) from None
    if profile is None:
        gone = None if ":" in ref else rights.tombstone(session, ref)
        if gone is not None:
            dropped = f"; {gone.suppressed_events} later events with their identifiers were dropped"
            raise ApiError(
                410,
                "profile_erased",
                f"this profile was erased at {iso(gone.erased_at)}{dropped if gone.suppressed_events else ''}",
            )
        raise ApiError(404, "profile_not_found", "no profile matches this reference")
    return profile


async def audit_read(
    rt: Runtime, request: Request, principal: Principal, action: str, profile_id: str, **details: Any
) -> None:
    """Record a read of a person's data once it succeeded, and wait (without holding a thread) until the
    record is durable before the read is answered. Concurrent reads share one commit."""
    pending = Pending(actor_of(request, principal), action, "profile", profile_id, details)
    await asyncio.wrap_future(rt.audit.submit(pending))


def TimeQuery(description: str) -> Any:  # noqa: N802 - stands in for fastapi.Query
    return Query(max_length=64, description=description, json_schema_extra={"format": "date-time"})


def moment(name: str, text: str | None) -> datetime | None:
    """An ISO-8601 time with a zone, in UTC; anything else is a 400 naming the parameter."""
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ApiError(400, "invalid_filter", f"{name} is not an ISO-8601 time: {text[:40]!r}") from None
    if moment.tzinfo is None:
        raise ApiError(400, "invalid_filter", f"{name} needs a time zone, e.g. 2026-01-31T12:00:00Z")
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise ApiError(400, "invalid_filter", f"{name} is out of range in UTC: {text[:40]!r}") from None


def _identity(row: service.ShownIdentity) -> IdentityRead:
    return IdentityRead(type=row.type, value=row.value, first_seen=row.first_seen)


def _event(row: ProfileEvent) -> EventRead:
    payload = row.payload
    return EventRead(
        id=row.id,
        message_id=row.message_id,
        source_id=row.source_id,
        type=row.type,
        event=row.event,
        timestamp=row.timestamp,
        received_at=row.received_at,
        properties=payload.get("properties"),
        traits=payload.get("traits"),
        context=payload.get("context"),
    )


@router.get(
    "/{ref}",
    response_model=ProfileRead,
    responses=ERRORS,
    summary="One profile with its traits and identities",
)
async def get_profile(request: Request, ref: Ref, rt: Rt, principal: Reader) -> ProfileRead:
    def read() -> ProfileRead:
        with rt.db.read() as session:
            profile = resolve_or_404(session, ref)
            return ProfileRead(
                id=profile.id,
                traits=profile_traits(session, profile),
                identities=[_identity(i) for i in service.identities(session, profile.id)],
                counts=profile.counts,
                first_seen=profile.first_seen,
                last_seen=profile.last_seen,
                created_at=profile.created_at,
                updated_at=profile.updated_at,
                merged_ids=service.merged_ids(session, profile.id),
            )

    answer = await run_in_threadpool(read)
    await audit_read(rt, request, principal, "profile.read", answer.id)
    return answer


@router.get(
    "/{ref}/traits",
    response_model=TraitsRead,
    responses=ERRORS,
    summary="A profile's traits",
)
async def get_traits(request: Request, ref: Ref, rt: Rt, principal: Reader) -> TraitsRead:
    def read() -> TraitsRead:
        with rt.db.read() as session:
            profile = resolve_or_404(session, ref)
            traits = profile_traits(session, profile)
            return TraitsRead(
                profile_id=profile.id,
                traits=traits,
                sources={name: _trait_source(profile.trait_versions.get(name)) for name in traits},
            )

    answer = await run_in_threadpool(read)
    await audit_read(rt, request, principal, "profile.traits.read", answer.profile_id)
    return answer


def _trait_source(version: Any) -> TraitSource:
    """A stored version, [timestamp, messageId, source id, run id]; older ones have only the first two."""
    parts = [p if isinstance(p, str) and p else None for p in version] if isinstance(version, list) else []
    parts += [None] * (4 - len(parts))
    return TraitSource(timestamp=parts[0], message_id=parts[1], source_id=parts[2], run_id=parts[3])


@router.get(
    "/{ref}/identities",
    response_model=IdentitiesRead,
    responses=ERRORS,
    summary="A profile's identifiers",
)
async def get_identities(request: Request, ref: Ref, rt: Rt, principal: Reader) -> IdentitiesRead:
    def read() -> IdentitiesRead:
        with rt.db.read() as session:
            profile = resolve_or_404(session, ref)
            return IdentitiesRead(
                profile_id=profile.id, identities=[_identity(i) for i in service.identities(session, profile.id)]
            )

    answer = await run_in_threadpool(read)
    await audit_read(rt, request, principal, "profile.identities.read", answer.profile_id)
    return answer


@router.get(
    "/{ref}/events",
    response_model=EventPageRead,
    responses=ERRORS,
    summary="The timeline, newest first",
)
async def get_events(
    request: Request,
    ref: Ref,
    rt: Rt,
    principal: Reader,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    type: Annotated[list[str] | None, Query(description="Call types to include")] = None,
    event: Annotated[str | None, Query(max_length=200, description="Track event name")] = None,
    since: Annotated[str | None, TimeQuery(description="Events at or after this ISO-8601 time, with zone")] = None,
    until: Annotated[str | None, TimeQuery(description="Events before this ISO-8601 time, with zone")] = None,
) -> EventPageRead:
    for kind in type or ():
        if kind not in CALL_TYPES:
            raise ApiError(400, "invalid_filter", f"type must be one of {', '.join(CALL_TYPES)}, not {kind[:40]!r}")
    after, before = moment("since", since), moment("until", until)

    def read() -> EventPageRead:
        with rt.db.read() as session:
            profile = resolve_or_404(session, ref)
            try:
                page = service.timeline(
                    session,
                    profile.id,
                    limit=limit,
                    cursor=cursor,
                    types=type or (),
                    event=event,
                    since=after,
                    until=before,
                )
            except service.BadCursor as error:
                raise ApiError(400, "invalid_cursor", str(error)) from None
            return EventPageRead(
                profile_id=profile.id, data=[_event(e) for e in page.events], next_cursor=page.next_cursor
            )

    answer = await run_in_threadpool(read)
    await audit_read(rt, request, principal, "profile.events.read", answer.profile_id, events=len(answer.data))
    return answer
