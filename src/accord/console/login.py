"""Logging in to and out of the console.

The login form carries its own CSRF token (a random value in a short-lived SameSite=Strict cookie that
the form must echo), so another site can neither log someone in under its own account nor try passwords
through a visitor's browser. Attempts are rate-limited per client address, and each account locks for a
growing time after repeated failures (accord.security.users).
"""

from __future__ import annotations

import hmac
import re
import secrets
from datetime import timedelta
from typing import Annotated
from urllib.parse import urljoin

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, Response

from accord.audit.service import Actor, record_audit
from accord.console import auth
from accord.console.render import page
from accord.db.base import utcnow
from accord.errors import ApiError
from accord.runtime import Runtime
from accord.security import users
from accord.security.oidc import LOGIN_PATH
from accord.security.users import Login

router = APIRouter(include_in_schema=False)
LOGIN_COOKIE = "accord_login"
SECURE_LOGIN_COOKIE = "__Host-accord_login"
_NEXT = re.compile(r"^/console(/[A-Za-z0-9_\-]+)*/?$")
Anyone = Annotated[Login, Depends(auth.require_login("analyst", "agent", "auditor"))]
_FAILED = "The email or password is wrong, or the account is locked for a while after repeated failures."


def _login_cookie(request: Request) -> str:
    return SECURE_LOGIN_COOKIE if auth.is_https(request) else LOGIN_COOKIE


def safe_next(target: str) -> str:
    """Only a console path of our own: never another site, never a query string."""
    return target if _NEXT.match(target) and len(target) <= 200 else "/console"


def login_form(
    request: Request, *, status: int = 200, error: str = "", email: str = "", next_path: str = ""
) -> Response:
    rt: Runtime = request.app.state.runtime
    token = secrets.token_urlsafe(32)
    response = page(
        "login.html",
        status=status,
        title="Log in",
        csrf=token,
        error=error,
        email=email,
        next_path=safe_next(next_path),
        oidc_name=rt.oidc.config.name if rt.oidc else "",
    )
    secure = auth.is_https(request)
    response.set_cookie(
        _login_cookie(request), token, max_age=3600, path="/", secure=secure, httponly=True, samesite="strict"
    )
    return response


@router.get("/console/login")
async def login_page(request: Request, next: str = "/console") -> Response:
    if await auth.current_login(request) is not None:
        return RedirectResponse(safe_next(next), status_code=303)
    return login_form(request, next_path=next)


@router.post("/console/login")
async def login(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    values = await auth.form(request)
    email = auth.field(values, "email", max_length=users.MAX_EMAIL)
    password = auth.field(values, "password", max_length=users.MAX_PASSWORD)
    next_path = auth.field(values, "next", max_length=200)
    sent = auth.field(values, "csrf", max_length=200)
    expected = request.cookies.get(_login_cookie(request), "")
    if (
        not auth.same_site(request)
        or not sent
        or not expected
        or not hmac.compare_digest(sent.encode(), expected.encode())
    ):
        return login_form(request, status=403, error="The form expired. Please try again.", email=email)
    client = request.client.host if request.client else "unknown"
    try:
        rt.limits.check("login", client)
    except ApiError as error:
        response = login_form(request, status=429, error="Too many attempts from here. Wait a minute.", email=email)
        response.headers.update(error.headers or {})
        return response
    now = utcnow()
    lifetime = timedelta(hours=rt.settings.console_session_hours)

    def attempt() -> users.StartedSession | None:
        with rt.db.unit_of_work() as session:
            user = users.authenticate(session, email=email, password=password, now=now)
            if user is None:
                started = None
                # Who tried is unknown (the email typed is not recorded: it may be anybody's); where from is.
                actor = Actor("anonymous", None, None, client[:64])
            else:
                started = users.start_session(session, user, now=now, lifetime=lifetime)
                actor = Actor("user", user.id, user.role, client[:64])
            action = "console.login" if started else "console.login_failed"
            record_audit(session, key=rt.signing, actor=actor, action=action, now=now)
            return started

    started = await run_in_threadpool(attempt)
    if started is None:
        return login_form(request, status=401, error=_FAILED, email=email, next_path=next_path)
    response = RedirectResponse(safe_next(next_path), status_code=303)
    auth.set_session_cookie(response, request, started.secret, int(lifetime.total_seconds()))
    response.delete_cookie(_login_cookie(request), path="/", secure=auth.is_https(request), httponly=True)
    return response


@router.post("/console/logout")
async def logout(
    request: Request, login: Annotated[Login, Depends(auth.require_login("analyst", "agent", "auditor"))]
) -> Response:
    rt: Runtime = request.app.state.runtime
    secret = auth.session_secret(request)
    actor = Actor("user", login.user_id, login.role, request.client.host[:64] if request.client else None)

    def end() -> str | None:
        with rt.db.unit_of_work() as session:
            id_token = users.end_session(session, secret)
            record_audit(session, key=rt.signing, actor=actor, action="console.logout")
            return id_token

    id_token = await run_in_threadpool(end)
    provider, at_provider = rt.oidc, None
    if id_token is not None and provider is not None:
        back = urljoin(auth.oidc_callback_url(request, rt, provider), LOGIN_PATH)
        at_provider = await provider.logout_url(id_token=id_token, post_logout_redirect=back)
    if provider is None or at_provider is None:
        response: Response = RedirectResponse("/console/login", status_code=303)
    else:
        # Signed out here; the provider's session ends on its page. A navigation from a page of ours, not a
        # redirect: the console's policy lets forms go to this site only (form-action 'self'), redirects
        # after a form included.
        response = page("signed_out.html", title="Signed out", oidc_name=provider.config.name, at_provider=at_provider)
        response.headers["cache-control"] = "no-store"  # it holds the ID token
    auth.clear_session_cookie(response, request)
    return response
