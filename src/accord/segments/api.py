"""The segments API: definitions (versioned), the published condition schema, members and exports."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session

from accord.audit.service import record_audit
from accord.db.base import utcnow
from accord.errors import ApiError, documented
from accord.profiles.api import Ref, resolve_or_404
from accord.runtime import Runtime, runtime
from accord.security.auth import Principal, actor_of, require_role
from accord.security.service import ROLES
from accord.segments import conditions, service
from accord.segments.models import ComputedTrait, Segment
from accord.segments.schemas import (
    Backfill,
    ComputedCreate,
    ComputedList,
    ComputedRead,
    ComputedUpdate,
    MemberPage,
    MemberRead,
    MembershipRead,
    ProfileComputed,
    ProfileSegments,
    SegmentCreate,
    SegmentList,
    SegmentRead,
    SegmentUpdate,
    SizeRead,
    SizesRead,
    TransitionPage,
    TransitionRead,
    VersionList,
    VersionRead,
)

router = APIRouter(prefix="/api/v1/segments", tags=["segments"])
profiles = APIRouter(prefix="/api/v1/profiles", tags=["segments"])
computed = APIRouter(prefix="/api/v1/computed-traits", tags=["segments"])
Rt = Annotated[Runtime, Depends(runtime)]
Anyone = Annotated[Principal, Depends(require_role(*ROLES))]
Reader = Annotated[Principal, Depends(require_role("analyst", "agent"))]
Editor = Annotated[Principal, Depends(require_role("analyst"))]
Auditor = Annotated[Principal, Depends(require_role("analyst", "auditor"))]
ERRORS = documented(400, 401, 403, 404, 422, 429)
WRITE_ERRORS = documented(400, 401, 403, 404, 409, 422, 429)
PROFILE_ERRORS = documented(400, 401, 403, 404, 410, 422, 429)  # 410: an erased profile's id
KeyPath = Annotated[str, Path(max_length=100, description="The segment's key")]


def _fail(error: service.SegmentError | conditions.ConditionError, code: str = "invalid_condition") -> ApiError:
    if isinstance(error, conditions.ConditionError):
        return ApiError(422, code, str(error))
    return ApiError(error.status, error.code, str(error))


def _read(row: Segment, size: int) -> SegmentRead:
    return SegmentRead(
        key=row.key,
        name=row.name,
        description=row.description,
        version=row.version,
        condition=row.condition,
        backfill=Backfill(status=row.status, done=row.backfill_done, total=row.backfill_total),
        size=size,
        created_at=row.created_at,
        updated_at=row.updated_at,
        actor=row.actor,
    )


@router.get("/schema", summary="The JSON Schema of segment conditions (any role)", responses=documented(401, 429))
def get_schema(_: Anyone) -> dict[str, Any]:
    return conditions.json_schema()


@router.get("", response_model=SegmentList, responses=ERRORS, summary="Every segment, with its size")
def list_segments(rt: Rt, _: Reader) -> SegmentList:
    with rt.db.read() as session:
        rows = service.listing(session)
        sizes = service.sizes(session, [r.key for r in rows])
        return SegmentList(data=[_read(row, sizes.get(row.key, 0)) for row in rows])


def _audit(
    session: Session, rt: Runtime, request: Request, principal: Principal, action: str, key: str, **details: Any
) -> None:
    record_audit(
        session,
        key=rt.signing,
        actor=actor_of(request, principal),
        action=action,
        target_type=action.split(".", 1)[0],
        target_id=key,
        details=details,
    )


@router.post(
    "",
    response_model=SegmentRead,
    status_code=201,
    responses=WRITE_ERRORS,
    summary="Create a segment; workers backfill it from the stored profiles (see backfill)",
)
def create_segment(request: Request, body: SegmentCreate, rt: Rt, principal: Editor) -> SegmentRead:
    try:
        with rt.db.unit_of_work() as session:
            row = service.create(
                session,
                key=body.key,
                name=body.name,
                description=body.description,
                condition=body.condition,
                actor=f"token:{principal.token_id}",
                now=utcnow(),
            )
            _audit(session, rt, request, principal, "segment.create", row.key, version=row.version)
            return _read(row, 0)
    except (service.SegmentError, conditions.ConditionError) as error:
        raise _fail(error) from None


@router.get("/{key}", response_model=SegmentRead, responses=ERRORS, summary="One segment")
def get_segment(key: KeyPath, rt: Rt, _: Reader) -> SegmentRead:
    try:
        with rt.db.read() as session:
            row = service.get(session, key)
            return _read(row, service.size(session, key))
    except service.SegmentError as error:
        raise _fail(error) from None


@router.put("/{key}", response_model=SegmentRead, responses=WRITE_ERRORS, summary="Change a segment (a new version)")
def put_segment(request: Request, key: KeyPath, body: SegmentUpdate, rt: Rt, principal: Editor) -> SegmentRead:
    try:
        with rt.db.unit_of_work() as session:
            row = service.change(
                session,
                key=key,
                name=body.name,
                description=body.description,
                condition=body.condition,
                actor=f"token:{principal.token_id}",
                now=utcnow(),
            )
            _audit(session, rt, request, principal, "segment.update", row.key, version=row.version)
            return _read(row, service.size(session, key))
    except (service.SegmentError, conditions.ConditionError) as error:
        raise _fail(error) from None


@router.delete("/{key}", status_code=204, responses=WRITE_ERRORS, summary="Delete a segment and its memberships")
def delete_segment(request: Request, key: KeyPath, rt: Rt, principal: Editor) -> Response:
    try:
        with rt.db.unit_of_work() as session:
            service.remove(session, key=key, actor=f"token:{principal.token_id}", now=utcnow())
            _audit(session, rt, request, principal, "segment.delete", key)
    except service.SegmentError as error:
        raise _fail(error) from None
    return Response(status_code=204)


@router.get("/{key}/versions", response_model=VersionList, responses=ERRORS, summary="Every version, newest first")
def get_versions(key: KeyPath, rt: Rt, _: Auditor) -> VersionList:
    try:
        with rt.db.read() as session:
            rows = service.versions(session, key)
            return VersionList(
                key=key,
                data=[
                    VersionRead(
                        version=r.version,
                        name=r.name,
                        description=r.description,
                        condition=r.condition,
                        created_at=r.created_at,
                        actor=r.actor,
                    )
                    for r in rows
                ],
            )
    except service.SegmentError as error:
        raise _fail(error) from None


@router.get("/{key}/members", response_model=MemberPage, responses=ERRORS, summary="Members, by profile id")
def get_members(
    key: KeyPath,
    rt: Rt,
    _: Editor,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    after: Annotated[str | None, Query(max_length=40, description="The next_cursor of the previous page")] = None,
) -> MemberPage:
    try:
        with rt.db.read() as session:
            rows = service.members(session, key, after=after, limit=limit + 1)
            page = rows[:limit]
            return MemberPage(
                key=key,
                size=service.size(session, key),
                data=[MemberRead(profile_id=m.profile_id, entered_at=m.entered_at) for m in page],
                next_cursor=page[-1].profile_id if len(rows) > limit else None,
            )
    except service.SegmentError as error:
        raise _fail(error) from None


@router.get(
    "/{key}/sizes", response_model=SizesRead, responses=ERRORS, summary="Members at the end of each of the last days"
)
def get_sizes(
    key: KeyPath, rt: Rt, _: Editor, days: Annotated[int, Query(ge=1, le=366, description="How many days")] = 30
) -> SizesRead:
    try:
        with rt.db.read() as session:
            rows = service.sizes_over_time(session, key, days=days, now=utcnow())
    except service.SegmentError as error:
        raise _fail(error) from None
    return SizesRead(key=key, data=[SizeRead(date=day, size=n) for day, n in rows])


@router.get(
    "/{key}/export",
    responses={**ERRORS, 200: {"content": {"text/csv": {}, "application/x-ndjson": {}}}},
    summary="Members the consent policy lets out for a purpose and channel, as CSV or JSON lines",
)
def export_members(
    request: Request,
    key: KeyPath,
    rt: Rt,
    principal: Editor,
    purpose: Annotated[str, Query(min_length=1, max_length=100, description="The purpose the export is for")],
    channel: Annotated[str, Query(min_length=1, max_length=60, description="The channel, or all")] = "all",
    format: Annotated[Literal["csv", "jsonl"], Query()] = "jsonl",
    traits: Annotated[list[str] | None, Query(max_length=50, description="Traits to include, by name")] = None,
) -> StreamingResponse:
    names = [t[:100] for t in traits or []]
    now = utcnow()
    try:
        with rt.db.read() as session:  # checked up front, so errors answer as JSON
            service.get(session, key)
            next(service.export(session, key, purpose=purpose, channel=channel, traits=names, now=now), None)
    except service.SegmentError as error:
        raise _fail(error) from None
    with rt.db.unit_of_work() as session:  # personal data leaves: recorded before the first row is sent
        _audit(session, rt, request, principal, "segment.export", key, purpose=purpose, channel=channel, traits=names)

    def rows() -> Iterator[bytes]:
        with rt.db.read() as session:
            found = service.export(session, key, purpose=purpose, channel=channel, traits=names, now=now)
            if format == "csv":
                buffer = io.StringIO()
                writer = csv.writer(buffer)
                writer.writerow(["profile_id", "entered_at", *names])
                for row in found:
                    writer.writerow(
                        [row.profile_id, row.entered_at.isoformat(), *(_cell(row.traits.get(n)) for n in names)]
                    )
                    if buffer.tell() > 65536:
                        yield buffer.getvalue().encode()
                        buffer.seek(0)
                        buffer.truncate()
                yield buffer.getvalue().encode()
            else:
                for row in found:
                    yield (
                        orjson.dumps({"profile_id": row.profile_id, "entered_at": row.entered_at, "traits": row.traits})
                        + b"\n"
                    )

    media = "text/csv" if format == "csv" else "application/x-ndjson"
    return StreamingResponse(
        rows(),
        media_type=media,
        headers={"Content-Disposition": f'attachment; filename="{key}.{format}"'},
    )


def _cell(value: Any) -> str:
    """A CSV cell: text as it is (spreadsheet formulas neutralised), anything else as JSON."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


@profiles.get(
    "/{ref}/segments", response_model=ProfileSegments, responses=PROFILE_ERRORS, summary="The segments a profile is in"
)
def get_profile_segments(ref: Ref, rt: Rt, _: Reader) -> ProfileSegments:
    with rt.db.read() as session:
        profile = resolve_or_404(session, ref)
        return ProfileSegments(
            profile_id=profile.id,
            data=[
                MembershipRead(key=m.segment_key, name=s.name, entered_at=m.entered_at)
                for m, s in service.profile_memberships(session, profile.id)
            ],
        )


@profiles.get(
    "/{ref}/segments/history",
    response_model=TransitionPage,
    responses=PROFILE_ERRORS,
    summary="The profile's segment entries and exits, newest first",
)
def get_profile_transitions(
    ref: Ref,
    rt: Rt,
    _: Reader,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    before: Annotated[int | None, Query(ge=1, le=2**62, description="Entries with a smaller id (paging)")] = None,
) -> TransitionPage:
    with rt.db.read() as session:
        profile = resolve_or_404(session, ref)
        rows = service.transitions(session, profile.id, limit=limit, before=before)
        return TransitionPage(
            profile_id=profile.id,
            data=[
                TransitionRead(id=t.id, segment=t.segment_key, kind=t.kind, version=t.version, at=t.at) for t in rows
            ],
        )


def _computed(row: ComputedTrait) -> ComputedRead:
    return ComputedRead(
        key=row.key,
        name=row.name,
        version=row.version,
        definition=row.definition,
        created_at=row.created_at,
        updated_at=row.updated_at,
        actor=row.actor,
    )


@computed.get("", response_model=ComputedList, responses=ERRORS, summary="Every computed trait")
def list_computed(rt: Rt, _: Reader) -> ComputedList:
    with rt.db.read() as session:
        return ComputedList(data=[_computed(row) for row in service.computed_listing(session)])


@computed.post(
    "", response_model=ComputedRead, status_code=201, responses=WRITE_ERRORS, summary="Define a computed trait"
)
def create_computed(request: Request, body: ComputedCreate, rt: Rt, principal: Editor) -> ComputedRead:
    try:
        with rt.db.unit_of_work() as session:
            row = service.computed_save(
                session,
                key=body.key,
                name=body.name,
                definition=body.definition,
                actor=f"token:{principal.token_id}",
                now=utcnow(),
                create=True,
            )
            _audit(session, rt, request, principal, "computed_trait.create", row.key, version=row.version)
            return _computed(row)
    except (service.SegmentError, conditions.ConditionError) as error:
        raise _fail(error, "invalid_computed_trait") from None


@computed.get("/{key}", response_model=ComputedRead, responses=ERRORS, summary="One computed trait")
def get_computed(key: KeyPath, rt: Rt, _: Reader) -> ComputedRead:
    try:
        with rt.db.read() as session:
            return _computed(service.computed_get(session, key))
    except service.SegmentError as error:
        raise _fail(error) from None


@computed.put(
    "/{key}",
    response_model=ComputedRead,
    responses=WRITE_ERRORS,
    summary="Change a computed trait (a new version; the segments that read it are backfilled again)",
)
def put_computed(request: Request, key: KeyPath, body: ComputedUpdate, rt: Rt, principal: Editor) -> ComputedRead:
    try:
        with rt.db.unit_of_work() as session:
            row = service.computed_save(
                session,
                key=key,
                name=body.name,
                definition=body.definition,
                actor=f"token:{principal.token_id}",
                now=utcnow(),
                create=False,
            )
            _audit(session, rt, request, principal, "computed_trait.update", row.key, version=row.version)
            return _computed(row)
    except (service.SegmentError, conditions.ConditionError) as error:
        raise _fail(error, "invalid_computed_trait") from None


@computed.delete("/{key}", status_code=204, responses=WRITE_ERRORS, summary="Delete a computed trait")
def delete_computed(request: Request, key: KeyPath, rt: Rt, principal: Editor) -> Response:
    try:
        with rt.db.unit_of_work() as session:
            service.computed_remove(session, key=key)
            _audit(session, rt, request, principal, "computed_trait.delete", key)
    except service.SegmentError as error:
        raise _fail(error) from None
    return Response(status_code=204)


@profiles.get(
    "/{ref}/computed-traits",
    response_model=ProfileComputed,
    responses=PROFILE_ERRORS,
    summary="The profile's computed traits, evaluated now from its events",
)
def get_profile_computed(ref: Ref, rt: Rt, _: Reader) -> ProfileComputed:
    with rt.db.read() as session:
        profile = resolve_or_404(session, ref)
        return ProfileComputed(profile_id=profile.id, traits=service.computed_values(session, profile.id, now=utcnow()))
