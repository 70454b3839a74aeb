"""Configuration pages, for admins only: sources and write keys, users and API tokens, consent purposes,
channels and notices. Each form calls the service the CLI and the REST API call, and validates through
the REST API's own schemas where there is one. Secrets (a write key, a token) are shown once, in the page
that answers the form, never in a URL."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, Response
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from accord.consent import catalogue
from accord.consent.schemas import ChannelWrite, NoticeWrite, PurposeWrite
from accord.console import auth
from accord.console.render import ConsoleError, page
from accord.db.base import utcnow
from accord.runtime import Runtime
from accord.security import service as tokens
from accord.security import users
from accord.security.users import Login
from accord.sources import service as sources

router = APIRouter(include_in_schema=False)
Admin = Annotated[Login, Depends(auth.require_login())]
Id = Annotated[str, Path(max_length=40, pattern=r"^[A-Za-z0-9_\-]+$")]
DONE = {
    "source": "Source changed.",
    "user": "User changed.",
    "token": "Token revoked.",
    "purpose": "Purpose saved.",
    "channel": "Channel added.",
    "notice": "Notice version published.",
}


def _rt(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def _invalid(error: ValidationError) -> ConsoleError:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first.get("loc", ()))
    return ConsoleError(422, "Not saved", f"{where}: {first.get('msg', 'invalid')}")


async def _run(request: Request, work: Callable[[Session], Any]) -> Any:
    """`work` in one unit of work; the services' refusals become a 422 page that says why."""
    rt = _rt(request)

    def run() -> Any:
        with rt.db.unit_of_work() as session:
            return work(session)

    try:
        return await run_in_threadpool(run)
    except (users.UserError, catalogue.CatalogueError, sources.SourceExists, sources.SourceNotFound) as error:
        raise ConsoleError(422, "Not saved", str(error)) from None
    except ValueError as error:  # the sources service's own checks
        raise ConsoleError(422, "Not saved", str(error)) from None
    except IntegrityError:
        raise ConsoleError(409, "Not saved", "Someone changed this at the same time; reload and retry.") from None


@router.get("/console/admin")
async def overview(login: Admin) -> Response:
    return page("admin.html", title="Configuration", login=login, section="admin")


# -- sources ---------------------------------------------------------------------------------------------


async def _sources_page(request: Request, login: Login, **extra: Any) -> Response:
    rt = _rt(request)

    def load() -> list[Any]:
        with rt.db.read() as session:
            return list(sources.list_sources(session))

    return page(
        "admin_sources.html",
        title="Sources",
        login=login,
        section="admin",
        sources=await run_in_threadpool(load),
        **extra,
    )


@router.get("/console/admin/sources")
async def sources_page(request: Request, login: Admin, done: str = "") -> Response:
    return await _sources_page(request, login, done=DONE.get(done[:20], ""))


@router.post("/console/admin/sources")
async def create_source(request: Request, login: Admin) -> Response:
    name = auth.field(await auth.form(request), "name", max_length=200)

    def create(session: Session) -> sources.CreatedSource:
        created = sources.create_source(session, name=name)
        auth.audit(session, request, login, "source.create", "source", created.id, name=created.name)
        return created

    created = await _run(request, create)
    return await _sources_page(request, login, created=created)


@router.post("/console/admin/sources/{source_id}")
async def change_source(request: Request, source_id: Id, login: Admin) -> Response:
    enabled = auth.field(await auth.form(request), "enabled", max_length=5) == "yes"

    def change(session: Session) -> None:
        found = [s for s in sources.list_sources(session) if s.id == source_id]
        if not found:
            raise ConsoleError(404, "No such source", "This source does not exist.")
        sources.set_enabled(session, name=found[0].name, enabled=enabled)
        auth.audit(session, request, login, "source.enable" if enabled else "source.disable", "source", source_id)

    await _run(request, change)
    return RedirectResponse("/console/admin/sources?done=source", status_code=303)


# -- users and tokens ------------------------------------------------------------------------------------


async def _people_page(request: Request, login: Login, *, status: int = 200, **extra: Any) -> Response:
    rt = _rt(request)

    def load() -> tuple[list[Any], list[Any]]:
        with rt.db.read() as session:
            return list(users.list_users(session)), list(tokens.list_tokens(session))

    people, api_tokens = await run_in_threadpool(load)
    return page(
        "admin_users.html",
        status=status,
        title="Users and tokens",
        login=login,
        section="admin",
        users=people,
        tokens=api_tokens,
        roles=tokens.ROLES,
        now=utcnow(),
        **extra,
    )


@router.get("/console/admin/users")
async def users_page(request: Request, login: Admin, done: str = "") -> Response:
    return await _people_page(request, login, done=DONE.get(done[:20], ""))


@router.post("/console/admin/users")
async def create_user(request: Request, login: Admin) -> Response:
    values = await auth.form(request)
    email = auth.field(values, "email", max_length=users.MAX_EMAIL)
    role = auth.field(values, "role", max_length=20)
    password = auth.field(values, "password", max_length=users.MAX_PASSWORD)

    def create(session: Session) -> None:
        user = users.create_user(session, email=email, role=role, password=password, now=utcnow())
        auth.audit(session, request, login, "user.create", "user", user.id, role=user.role)

    await _run(request, create)
    return RedirectResponse("/console/admin/users?done=user", status_code=303)


@router.post("/console/admin/users/{user_id}")
async def change_user(request: Request, user_id: Id, login: Admin) -> Response:
    values = await auth.form(request)
    action = auth.field(values, "action", max_length=20)
    role = auth.field(values, "role", max_length=20)
    if user_id == login.user_id:
        raise ConsoleError(409, "Not on yourself", "Ask another admin to disable you or change your role.")

    def change(session: Session) -> None:
        user = users.get_user(session, user_id)
        if user is None:
            raise ConsoleError(404, "No such user", "This user does not exist.")
        if action in {"disable", "enable"}:
            users.set_disabled(session, email=user.email, disabled=action == "disable", now=utcnow())
            auth.audit(session, request, login, f"user.{action}", "user", user.id, role=user.role)
        elif action == "role":
            users.set_role(session, email=user.email, role=role)
            auth.audit(session, request, login, "user.set_role", "user", user.id, role=role)
        else:
            raise ConsoleError(422, "Unknown action", "Disable, enable or change the role.")

    await _run(request, change)
    return RedirectResponse("/console/admin/users?done=user", status_code=303)


@router.post("/console/admin/tokens")
async def create_token(request: Request, login: Admin) -> Response:
    values = await auth.form(request)
    role = auth.field(values, "role", max_length=20)
    description = auth.field(values, "description", max_length=200)
    days = auth.field(values, "expires_days", max_length=5)
    if days and (not days.isdigit() or not 1 <= int(days) <= 3650):
        raise ConsoleError(422, "Not saved", "Expiry is a number of days from 1 to 3650, or empty for never.")
    expires = timedelta(days=int(days)) if days else None

    def create(session: Session) -> tokens.CreatedToken:
        made = tokens.create_token(session, role=role, description=description, expires_in=expires)
        expires_at = made.expires_at.isoformat() if made.expires_at else None
        auth.audit(session, request, login, "token.create", "token", made.id, role=made.role, expires_at=expires_at)
        return made

    created = await _run(request, create)
    return await _people_page(request, login, status=201, created_token=created)


@router.post("/console/admin/tokens/{token_id}/revoke")
async def revoke_token(request: Request, token_id: Id, login: Admin) -> Response:
    def revoke(session: Session) -> None:
        try:
            tokens.revoke_token(session, token_id=token_id)
        except tokens.TokenNotFound:
            raise ConsoleError(404, "No such token", "This token does not exist.") from None
        auth.audit(session, request, login, "token.revoke", "token", token_id)

    await _run(request, revoke)
    return RedirectResponse("/console/admin/users?done=token", status_code=303)


# -- consent catalogue -----------------------------------------------------------------------------------


@router.get("/console/admin/consent")
async def consent_page(request: Request, login: Admin, done: str = "") -> Response:
    rt = _rt(request)

    def load() -> dict[str, Any]:
        with rt.db.read() as session:
            return {
                "purposes": catalogue.list_purposes(session),
                "channels": catalogue.list_channels(session),
                "notices": catalogue.list_notices(session),
            }

    return page(
        "admin_consent.html",
        title="Consent purposes and notices",
        login=login,
        section="admin",
        legal_bases=catalogue.LEGAL_BASES,
        done=DONE.get(done[:20], ""),
        **await run_in_threadpool(load),
    )


def _lines(text: str) -> list[str]:
    return [part.strip() for part in text.replace(",", "\n").splitlines() if part.strip()]


@router.post("/console/admin/consent/purposes")
async def put_purpose(request: Request, login: Admin) -> Response:
    values = await auth.form(request)
    key = auth.field(values, "key", max_length=120).strip()
    days = auth.field(values, "expires_after_days", max_length=10).strip()
    try:
        body = PurposeWrite.model_validate(
            {
                "name": auth.field(values, "name", max_length=200).strip(),
                "description": auth.field(values, "description", max_length=5000).strip(),
                "legal_basis": auth.field(values, "legal_basis", max_length=40),
                "expires_after_days": days or None,
                "channels": _lines(auth.field(values, "channels", max_length=3000)),
            }
        )
    except ValidationError as error:
        raise _invalid(error) from None

    def put(session: Session) -> None:
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
        details = {"version": view.version, "created": created, "legal_basis": view.legal_basis}
        auth.audit(session, request, login, "consent.purpose.put", "purpose", view.key, **details)

    await _run(request, put)
    return RedirectResponse("/console/admin/consent?done=purpose", status_code=303)


@router.post("/console/admin/consent/channels")
async def add_channel(request: Request, login: Admin) -> Response:
    values = await auth.form(request)
    try:
        body = ChannelWrite(
            key=auth.field(values, "key", max_length=60).strip(),
            name=auth.field(values, "name", max_length=200).strip(),
        )
    except ValidationError as error:
        raise _invalid(error) from None

    def add(session: Session) -> bool:
        added = catalogue.add_channel(session, key=body.key, name=body.name, now=utcnow())
        if added:
            auth.audit(session, request, login, "consent.channel.add", "channel", body.key)
        return added

    added = await _run(request, add)
    if not added:
        raise ConsoleError(409, "Not saved", f"The channel {body.key} exists already.")
    return RedirectResponse("/console/admin/consent?done=channel", status_code=303)


@router.post("/console/admin/consent/notices")
async def add_notice(request: Request, login: Admin) -> Response:
    values = await auth.form(request)
    try:
        body = NoticeWrite(
            key=auth.field(values, "key", max_length=120).strip(),
            language=auth.field(values, "language", max_length=20).strip() or "en",
            title=auth.field(values, "title", max_length=300).strip(),
            text=auth.field(values, "text", max_length=200_000).strip(),
            purposes=_lines(auth.field(values, "purposes", max_length=5000)),
            url=auth.field(values, "url", max_length=1000).strip() or None,
        )
    except ValidationError as error:
        raise _invalid(error) from None

    def publish(session: Session) -> None:
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
        details = {"version": row.version, "language": row.language, "sha256": row.sha256}
        auth.audit(session, request, login, "consent.notice.add", "notice", row.key, **details)

    await _run(request, publish)
    return RedirectResponse("/console/admin/consent?done=notice", status_code=303)
