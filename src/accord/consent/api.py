"""The consent REST API: catalogue, capture, state, history, receipts, enforcement and verification."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from accord.audit.service import record_audit
from accord.consent import catalogue, ledger, service
from accord.consent.models import Checkpoint, Notice
from accord.consent.schemas import (
    ChannelList,
    ChannelRead,
    ChannelWrite,
    CheckpointList,
    CheckpointRead,
    ConsentCreated,
    ConsentsRead,
    ConsentWrite,
    ContactableRead,
    HistoryRead,
    LinkRead,
    Name,
    NoticeList,
    NoticeRead,
    NoticeWrite,
    ProblemRead,
    PurposeList,
    PurposeRead,
    PurposeWrite,
    ReceiptRead,
    ReceiptsRead,
    RecordRead,
    RenewalRead,
    RenewalsRead,
    StateRead,
    VerifyRead,
)
from accord.db.base import utcnow
from accord.errors import PROFILE_ERRORS, PROFILE_WRITE_ERRORS, ApiError, documented
from accord.profiles.api import Ref, audit_read, resolve_or_404
from accord.profiles.models import Profile
from accord.runtime import Runtime, runtime
from accord.security.auth import Principal, actor_of, require_role
from accord.security.service import ROLES

profiles = APIRouter(prefix="/api/v1/profiles", tags=["consent"])
router = APIRouter(prefix="/api/v1/consent", tags=["consent"])
jwks = APIRouter(tags=["consent"])
Rt = Annotated[Runtime, Depends(runtime)]
Anyone = Annotated[Principal, Depends(require_role(*ROLES))]
Admin = Annotated[Principal, Depends(require_role("admin"))]
Recorder = Annotated[Principal, Depends(require_role("agent"))]
Reader = Annotated[Principal, Depends(require_role("analyst", "agent", "auditor"))]
Checker = Annotated[Principal, Depends(require_role("analyst", "agent"))]
Auditor = Annotated[Principal, Depends(require_role("auditor"))]
ERRORS = documented(400, 401, 403, 404, 422, 429)
WRITE_ERRORS = documented(400, 401, 403, 404, 409, 422, 429)
Key = Annotated[Name, Query(max_length=120)]


def _purpose(view: catalogue.PurposeView) -> PurposeRead:
    return PurposeRead(
        key=view.key,
        name=view.name,
        description=view.description,
        legal_basis=view.legal_basis,
        dpv=catalogue.LEGAL_BASES[view.legal_basis],
        expires_after_days=view.expires_after_days,
        channels=list(view.channels),
        version=view.version,
        builtin=view.builtin,
        created_at=view.created_at,
        updated_at=view.updated_at,
    )


def _notice(row: Notice) -> NoticeRead:
    return NoticeRead(
        key=row.key,
        version=row.version,
        language=row.language,
        title=row.title,
        text=row.text,
        purposes=row.purposes,
        url=row.url,
        sha256=row.sha256,
        created_at=row.created_at,
    )


def record_read(body: dict[str, Any], digest: str, evidence: dict[str, Any] | None) -> RecordRead:
    decoded = None
    if body.get("tcf"):
        try:
            decoded = service.tcf_summary(body["tcf"])
        except ValueError:
            decoded = None
    return RecordRead(
        id=body["id"],
        seq=body["seq"],
        prev=body["prev"],
        hash=digest,
        profile_id=body["profile_id"],
        purpose=body["purpose"],
        channel=body["channel"],
        status=body["status"],
        legal_basis=body["legal_basis"],
        method=body["method"],
        actor=body["actor"],
        notice=body.get("notice"),
        source=body.get("source"),
        occurred_at=body["occurred_at"],
        expires_at=body["expires_at"],
        recorded_at=body["recorded_at"],
        evidence_digest=body["evidence"],
        evidence=evidence,
        tcf=body.get("tcf"),
        tcf_decoded=decoded,
        confirms=body.get("confirms"),
    )


def _catalogue_error(error: catalogue.CatalogueError) -> ApiError:
    status = 409 if error.code == "builtin_purpose" else 422
    return ApiError(status, error.code, str(error))


@router.get("/purposes", response_model=PurposeList, responses=ERRORS, summary="The purposes in the catalogue")
def list_purposes(rt: Rt, _: Anyone) -> PurposeList:
    with rt.db.read() as session:
        return PurposeList(purposes=[_purpose(view) for view in catalogue.list_purposes(session)])


@router.put(
    "/purposes/{key}",
    response_model=PurposeRead,
    responses=WRITE_ERRORS,
    summary="Create or change a purpose (a change bumps its version)",
)
def put_purpose(
    request: Request, key: Annotated[str, Path(max_length=120)], body: PurposeWrite, rt: Rt, principal: Admin
) -> PurposeRead:
    try:
        with rt.db.unit_of_work() as session:
            view, created = catalogue.put_purpose(
                session,
                key=key,
                name=body.name,
                description=body.description,
                legal_basis=body.legal_basis,
                expires_after_days=body.expires_after_days,
                channels=body.channels,
                now=utcnow(),
            )
            record_audit(
                session,
                key=rt.signing,
                actor=actor_of(request, principal),
                action="consent.purpose.put",
                target_type="purpose",
                target_id=view.key,
                details={"version": view.version, "created": created, "legal_basis": view.legal_basis},
            )
    except catalogue.CatalogueError as error:
        raise _catalogue_error(error) from None
    except IntegrityError:
        raise ApiError(409, "conflict", "the purpose was changed at the same time; retry") from None
    return _purpose(view)


@router.get("/channels", response_model=ChannelList, responses=ERRORS, summary="Built-in and custom channels")
def list_channels(rt: Rt, _: Anyone) -> ChannelList:
    with rt.db.read() as session:
        rows = catalogue.list_channels(session)
    return ChannelList(channels=[ChannelRead(key=k, name=n, builtin=b) for k, n, b in rows])


@router.post(
    "/channels", response_model=ChannelRead, status_code=201, responses=WRITE_ERRORS, summary="Add a custom channel"
)
def add_channel(request: Request, body: ChannelWrite, rt: Rt, principal: Admin) -> ChannelRead:
    try:
        with rt.db.unit_of_work() as session:
            added = catalogue.add_channel(session, key=body.key, name=body.name, now=utcnow())
            if added:
                record_audit(
                    session,
                    key=rt.signing,
                    actor=actor_of(request, principal),
                    action="consent.channel.add",
                    target_type="channel",
                    target_id=body.key,
                )
    except catalogue.CatalogueError as error:
        raise _catalogue_error(error) from None
    except IntegrityError:
        added = False
    if not added:
        raise ApiError(409, "channel_exists", f"channel {body.key} exists already")
    return ChannelRead(key=body.key, name=body.name, builtin=False)


@router.get("/notices", response_model=NoticeList, responses=ERRORS, summary="Every version of every notice")
def list_notices(rt: Rt, _: Anyone) -> NoticeList:
    with rt.db.read() as session:
        return NoticeList(notices=[_notice(row) for row in catalogue.list_notices(session)])


@router.post(
    "/notices",
    response_model=NoticeRead,
    status_code=201,
    responses=WRITE_ERRORS,
    summary="Publish a new immutable version of a notice in one language",
)
def add_notice(request: Request, body: NoticeWrite, rt: Rt, principal: Admin) -> NoticeRead:
    try:
        with rt.db.unit_of_work() as session:
            row = catalogue.add_notice_version(
                session,
                key=body.key,
                language=body.language,
                title=body.title,
                text=body.text,
                purposes=body.purposes,
                url=body.url,
                now=utcnow(),
            )
            record_audit(
                session,
                key=rt.signing,
                actor=actor_of(request, principal),
                action="consent.notice.add",
                target_type="notice",
                target_id=row.key,
                details={"version": row.version, "language": row.language, "sha256": row.sha256},
            )
    except catalogue.CatalogueError as error:
        raise _catalogue_error(error) from None
    except IntegrityError:
        raise ApiError(
            409, "conflict", "another version of this notice was published at the same time; retry"
        ) from None
    return _notice(row)


@router.get(
    "/notices/{key}/{language}/{version}",
    response_model=NoticeRead,
    responses=ERRORS,
    summary="One version of a notice",
)
def get_notice(
    key: Annotated[str, Path(max_length=120)],
    language: Annotated[str, Path(max_length=20)],
    version: Annotated[int, Path(ge=1, lt=2**31)],
    rt: Rt,
    _: Anyone,
) -> NoticeRead:
    with rt.db.read() as session:
        row = catalogue.get_notice(session, key, version, language)
    if row is None:
        raise ApiError(404, "notice_not_found", "no such notice version")
    return _notice(row)


def _actor(principal: Principal) -> dict[str, Any]:
    return {"type": "agent" if principal.role == "agent" else "system", "id": principal.token_id}


@profiles.post(
    "/{ref}/consents",
    response_model=ConsentCreated,
    status_code=201,
    responses=PROFILE_WRITE_ERRORS,
    summary="Record a consent statement (agent or system); answers the record and its signed receipt",
)
def post_consent(request: Request, ref: Ref, body: ConsentWrite, rt: Rt, principal: Recorder) -> ConsentCreated:
    evidence = body.evidence.model_dump(exclude_none=True)
    evidence["recorded_by"] = principal.token_id
    double_opt_in = body.method == "double_opt_in" and body.status in service.GRANTING
    statement = service.Statement(
        purpose=body.purpose,
        channel=body.channel,
        status="pending" if double_opt_in else body.status,
        method=body.method,
        notice=service.NoticeRef(body.notice.key, body.notice.version, body.notice.language) if body.notice else None,
        occurred_at=body.occurred_at,
        expires_at=body.expires_at,
        evidence=evidence,
        tcf=body.tcf,
    )
    now = utcnow()
    if double_opt_in and statement.expires_at is None:
        statement.expires_at = now + timedelta(days=rt.settings.double_opt_in_days)
    try:
        with rt.db.unit_of_work() as session:
            profile = resolve_or_404(session, ref)
            (recorded,) = service.record(
                session,
                [(profile.id, statement)],
                actor=_actor(principal),
                key=rt.signing,
                settings=rt.settings,
                now=now,
            )
            record_audit(
                session,
                key=rt.signing,
                actor=actor_of(request, principal),
                action="consent.record",
                target_type="profile",
                target_id=profile.id,
                details={
                    "record_id": recorded.body["id"],
                    "purpose": recorded.body["purpose"],
                    "channel": recorded.body["channel"],
                    "status": recorded.body["status"],
                    "method": recorded.body["method"],
                },
                now=now,
            )
    except service.ConsentError as error:
        raise ApiError(error.status, error.code, str(error)) from None
    url = None
    if double_opt_in:
        token, _expires = service.link_token(
            rt.signing,
            profile_id=profile.id,
            now=now,
            days=rt.settings.double_opt_in_days,
            typ=service.CONFIRM_TYP,
            rid=recorded.body["id"],
        )
        url = f"{rt.settings.base_url()}/preferences/confirm?t={token}"
    return ConsentCreated(
        record=record_read(recorded.body, recorded.hash, recorded.evidence or None),
        receipt=recorded.receipt,
        confirmation_url=url,
    )


@profiles.get(
    "/{ref}/consents",
    response_model=ConsentsRead,
    responses=PROFILE_ERRORS,
    summary="Current consent per purpose and channel (merged profiles included)",
)
def get_consents(ref: Ref, rt: Rt, _: Reader) -> ConsentsRead:
    now = utcnow()
    with rt.db.read() as session:
        profile = resolve_or_404(session, ref)
        states = service.current(session, service.person_ids(session, profile.id))
    return ConsentsRead(
        profile_id=profile.id,
        consents=[
            StateRead(
                purpose=s.purpose,
                channel=s.channel,
                status=s.effective(now),
                recorded_status=s.status,
                record_id=s.record_id,
                occurred_at=s.occurred_at,
                expires_at=s.expires_at,
            )
            for _, s in sorted(states.items())
        ],
    )


@profiles.get(
    "/{ref}/consents/history",
    response_model=HistoryRead,
    responses=PROFILE_ERRORS,
    summary="Every consent record of the person, in ledger order",
)
async def get_history(
    request: Request,
    ref: Ref,
    rt: Rt,
    principal: Reader,
    after: Annotated[int, Query(ge=0, lt=2**63)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> HistoryRead:
    def read() -> tuple[Profile, list[tuple[dict[str, Any], str, dict[str, Any] | None]]]:
        with rt.db.read() as session:
            profile = resolve_or_404(session, ref)
            return profile, service.history(session, service.person_ids(session, profile.id), after=after, limit=limit)

    profile, rows = await run_in_threadpool(read)
    # The history holds the evidence (addresses, agents, references): a read of personal data.
    await audit_read(rt, request, principal, "profile.consents.read", profile.id, records=len(rows))
    records = [record_read(body, digest, evidence) for body, digest, evidence in rows]
    return HistoryRead(
        profile_id=profile.id,
        records=records,
        next_after=records[-1].seq if len(records) == limit else None,
    )


@profiles.get(
    "/{ref}/consents/receipts",
    response_model=ReceiptsRead,
    responses=PROFILE_ERRORS,
    summary="The person's signed consent receipts, newest first",
)
def get_receipts(ref: Ref, rt: Rt, _: Reader, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> ReceiptsRead:
    with rt.db.read() as session:
        profile = resolve_or_404(session, ref)
        rows = service.receipts_of(session, service.person_ids(session, profile.id), limit=limit)
    return ReceiptsRead(
        profile_id=profile.id,
        receipts=[
            ReceiptRead(record_id=r.record_id, profile_id=r.profile_id, created_at=r.created_at, receipt=r.jws)
            for r in rows
        ],
    )


@profiles.get(
    "/{ref}/contactable",
    response_model=ContactableRead,
    responses=PROFILE_ERRORS,
    summary="May we use this person's data for a purpose on a channel? Deny unless a valid basis exists",
)
def get_contactable(
    ref: Ref, purpose: Key, channel: Annotated[Name, Query(max_length=60)], rt: Rt, _: Checker
) -> ContactableRead:
    now = utcnow()
    with rt.db.read() as session:
        profile = resolve_or_404(session, ref)
        view = catalogue.get_purpose(session, purpose)
        if view is None:
            raise ApiError(404, "unknown_purpose", f"no purpose {purpose!r} in the catalogue")
        if not catalogue.channel_exists(session, channel):
            raise ApiError(404, "unknown_channel", f"no channel {channel!r}")
        decision = service.decide(view, channel, service.current(session, service.person_ids(session, profile.id)), now)
    return ContactableRead(
        allowed=decision.allowed,
        reason=decision.reason,
        purpose=purpose,
        channel=channel,
        legal_basis=decision.legal_basis,
        record_id=decision.record_id,
    )


@profiles.post(
    "/{ref}/preference-link",
    response_model=LinkRead,
    status_code=201,
    responses=PROFILE_ERRORS,
    summary="A signed, expiring preference-centre link for this person (to send them)",
)
def post_preference_link(request: Request, ref: Ref, rt: Rt, principal: Recorder) -> LinkRead:
    with rt.db.unit_of_work() as session:
        profile = resolve_or_404(session, ref)
        record_audit(
            session,
            key=rt.signing,
            actor=actor_of(request, principal),
            action="consent.preference_link",
            target_type="profile",
            target_id=profile.id,
        )
    token, expires = service.link_token(
        rt.signing, profile_id=profile.id, now=utcnow(), days=rt.settings.preference_link_days, typ=service.LINK_TYP
    )
    return LinkRead(url=f"{rt.settings.base_url()}/preferences?t={token}", expires_at=expires)


@router.get(
    "/verify",
    response_model=VerifyRead,
    responses=documented(401, 403, 429),
    summary="Walk the whole ledger: hashes, order, MACs, checkpoints, evidence; name the first bad record",
)
async def verify(rt: Rt, _: Auditor) -> VerifyRead:
    keys = None if rt.db.keyring is None else rt.db.keyring.provider
    report = await run_in_threadpool(ledger.verify, rt.db.engine, key=rt.signing, keys=keys)
    bad = report.first_bad
    return VerifyRead(
        ok=report.ok,
        records=report.records,
        checkpoints=report.checkpoints,
        evidence_checked=report.evidence_checked,
        head_seq=report.head_seq,
        head_hash=report.head_hash,
        first_bad=ProblemRead(seq=bad.seq, record_id=bad.record_id, problem=bad.problem) if bad else None,
    )


def _checkpoints(session: Session, limit: int) -> CheckpointList:
    rows = session.scalars(select(Checkpoint).order_by(Checkpoint.seq.desc()).limit(limit))
    return CheckpointList(
        checkpoints=[CheckpointRead(seq=r.seq, hash=r.hash, signed_at=r.signed_at, jws=r.jws) for r in rows]
    )


@router.get(
    "/checkpoints",
    response_model=CheckpointList,
    responses=documented(401, 403, 422, 429),
    summary="Signed checkpoints of the chain head, newest first (keep copies elsewhere)",
)
def list_checkpoints(rt: Rt, _: Auditor, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> CheckpointList:
    with rt.db.read() as session:
        return _checkpoints(session, limit)


@router.post(
    "/checkpoints",
    response_model=CheckpointList,
    status_code=201,
    responses=documented(401, 403, 429),
    summary="Sign a checkpoint of the chain head now (none when nothing changed since the last)",
)
def post_checkpoint(request: Request, rt: Rt, principal: Admin) -> CheckpointList:
    with rt.db.unit_of_work() as session:
        row = ledger.checkpoint(session, key=rt.signing, now=utcnow())
        if row is not None:
            record_audit(
                session,
                key=rt.signing,
                actor=actor_of(request, principal),
                action="consent.checkpoint",
                target_type="consent_ledger",
                details={"seq": row.seq},
            )
    if row is None:
        return CheckpointList(checkpoints=[])
    return CheckpointList(
        checkpoints=[CheckpointRead(seq=row.seq, hash=row.hash, signed_at=row.signed_at, jws=row.jws)]
    )


@router.get(
    "/renewals",
    response_model=RenewalsRead,
    responses=documented(401, 403, 422, 429),
    summary="Consents that lapse within `days` (or have lapsed), soonest first",
)
def list_renewals(
    rt: Rt,
    _: Checker,
    days: Annotated[int, Query(ge=0, le=3660)] = 30,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> RenewalsRead:
    with rt.db.read() as session:
        rows = service.renewals_due(session, before=utcnow() + timedelta(days=days), limit=limit)
    return RenewalsRead(
        renewals=[
            RenewalRead(
                profile_id=r.profile_id,
                purpose=r.purpose,
                channel=r.channel,
                status=r.status,
                record_id=r.record_id,
                expires_at=r.expires_at,
            )
            for r in rows
            if r.expires_at is not None
        ]
    )


@jwks.get(
    "/.well-known/jwks.json",
    summary="The public keys that verify consent receipts, checkpoints and links (public)",
)
def get_jwks(request: Request) -> dict[str, Any]:
    rt: Runtime = request.app.state.runtime
    return rt.signing.jwks()
