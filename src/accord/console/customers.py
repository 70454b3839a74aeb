"""Finding customers and the customer 360: identities, traits with their source, a live timeline, consents
with their history and receipts, merge history, notes; and the agent's actions on it.

Customers are found by POST, so no email, phone or name lands in a URL, a server log or the browser's
history; pages are addressed by the pseudonymous profile id, and no page title names a customer."""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, Response, StreamingResponse
from sqlalchemy.orm import Session

from accord.consent import catalogue, receipts
from accord.consent import service as consent
from accord.console import auth
from accord.console import service as console_service
from accord.console.render import ConsoleError, fragment, page
from accord.db.base import utcnow
from accord.identity import history as identity_history
from accord.profiles import service as profiles
from accord.profiles.models import Profile, ProfileEvent
from accord.profiles.private import profile_traits
from accord.runtime import Runtime
from accord.security.users import Login
from accord.segments import service as segment_service

router = APIRouter(include_in_schema=False)
Anyone = Annotated[Login, Depends(auth.require_login("analyst", "agent", "auditor"))]
Reader = Annotated[Login, Depends(auth.require_login("analyst", "agent"))]
ReceiptReader = Annotated[Login, Depends(auth.require_login("analyst", "agent", "auditor"))]
Agent = Annotated[Login, Depends(auth.require_login("agent"))]
Admin = Annotated[Login, Depends(auth.require_login())]
ProfileId = Annotated[str, Path(max_length=40, pattern=r"^[A-Za-z0-9_\-]+$")]
POLL_SECONDS = 0.25  # how often the live timeline looks for new events when no worker reports commits
MIN_GAP_SECONDS = 0.05  # and at most this often when one does (accord.pipeline.commits)
STREAM_SECONDS = 25.0  # then the browser reconnects (with Last-Event-ID), so no stream outlives a logout long
LOOKBACK_IDS = 1000  # on PostgreSQL ids can commit out of order; look back this far for ones not yet sent
DONE = {
    "consent": "Consent recorded. Its signed receipt is in the history below.",
    "trait": "Correction sent; it shows here as soon as the worker has applied it.",
    "note": "Note added.",
    "unmerge": "Merge undone: the profiles are apart again.",
}


def _rt(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def _is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


@router.get("/console")
async def home(request: Request, login: Anyone) -> Response:
    rt = _rt(request)

    def load() -> list[console_service.Found]:
        if login.role == "auditor":
            return []
        with rt.db.read() as session:
            return console_service.recently_viewed(session, user_id=login.user_id)

    recent = await run_in_threadpool(load)
    return page("home.html", title="Customers", login=login, recent=recent, results=None, query="")


@router.post("/console/search")
async def search(request: Request, login: Reader) -> Response:
    rt = _rt(request)
    query = auth.field(await auth.form(request), "q", max_length=console_service.MAX_QUERY)

    def load() -> tuple[list[console_service.Found], list[console_service.Found]]:
        with rt.db.read() as session:
            found = console_service.find_customers(session, query)
            recent = console_service.recently_viewed(session, user_id=login.user_id)
        if found:  # names and identifiers of these people are on the page now
            with rt.db.unit_of_work() as session:
                ids = [hit.profile_id for hit in found]
                auth.audit(session, request, login, "profile.search", None, None, profile_ids=ids)
        return found, recent

    results, recent = await run_in_threadpool(load)
    if _is_htmx(request):
        return page("_results.html", results=results, query=query)
    return page("home.html", title="Customers", login=login, recent=recent, results=results, query=query)


def _live_profile(session: Session, profile_id: str) -> Profile:
    profile = profiles.resolve(session, profile_id)
    if profile is None:
        raise ConsoleError(404, "No such customer", "No customer has this profile id (it may have been erased).")
    return profile


def event_view(event: ProfileEvent, source_names: dict[str, str]) -> dict[str, Any]:
    payload = event.payload
    details = {k: payload[k] for k in ("properties", "traits", "context") if payload.get(k)}
    label = event.event or payload.get("name") or ""
    if event.type == "identify" and not label:
        label = ", ".join(sorted(payload.get("traits") or {}))[:200]
    return {
        "id": event.id,
        "type": event.type,
        "label": label,
        "timestamp": event.timestamp,
        "source": source_names.get(event.source_id, event.source_id),
        "details": orjson.dumps(details, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode() if details else "",
    }


def _trait_rows(profile: Profile, traits: dict[str, Any], source_names: dict[str, str]) -> list[dict[str, Any]]:
    rows = []
    for name in sorted(traits):
        version = profile.trait_versions.get(name)
        parts = [p if isinstance(p, str) else None for p in version] if isinstance(version, list) else []
        parts += [None] * (4 - len(parts))
        value = traits[name]
        rows.append(
            {
                "name": name,
                "value": value if isinstance(value, str) else orjson.dumps(value).decode(),
                "at": parts[0],
                "source": source_names.get(parts[2] or "", parts[2] or ""),
                "run": parts[3],
            }
        )
    return rows


def customer_context(session: Session, profile: Profile, login: Login) -> dict[str, Any]:
    """Everything the 360 page shows, read in one transaction."""
    now = utcnow()
    names = console_service.source_names(session)
    ids = consent.person_ids(session, profile.id)
    states = consent.current(session, ids)
    history = consent.history(session, ids, limit=1000)
    receipted = {r.record_id for r in consent.receipts_of(session, ids, limit=1000)}
    timeline = profiles.timeline(session, profile.id, limit=50)
    purposes = catalogue.list_purposes(session)
    traits = profile_traits(session, profile)
    return {
        "profile": profile,
        "name": console_service.display_name(traits),
        "identities": profiles.identities(session, profile.id),
        "merged_ids": ids[1:],
        "traits": _trait_rows(profile, traits, names),
        "events": [event_view(e, names) for e in timeline.events],
        "more_events": timeline.next_cursor is not None,
        "newest_event_id": console_service.newest_event_id(session, profile.id),
        "consents": [
            {"state": s, "status": s.effective(now), "receipt": s.record_id in receipted}
            for _, s in sorted(states.items())
        ],
        "history": [
            {"body": body, "evidence": evidence, "receipt": body["id"] in receipted}
            for body, _digest, evidence in reversed(history)
        ],
        "purposes": [p for p in purposes if p.key != "iab_tcf"],
        "channels": catalogue.list_channels(session),
        "notices": catalogue.list_notices(session),
        "merges": identity_history.history(session, profile, limit=100),
        "notes": console_service.notes(session, ids),
        "segments": segment_service.profile_memberships(session, profile.id),
        "journeys": console_service.journey_positions(session, profile.id, now=now),
        "can_act": login.role in {"admin", "agent"},
        "can_unmerge": login.role == "admin",
    }


async def _customer_page(
    request: Request, login: Login, profile_id: str, *, status: int = 200, problem: str = "", done: str = ""
) -> Response:
    rt = _rt(request)

    def load() -> dict[str, Any] | str:
        with rt.db.read() as session:
            profile = _live_profile(session, profile_id)
            if profile.id != profile_id:
                return profile.id
            context = customer_context(session, profile, login)
        with rt.db.unit_of_work() as session:
            console_service.remember_view(session, user_id=login.user_id, profile_id=profile.id, now=utcnow())
            auth.audit(session, request, login, "profile.read", "profile", profile.id, via="console")
        return context

    loaded = await run_in_threadpool(load)
    if isinstance(loaded, str):  # merged into another profile since: show the person as they are now
        return RedirectResponse(f"/console/customers/{loaded}", status_code=303)
    return page(
        "customer.html",
        status=status,
        title="Customer 360",
        login=login,
        problem=problem,
        done=DONE.get(done, ""),
        **loaded,
    )


@router.get("/console/customers/{profile_id}")
async def customer(request: Request, profile_id: ProfileId, login: Reader, done: str = "") -> Response:
    return await _customer_page(request, login, profile_id, done=done[:20])


def _sse(event: str, data: str, event_id: int | None = None) -> str:
    lines = [f"event: {event}"] + [f"data: {line}" for line in data.splitlines() or [""]]
    if event_id is not None:
        lines.insert(0, f"id: {event_id}")
    return "\n".join(lines) + "\n\n"


@router.get("/console/customers/{profile_id}/live")
async def live(request: Request, profile_id: ProfileId, login: Reader, after: int = 0) -> Response:
    """Server-sent events: each new event of the profile as a timeline item, as soon as it is stored, and
    then its journey positions again."""
    rt = _rt(request)
    resume = request.headers.get("last-event-id", "")
    floor = int(resume) if resume.isdigit() and len(resume) < 19 else max(0, min(after, 2**62))

    def poll(cursor: int, sent: set[int]) -> tuple[list[tuple[int, str]], str | None, str | None]:
        """New timeline items, where the profile went if it was merged away, and (after new events, which
        commit with their journey changes) the journey positions again."""
        with rt.db.read() as session:
            profile = profiles.resolve(session, profile_id)
            if profile is None or profile.id != profile_id:
                return [], profile.id if profile is not None else "", None
            rows = console_service.events_since(session, profile_id, after=max(floor, cursor - LOOKBACK_IDS))
            fresh = [row for row in rows if row.id not in sent]
            names = console_service.source_names(session) if fresh else {}
            positions = console_service.journey_positions(session, profile_id, now=utcnow()) if fresh else None
        items = [(row.id, fragment("_event.html", event=event_view(row, names), new=True)) for row in fresh]
        return items, None, None if positions is None else fragment("_journeys.html", journeys=positions)

    async def stream() -> AsyncIterator[str]:
        yield "retry: 1000\n\n"
        yield _sse("status", fragment("_live.html"))
        cursor, sent = floor, set[int]()
        started = time.monotonic()
        while time.monotonic() - started < STREAM_SECONDS:
            seen, polled = rt.commits.count, time.monotonic()
            items, moved, journeys = await run_in_threadpool(poll, cursor, sent)
            if moved is not None:
                yield _sse("status", fragment("_moved.html", survivor=moved))
                return
            for event_id, html in items:
                sent.add(event_id)
                cursor = max(cursor, event_id)
                yield _sse("timeline", html, cursor)
            if journeys is not None:
                yield _sse("journeys", journeys)
            if len(sent) > 10 * LOOKBACK_IDS:
                sent = {i for i in sent if i > cursor - LOOKBACK_IDS}
            await rt.commits.next_poll(seen, polled, every=POLL_SECONDS, min_gap=MIN_GAP_SECONDS)
        if await auth.current_login(request) is None:
            yield _sse("status", fragment("_ended.html"))

    return StreamingResponse(
        stream(), media_type="text/event-stream", headers={"cache-control": "no-store", "x-accel-buffering": "no"}
    )


def _notice_ref(value: str) -> consent.NoticeRef | None:
    """`key|language|version` from the form's notice choice."""
    key, language, version = ([*value.split("|"), "", ""])[:3]
    if not value:
        return None
    if not version.isdigit() or len(version) > 9:
        raise ConsoleError(422, "Unknown notice", "Choose a notice from the list.")
    return consent.NoticeRef(key, int(version), language)


def _moment(text: str) -> datetime | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ConsoleError(422, "Not a time", "Give the time as YYYY-MM-DDTHH:MM.") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=utcnow().tzinfo)


@router.post("/console/customers/{profile_id}/consents")
async def record_consent(request: Request, profile_id: ProfileId, login: Agent) -> Response:
    """An agent records what the person said on the phone or wrote on a form, with its evidence, through
    the consent service the REST API uses: same checks, same ledger, same signed receipt."""
    rt = _rt(request)
    values = await auth.form(request)
    method = auth.field(values, "method", max_length=20)
    if method not in consent.EVIDENCED_METHODS:
        raise ConsoleError(422, "Unknown method", "Choose how the person told you: on the phone or on a form.")
    evidence = {
        "reference": auth.field(values, "reference", max_length=1000).strip(),
        "note": auth.field(values, "note", max_length=2000).strip() or None,
        "recorded_by": login.user_id,
        "agent": login.email,
    }
    statement = consent.Statement(
        purpose=auth.field(values, "purpose", max_length=120),
        channel=auth.field(values, "channel", max_length=60),
        status=auth.field(values, "status", max_length=20),
        method=method,
        notice=_notice_ref(auth.field(values, "notice", max_length=200)),
        occurred_at=_moment(auth.field(values, "occurred_at", max_length=40)),
        evidence=evidence,
    )
    if statement.status not in {"given", "refused", "withdrawn"}:
        raise ConsoleError(422, "Unknown answer", "Choose whether the person gave, refused or withdrew consent.")

    def run() -> None:
        with rt.db.unit_of_work() as session:
            profile = _live_profile(session, profile_id)
            (recorded,) = consent.record(
                session,
                [(profile.id, statement)],
                actor={"type": "agent", "id": login.user_id},
                key=rt.signing,
                settings=rt.settings,
                now=utcnow(),
            )
            body = recorded.body
            auth.audit(
                session,
                request,
                login,
                "consent.record",
                "profile",
                profile.id,
                **{k: body[k] for k in ("purpose", "channel", "status", "method")},
                record_id=body["id"],
            )

    try:
        await run_in_threadpool(run)
    except consent.ConsentError as error:
        return await _customer_page(request, login, profile_id, status=error.status, problem=str(error))
    return RedirectResponse(f"/console/customers/{profile_id}?done=consent#consents", status_code=303)


@router.post("/console/customers/{profile_id}/traits")
async def correct_trait(request: Request, profile_id: ProfileId, login: Agent) -> Response:
    """A correction is an identify event in the event log, so it is applied, ordered and replayed like any."""
    rt = _rt(request)
    values = await auth.form(request)
    name = auth.field(values, "name", max_length=100).strip()
    value = auth.field(values, "value", max_length=2000)
    clear = auth.field(values, "clear", max_length=10) == "yes"

    def run() -> None:
        with rt.db.unit_of_work() as session:
            profile = _live_profile(session, profile_id)
            record = console_service.trait_correction(
                session,
                profile_id=profile.id,
                name=name,
                value=None if clear else value,
                user_id=login.user_id,
                now=utcnow(),
            )
            message_id = record.events[0]["messageId"]
            auth.audit(
                session,
                request,
                login,
                "profile.trait.correct",
                "profile",
                profile.id,
                trait=name,
                message_id=message_id,
            )
        rt.log.append(record)

    try:
        await run_in_threadpool(run)
    except console_service.CorrectionError as error:
        return await _customer_page(request, login, profile_id, status=422, problem=str(error))
    return RedirectResponse(f"/console/customers/{profile_id}?done=trait#traits", status_code=303)


@router.post("/console/customers/{profile_id}/notes")
async def add_note(request: Request, profile_id: ProfileId, login: Agent) -> Response:
    rt = _rt(request)
    text = auth.field(await auth.form(request), "text", max_length=console_service.MAX_NOTE)

    def run() -> None:
        with rt.db.unit_of_work() as session:
            profile = _live_profile(session, profile_id)
            note = console_service.add_note(
                session,
                profile_id=profile.id,
                author_id=login.user_id,
                author_email=login.email,
                text=text,
                now=utcnow(),
            )
            auth.audit(session, request, login, "profile.note.add", "profile", profile.id, note_id=note.id)

    try:
        await run_in_threadpool(run)
    except ValueError as error:
        return await _customer_page(request, login, profile_id, status=422, problem=str(error))
    return RedirectResponse(f"/console/customers/{profile_id}?done=note#notes", status_code=303)


@router.post("/console/customers/{profile_id}/unmerge")
async def unmerge(request: Request, profile_id: ProfileId, login: Admin) -> Response:
    rt = _rt(request)
    merge_id = auth.field(await auth.form(request), "merge_id", max_length=19)
    if not merge_id.isdigit() or int(merge_id) < 1:
        raise ConsoleError(422, "No such merge", "Choose a merge from the history.")

    def run() -> None:
        with rt.db.unit_of_work() as session:
            profile = _live_profile(session, profile_id)
            done = identity_history.unmerge(
                session,
                profile,
                merge_id=int(merge_id),
                actor=f"console:{login.user_id}",
                now=utcnow(),
                lock_rows=rt.db.dialect == "postgresql",
            )
            auth.audit(
                session,
                request,
                login,
                "profile.unmerge",
                "profile",
                profile.id,
                merge_id=done.merge_id,
                unmerge_id=done.unmerge_id,
                profiles=list(done.profiles),
            )

    try:
        await run_in_threadpool(run)
    except identity_history.UnmergeError as error:
        return await _customer_page(request, login, profile_id, status=error.status, problem=str(error))
    return RedirectResponse(f"/console/customers/{profile_id}?done=unmerge#merges", status_code=303)


@router.get("/console/customers/{profile_id}/receipts/{record_id}")
async def receipt(
    request: Request,
    profile_id: ProfileId,
    record_id: Annotated[str, Path(max_length=40, pattern=r"^[A-Za-z0-9\-]+$")],
    login: ReceiptReader,
) -> Response:
    """One signed receipt: the compact JWS, what it says, and whether Accord's key verifies it."""
    rt = _rt(request)

    def load() -> str | None:
        with rt.db.read() as session:
            profile = _live_profile(session, profile_id)
            ids = consent.person_ids(session, profile.id)
            found = consent.receipt_of(session, ids, record_id)
        if found is not None:
            with rt.db.unit_of_work() as session:
                auth.audit(session, request, login, "profile.consents.read", "profile", profile.id, record_id=record_id)
        return found.jws if found else None

    token = await run_in_threadpool(load)
    if token is None:
        raise ConsoleError(404, "No such receipt", "This customer has no receipt with this id.")
    payload = rt.signing.verify(token, typ=receipts.RECEIPT_TYP)
    header_part = token.split(".", 1)[0]
    header = orjson.loads(_b64(header_part))
    return page(
        "receipt.html",
        title="Consent receipt",
        login=login,
        profile_id=profile_id,
        record_id=record_id,
        token=token,
        header=orjson.dumps(header, option=orjson.OPT_INDENT_2).decode(),
        payload=orjson.dumps(payload, option=orjson.OPT_INDENT_2).decode() if payload else "",
        valid=payload is not None,
        kid=rt.signing.kid,
    )


def _b64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
