"""The preference centre: a page reached through a signed, expiring link, where a person sees and changes
their consents per purpose and channel, with no login. The link names the profile; nothing in the page
or the form can name another one. Double opt-in confirmations land here too."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy import select
from sqlalchemy.orm import Session

from accord.consent import catalogue, service
from accord.consent.models import Notice
from accord.db.base import utcnow
from accord.profiles.models import Profile
from accord.profiles.service import resolve
from accord.runtime import Runtime

# Pages for people, not API routes: outside the OpenAPI schema (docs/consent.md describes them).
router = APIRouter(tags=["preference centre"], include_in_schema=False)
_templates = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"), autoescape=select_autoescape(["html"])
)
# The page needs its own inline styles and posts to itself; nothing else.
_CSP = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
MAX_FORM_BYTES = 64 * 1024


def _page(name: str, status: int = 200, **context: Any) -> HTMLResponse:
    context.setdefault("language", "en")
    html = _templates.get_template(name).render(**context)
    return HTMLResponse(html, status_code=status, headers={"content-security-policy": _CSP})


def _refused() -> HTMLResponse:
    return _page(
        "message.html",
        403,
        title="This link does not work",
        kind="problem",
        message="The link is not valid or has expired. Ask us for a new one.",
    )


def _language(request: Request) -> str:
    first = request.headers.get("accept-language", "en").split(",")[0].split(";")[0].strip()
    return first[:20] or "en"


def _latest_notice(session: Session, purpose: str, language: str) -> Notice | None:
    """The newest notice version covering `purpose`, in the reader's language if there is one."""
    rows = [n for n in session.scalars(select(Notice).order_by(Notice.version.desc())) if catalogue.covers(n, purpose)]
    base = language.split("-")[0]
    for wanted in (language, base, "en"):
        for notice in rows:
            if notice.language == wanted:
                return notice
    return rows[0] if rows else None


def _choices(session: Session, profile: Profile, language: str) -> list[dict[str, Any]]:
    now = utcnow()
    states = service.current(session, service.person_ids(session, profile.id))
    names = {key: name for key, name, _ in catalogue.list_channels(session)}
    purposes = []
    for view in catalogue.list_purposes(session):
        if view.legal_basis != "consent" or view.key == "iab_tcf":
            continue
        notice = _latest_notice(session, view.key, language)
        choices = [
            {
                "field": f"{view.key}|{channel}",
                "purpose": view.key,
                "channel": channel,
                "channel_name": names.get(channel, channel),
                "allowed": service.decide(view, channel, states, now).allowed,
            }
            for channel in (view.channels or ("all",))
        ]
        purposes.append(
            {
                "key": view.key,
                "name": view.name,
                "description": view.description,
                "notice": notice,
                "view": view,
                "choices": choices,
            }
        )
    return purposes


def _profile(session: Session, claims: dict[str, Any]) -> Profile | None:
    return resolve(session, str(claims["sub"]))


async def _form(request: Request) -> dict[str, list[str]]:
    raw = await request.body()
    if len(raw) > MAX_FORM_BYTES:
        return {}
    return parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=1000)


def _evidence(request: Request, claims: dict[str, Any]) -> dict[str, Any]:
    return {
        "ip": request.client.host if request.client else None,
        "user_agent": request.headers.get("user-agent", "")[:1000] or None,
        "link": claims.get("jti"),
    }


def _gpc(request: Request) -> bool:
    return request.headers.get("sec-gpc", "").strip() == "1"


@router.get("/preferences", response_class=HTMLResponse, summary="The preference centre (signed link)")
async def preferences_page(request: Request, t: str = "", saved: int = 0) -> Response:
    rt: Runtime = request.app.state.runtime
    claims = service.read_link(rt.signing, t, typ=service.LINK_TYP, now=utcnow())
    if claims is None:
        return _refused()
    language = _language(request)

    def load() -> list[dict[str, Any]] | None:
        with rt.db.read() as session:
            profile = _profile(session, claims)
            return None if profile is None else _choices(session, profile, language)

    purposes = await run_in_threadpool(load)
    if purposes is None:
        return _refused()
    expires = datetime.fromtimestamp(claims["exp"], UTC).strftime("%Y-%m-%d")
    return _page(
        "preferences.html",
        title="Your privacy choices",
        token=t,
        purposes=purposes,
        saved=bool(saved),
        gpc=_gpc(request),
        expires=expires,
    )


@router.post("/preferences", response_class=HTMLResponse, summary="Save choices from the preference centre")
async def preferences_save(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    form = await _form(request)
    token = (form.get("t") or [""])[0]
    claims = service.read_link(rt.signing, token, typ=service.LINK_TYP, now=utcnow())
    if claims is None:
        return _refused()
    wanted = set(form.get("consent", []))
    shown = set(form.get("shown", []))
    language = _language(request)
    evidence = _evidence(request, claims)
    gpc = _gpc(request)

    def save() -> bool:
        now = utcnow()
        with rt.db.unit_of_work() as session:
            profile = _profile(session, claims)
            if profile is None:
                return False
            statements = []
            for purpose in _choices(session, profile, language):
                for choice in purpose["choices"]:
                    if choice["field"] not in shown:
                        continue  # only what the page showed: a forged field name changes nothing
                    want = choice["field"] in wanted
                    if want == choice["allowed"]:
                        continue
                    notice = purpose["notice"]
                    if want and notice is None:
                        continue
                    statements.append(
                        service.Statement(
                            purpose=choice["purpose"],
                            channel=choice["channel"],
                            status="given" if want else "withdrawn",
                            method="preference_centre",
                            notice=service.NoticeRef(notice.key, notice.version, notice.language) if want else None,
                            evidence=evidence,
                        )
                    )
            if gpc and not service.sale_refused(session, service.person_ids(session, profile.id)):
                statements.append(
                    service.Statement(
                        purpose="sale_sharing",
                        channel="all",
                        status="refused",
                        method="gpc",
                        evidence={**evidence, "signal": "Sec-GPC: 1"},
                    )
                )
            service.record(
                session,
                [(profile.id, statement) for statement in statements],
                actor={"type": "customer", "id": None},
                key=rt.signing,
                settings=rt.settings,
                now=now,
            )
        return True

    if not await run_in_threadpool(save):
        return _refused()
    return RedirectResponse(f"/preferences?t={token}&saved=1", status_code=303)


@router.get("/preferences/confirm", response_class=HTMLResponse, summary="Double opt-in: the confirmation page")
async def confirm_page(request: Request, t: str = "") -> Response:
    rt: Runtime = request.app.state.runtime
    if service.read_link(rt.signing, t, typ=service.CONFIRM_TYP, now=utcnow()) is None:
        return _refused()
    # A GET changes nothing: mail scanners open links. The button posts.
    return _page(
        "message.html",
        title="Confirm your choice",
        kind="note",
        message="Please confirm that you agree to be contacted as you asked.",
        confirm_token=t,
    )


@router.post("/preferences/confirm", response_class=HTMLResponse, summary="Double opt-in: confirm")
async def confirm(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    form = await _form(request)
    token = (form.get("t") or [""])[0]
    claims = service.read_link(rt.signing, token, typ=service.CONFIRM_TYP, now=utcnow())
    if claims is None or not isinstance(claims.get("rid"), str):
        return _refused()
    evidence = _evidence(request, claims)

    def run() -> str:
        with rt.db.unit_of_work() as session:
            return service.confirm_double_opt_in(
                session,
                profile_id=str(claims["sub"]),
                record_id=str(claims["rid"]),
                evidence=evidence,
                key=rt.signing,
                settings=rt.settings,
                now=utcnow(),
            )

    outcome = await run_in_threadpool(run)
    messages = {
        "confirmed": ("Thank you", "saved", "Your consent is confirmed. You can change it at any time."),
        "already": ("Already confirmed", "saved", "This consent was confirmed before; nothing changed."),
        "superseded": ("Nothing to confirm", "problem", "This request was replaced by a later choice of yours."),
    }
    title, kind, message = messages[outcome]
    return _page("message.html", title=title, kind=kind, message=message)
