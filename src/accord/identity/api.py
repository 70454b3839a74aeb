"""The identity API: rules, a person's merge history and unmerge."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.exc import DBAPIError

from accord.audit.service import Actor, record_audit
from accord.db.base import utcnow
from accord.db.engine import backoff, conflicted
from accord.errors import PROFILE_ERRORS, PROFILE_WRITE_ERRORS, ApiError, documented
from accord.identity import history as merges
from accord.identity import linkage, service
from accord.identity.blind import reveal_keys
from accord.identity.match_index import current_model
from accord.identity.models import IdentityRules, MatchReview, Merge
from accord.identity.rules import DEFAULT_RULES, RulesError
from accord.identity.schemas import (
    DecisionRequest,
    HistoryEntry,
    HistoryRead,
    MatchCandidate,
    MatchRead,
    MatchRequest,
    ModelRead,
    ReviewList,
    ReviewRead,
    RulesRead,
    UnmergedProfile,
    UnmergeRead,
    UnmergeRequest,
)
from accord.pipeline.process import StaleRead
from accord.profiles.api import Ref, resolve_or_404
from accord.runtime import Runtime, runtime
from accord.security.auth import Principal, actor_of, require_role

router = APIRouter(prefix="/api/v1/identity", tags=["identity"])
profiles = APIRouter(prefix="/api/v1/profiles", tags=["identity"])
Rt = Annotated[Runtime, Depends(runtime)]
Admin = Annotated[Principal, Depends(require_role("admin"))]
RuleReader = Annotated[Principal, Depends(require_role("analyst", "auditor"))]
HistoryReader = Annotated[Principal, Depends(require_role("analyst", "agent", "auditor"))]
Steward = Annotated[Principal, Depends(require_role("analyst"))]
Matcher = Annotated[Principal, Depends(require_role("analyst", "agent"))]
ReviewReader = Annotated[Principal, Depends(require_role("analyst", "auditor"))]
ERRORS = documented(400, 401, 403, 404, 422, 429)
WRITE_ERRORS = documented(400, 401, 403, 404, 409, 422, 429)
MAX_RULES_BYTES = 64 * 1024
DECISION_ATTEMPTS = 8  # reviewers accepting pairs of one person at once wait their turn (backoff up to 0.5 s)


def _rules_read(row: IdentityRules | None) -> RulesRead:
    if row is None:
        return RulesRead.model_validate({"version": 0, "rules": DEFAULT_RULES.document()})
    return RulesRead.model_validate(
        {"version": row.version, "rules": row.document, "created_at": row.created_at, "actor": row.actor}
    )


@router.get("/rules", response_model=RulesRead, responses=ERRORS, summary="The identity rules in force")
def get_rules(rt: Rt, _: RuleReader) -> RulesRead:
    with rt.db.read() as session:
        rows = service.rules_history(session, limit=1)
        return _rules_read(rows[0] if rows else None)


@router.put(
    "/rules",
    response_model=RulesRead,
    responses=ERRORS,
    summary="Put new identity rules in force (a new version; workers use it from their next batch)",
)
def put_rules(request: Request, rt: Rt, principal: Admin, document: Annotated[dict[str, Any], Body()]) -> RulesRead:
    try:
        with rt.db.unit_of_work() as session:
            now = utcnow()
            service.set_rules(session, document, actor=f"token:{principal.token_id}", now=now)
            row = service.rules_history(session, limit=1)[0]
            record_audit(
                session,
                key=rt.signing,
                actor=actor_of(request, principal),
                action="identity.rules.set",
                target_type="identity_rules",
                target_id=str(row.version),
                details={"version": row.version},
                now=now,
            )
            return _rules_read(row)
    except RulesError as error:
        raise ApiError(422, "invalid_rules", str(error)) from None


def _entry(row: Merge, shown: dict[tuple[str, str], str]) -> HistoryEntry:
    return HistoryEntry(
        id=row.id,
        kind=row.kind,
        survivor_id=row.survivor_id,
        absorbed_id=row.absorbed_id,
        identity_type=row.identity_type,
        identity_value=shown.get((row.identity_type or "", row.identity_value or ""), row.identity_value),
        source_id=row.source_id,
        message_id=row.message_id,
        at=row.merged_at,
        actor=row.actor,
        undone_by=row.undone_by,
        details=row.details,
    )


@profiles.get(
    "/{ref}/merges",
    response_model=HistoryRead,
    responses=PROFILE_ERRORS,
    summary="The person's merges, unmerges and re-derivations, newest first",
)
def get_merges(
    ref: Ref,
    rt: Rt,
    _: HistoryReader,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    before: Annotated[int | None, Query(ge=1, le=2**62, description="Entries with a smaller id (paging)")] = None,
) -> HistoryRead:
    with rt.db.read() as session:
        profile = resolve_or_404(session, ref)
        rows = merges.history(session, profile, limit=limit, before=before)
        shown = reveal_keys(session, [(r.identity_type or "", r.identity_value or "") for r in rows])
        return HistoryRead(profile_id=profile.id, data=[_entry(r, shown) for r in rows])


@profiles.post(
    "/{ref}/unmerge",
    response_model=UnmergeRead,
    responses=PROFILE_WRITE_ERRORS,
    summary="Split a merge back into profiles with their own identifiers, traits and events",
)
async def post_unmerge(request: Request, ref: Ref, rt: Rt, principal: Steward, body: UnmergeRequest) -> UnmergeRead:
    who = actor_of(request, principal)

    def work() -> UnmergeRead:
        with rt.db.unit_of_work() as session:
            profile = resolve_or_404(session, ref)
            try:
                done = merges.unmerge(
                    session,
                    profile,
                    merge_id=body.merge_id,
                    actor=f"token:{principal.token_id}",
                    now=utcnow(),
                    lock_rows=rt.db.dialect == "postgresql",
                )
            except merges.UnmergeError as error:
                raise ApiError(error.status, error.code, str(error)) from None
            record_audit(
                session,
                key=rt.signing,
                actor=who,
                action="profile.unmerge",
                target_type="profile",
                target_id=profile.id,
                details={"merge_id": done.merge_id, "unmerge_id": done.unmerge_id, "profiles": list(done.profiles)},
            )
            return UnmergeRead(
                merge_id=done.merge_id,
                unmerge_id=done.unmerge_id,
                profiles=[
                    UnmergedProfile(id=pid, identities=merges.identity_rows(session, pid)) for pid in done.profiles
                ],
                moved_events=done.moved_events,
            )

    return await run_in_threadpool(work)


@router.post(
    "/match",
    response_model=MatchRead,
    responses=WRITE_ERRORS,
    summary="The profiles most like these traits, best first (probabilistic matching)",
)
async def post_match(request: Request, rt: Rt, principal: Matcher, body: MatchRequest) -> MatchRead:
    who = actor_of(request, principal)

    def work() -> MatchRead:
        with rt.db.unit_of_work() as session:
            try:
                model, found = linkage.match(
                    session, body.traits, limit=body.limit, min_probability=body.min_probability
                )
            except linkage.LinkageError as error:
                raise ApiError(error.status, error.code, str(error)) from None
            rules = service.current_rules(session)
            if found:  # a read of these people's data (their likeness to the traits); nobody found: no record
                record_audit(
                    session,
                    key=rt.signing,
                    actor=who,
                    action="identity.match",
                    details={"model_version": model.version, "candidates": [c.profile_id for c in found]},
                )
        return MatchRead(
            model_version=model.version,
            candidates=[
                MatchCandidate(
                    profile_id=c.profile_id,
                    probability=c.probability,
                    match_weight=c.match_weight,
                    decision="merge"
                    if c.probability > rules.auto_merge_above
                    else "review"
                    if c.probability > rules.review_above
                    else "ignore",
                    levels=c.levels,
                )
                for c in found
            ],
        )

    return await run_in_threadpool(work)


@router.get("/model", response_model=ModelRead, responses=WRITE_ERRORS, summary="The matching model in force")
def get_model(rt: Rt, _: RuleReader) -> ModelRead:
    with rt.db.read() as session:
        model = current_model(session)
        if model is None:
            raise ApiError(409, "no_model", "no matching model is trained yet; run `accord identity train`")
        return ModelRead.model_validate(linkage.model_summary(model))


def _review(row: MatchReview) -> ReviewRead:
    return ReviewRead.model_validate(row, from_attributes=True)


@router.get("/reviews", response_model=ReviewList, responses=ERRORS, summary="Matched pairs and their decisions")
def get_reviews(
    rt: Rt,
    _: ReviewReader,
    status: Annotated[
        str | None, Query(pattern="^(pending|accepted|rejected|merged|blocked|merging)$", description="Only these")
    ] = "pending",
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    before: Annotated[int | None, Query(ge=1, le=2**62, description="Entries with a smaller id (paging)")] = None,
) -> ReviewList:
    with rt.db.read() as session:
        return ReviewList(
            data=[_review(r) for r in linkage.reviews(session, status=status, limit=limit, before=before)]
        )


def _decide(rt: Runtime, who: Actor, review_id: int, reason: str, *, accept: bool) -> ReviewRead:
    decide = linkage.accept if accept else linkage.reject
    for attempt in range(DECISION_ATTEMPTS):
        try:
            with rt.db.unit_of_work() as session:
                now = utcnow()
                row = decide(
                    session,
                    review_id,
                    actor=f"token:{who.id}",
                    reason=reason,
                    now=now,
                    lock_rows=rt.db.dialect == "postgresql",
                )
                record_audit(
                    session,
                    key=rt.signing,
                    actor=who,
                    action="identity.review.accept" if accept else "identity.review.reject",
                    target_type="match_review",
                    target_id=str(row.id),
                    details={"left_id": row.left_id, "right_id": row.right_id, "message_id": row.message_id},
                    now=now,
                )
                return _review(row)
        except linkage.LinkageError as error:
            raise ApiError(error.status, error.code, str(error)) from None
        except (StaleRead, DBAPIError) as error:  # another merge took one of the profiles meanwhile: read again
            if isinstance(error, DBAPIError) and not conflicted(error):
                raise
            if attempt == DECISION_ATTEMPTS - 1:
                raise ApiError(409, "profile_changed", "the profiles changed meanwhile; try again") from None
            backoff(attempt, base=0.02)
    raise AssertionError("unreachable")


ReviewId = Annotated[int, Path(ge=1, le=2**62)]


@router.post(
    "/reviews/{review_id}/accept",
    response_model=ReviewRead,
    responses=WRITE_ERRORS,
    summary="Merge a reviewed pair, with the reason recorded",
)
async def post_accept(
    request: Request, review_id: ReviewId, rt: Rt, principal: Steward, body: DecisionRequest
) -> ReviewRead:
    return await run_in_threadpool(_decide, rt, actor_of(request, principal), review_id, body.reason, accept=True)


@router.post(
    "/reviews/{review_id}/reject",
    response_model=ReviewRead,
    responses=WRITE_ERRORS,
    summary="Record that a reviewed pair are different people",
)
async def post_reject(
    request: Request, review_id: ReviewId, rt: Rt, principal: Steward, body: DecisionRequest
) -> ReviewRead:
    return await run_in_threadpool(_decide, rt, actor_of(request, principal), review_id, body.reason, accept=False)
