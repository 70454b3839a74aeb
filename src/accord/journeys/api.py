"""The journeys API: definitions (versioned), the published definition schema, positions, funnels."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import AwareDatetime
from sqlalchemy.orm import Session

from accord.audit.service import record_audit
from accord.db.base import utcnow
from accord.errors import ApiError, documented
from accord.journeys import definition as definitions
from accord.journeys import schemas, service
from accord.journeys.models import Journey, JourneyPosition, JourneyTransition
from accord.journeys.schemas import (
    Backfill,
    FunnelRead,
    JourneyCreate,
    JourneyList,
    JourneyRead,
    JourneyUpdate,
    PositionRead,
    ProfileJourneys,
    StageFunnel,
    TransitionPage,
    TransitionRead,
    VersionList,
    VersionRead,
)
from accord.profiles.api import Ref, resolve_or_404
from accord.runtime import Runtime, runtime
from accord.security.auth import Principal, actor_of, require_role
from accord.security.service import ROLES
from accord.segments.conditions import ConditionError

router = APIRouter(prefix="/api/v1/journeys", tags=["journeys"])
profiles = APIRouter(prefix="/api/v1/profiles", tags=["journeys"])
Rt = Annotated[Runtime, Depends(runtime)]
Anyone = Annotated[Principal, Depends(require_role(*ROLES))]
Reader = Annotated[Principal, Depends(require_role("analyst", "agent"))]
Editor = Annotated[Principal, Depends(require_role("analyst"))]
Auditor = Annotated[Principal, Depends(require_role("analyst", "auditor"))]
ERRORS = documented(400, 401, 403, 404, 422, 429)
WRITE_ERRORS = documented(400, 401, 403, 404, 409, 422, 429)
PROFILE_ERRORS = documented(400, 401, 403, 404, 410, 422, 429)  # 410: an erased profile's id
KeyPath = Annotated[str, Path(max_length=100, description="The journey's key")]
DEFAULT_WINDOW = timedelta(days=30)


def _fail(error: service.JourneyError | ConditionError) -> ApiError:
    if isinstance(error, ConditionError):
        return ApiError(422, "invalid_journey", str(error))
    return ApiError(error.status, error.code, str(error))


def _read(row: Journey, positions: dict[str, int]) -> JourneyRead:
    return JourneyRead(
        key=row.key,
        name=row.name,
        description=row.description,
        version=row.version,
        definition=row.definition,
        backfill=Backfill(status=row.status, done=row.backfill_done, total=row.backfill_total),
        positions={state: positions.get(state, 0) for state in ("active", "completed", "exited")},
        created_at=row.created_at,
        updated_at=row.updated_at,
        actor=row.actor,
    )


def _audit(
    session: Session, rt: Runtime, request: Request, principal: Principal, action: str, key: str, **details: Any
) -> None:
    record_audit(
        session,
        key=rt.signing,
        actor=actor_of(request, principal),
        action=action,
        target_type="journey",
        target_id=key,
        details=details,
    )


@router.get("/schema", summary="The JSON Schema of journey definitions (any role)", responses=documented(401, 429))
def get_schema(_: Anyone) -> dict[str, Any]:
    return definitions.json_schema()


@router.get("", response_model=JourneyList, responses=ERRORS, summary="Every journey, with its positions by state")
def list_journeys(rt: Rt, _: Reader) -> JourneyList:
    with rt.db.read() as session:
        rows = service.listing(session)
        counts = service.counts(session, [r.key for r in rows])
        return JourneyList(data=[_read(row, counts.get(row.key, {})) for row in rows])


@router.post(
    "",
    response_model=JourneyRead,
    status_code=201,
    responses=WRITE_ERRORS,
    summary="Create a journey; workers backfill positions from the stored profiles (see backfill)",
)
def create_journey(request: Request, body: JourneyCreate, rt: Rt, principal: Editor) -> JourneyRead:
    try:
        with rt.db.unit_of_work() as session:
            row = service.create(
                session,
                key=body.key,
                name=body.name,
                description=body.description,
                definition=body.definition(),
                actor=f"token:{principal.token_id}",
                now=utcnow(),
            )
            _audit(session, rt, request, principal, "journey.create", row.key, version=row.version)
            return _read(row, {})
    except (service.JourneyError, ConditionError) as error:
        raise _fail(error) from None


@router.get("/{key}", response_model=JourneyRead, responses=ERRORS, summary="One journey")
def get_journey(key: KeyPath, rt: Rt, _: Reader) -> JourneyRead:
    try:
        with rt.db.read() as session:
            row = service.get(session, key)
            return _read(row, service.counts(session, [key]).get(key, {}))
    except service.JourneyError as error:
        raise _fail(error) from None


@router.put("/{key}", response_model=JourneyRead, responses=WRITE_ERRORS, summary="Change a journey (a new version)")
def put_journey(request: Request, key: KeyPath, body: JourneyUpdate, rt: Rt, principal: Editor) -> JourneyRead:
    document: dict[str, Any] | None = None
    if body.stages is not None:
        document = schemas.document(body.stages, body.goal, body.exit, body.time_limit)
    elif body.goal is not None or body.exit is not None or body.time_limit is not None:
        raise ApiError(422, "invalid_journey", "$.stages: give the stages with goal, exit or time_limit")
    try:
        with rt.db.unit_of_work() as session:
            row = service.change(
                session,
                key=key,
                name=body.name,
                description=body.description,
                definition=document,
                actor=f"token:{principal.token_id}",
                now=utcnow(),
            )
            _audit(session, rt, request, principal, "journey.update", row.key, version=row.version)
            return _read(row, service.counts(session, [key]).get(key, {}))
    except (service.JourneyError, ConditionError) as error:
        raise _fail(error) from None


@router.delete("/{key}", status_code=204, responses=WRITE_ERRORS, summary="Delete a journey and its positions")
def delete_journey(request: Request, key: KeyPath, rt: Rt, principal: Editor) -> Response:
    try:
        with rt.db.unit_of_work() as session:
            service.remove(session, key=key, actor=f"token:{principal.token_id}", now=utcnow())
            _audit(session, rt, request, principal, "journey.delete", key)
    except service.JourneyError as error:
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
                        definition=r.definition,
                        created_at=r.created_at,
                        actor=r.actor,
                    )
                    for r in rows
                ],
            )
    except service.JourneyError as error:
        raise _fail(error) from None


@router.get(
    "/{key}/funnel",
    response_model=FunnelRead,
    response_model_by_alias=True,
    responses=ERRORS,
    summary="Counts per stage, conversion and median time between stages, for profiles that entered in a window",
)
def get_funnel(
    key: KeyPath,
    rt: Rt,
    _: Editor,
    start: Annotated[
        AwareDatetime | None,
        Query(alias="from", description="Entered at or after (ISO-8601 with a zone); default: to - 30 days"),
    ] = None,
    end: Annotated[AwareDatetime | None, Query(alias="to", description="Entered before; default: now")] = None,
) -> FunnelRead:
    end = end or utcnow()
    start = start or end - DEFAULT_WINDOW
    try:
        with rt.db.read() as session:
            found = service.funnel(session, key, start=start, end=end)
    except service.JourneyError as error:
        raise _fail(error) from None
    return FunnelRead(
        key=found.key,
        version=found.version,
        start=found.start,
        to=found.end,
        entered=found.entered,
        active=found.active,
        completed=found.completed,
        exited=found.exited,
        stages=[
            StageFunnel(
                key=s.key,
                name=s.name,
                reached=s.reached,
                entered=s.entered,
                conversion=s.conversion,
                median_seconds_to_next=s.median_seconds_to_next,
                timed=s.timed,
            )
            for s in found.stages
        ],
    )


def _position(position: JourneyPosition, journey: Journey) -> PositionRead:
    stages = [s for s in journey.definition.get("stages", []) if isinstance(s, dict)]
    index = next((i for i, s in enumerate(stages) if s.get("key") == position.stage), -1)
    return PositionRead(
        key=journey.key,
        name=journey.name,
        stage=position.stage,
        stage_name=(stages[index].get("name") or position.stage) if index >= 0 else position.stage,
        stage_index=index,
        stage_entered_at=position.stage_entered_at,
        entered_at=position.entered_at,
        state=position.state,
        ended_at=position.ended_at,
        reason=position.reason,
    )


@profiles.get(
    "/{ref}/journeys",
    response_model=ProfileJourneys,
    responses=PROFILE_ERRORS,
    summary="Where the profile stands in each journey it entered",
)
def get_profile_journeys(ref: Ref, rt: Rt, _: Reader) -> ProfileJourneys:
    with rt.db.read() as session:
        profile = resolve_or_404(session, ref)
        return ProfileJourneys(
            profile_id=profile.id, data=[_position(p, j) for p, j in service.profile_positions(session, profile.id)]
        )


def transition(row: JourneyTransition) -> TransitionRead:
    return TransitionRead(
        id=row.id,
        journey=row.journey_key,
        kind=row.kind,
        stage=row.stage,
        from_stage=row.from_stage,
        reason=row.reason,
        version=row.version,
        at=row.at,
    )


@profiles.get(
    "/{ref}/journeys/history",
    response_model=TransitionPage,
    responses=PROFILE_ERRORS,
    summary="The profile's journey entries, stage changes, completions and exits, newest first",
)
def get_profile_journey_history(
    ref: Ref,
    rt: Rt,
    _: Reader,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    before: Annotated[int | None, Query(ge=1, le=2**62, description="Entries with a smaller id (paging)")] = None,
) -> TransitionPage:
    with rt.db.read() as session:
        profile = resolve_or_404(session, ref)
        rows = service.transitions(session, profile.id, limit=limit, before=before)
        return TransitionPage(profile_id=profile.id, data=[transition(t) for t in rows])
