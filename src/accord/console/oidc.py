"""Logging in to the console through the OpenID Connect provider (when ACCORD_OIDC_ISSUER is set).

`/console/login/oidc` begins a sign-in: fresh state, nonce and PKCE verifier, remembered server-side and
bound to this browser by a random secret in a short-lived cookie, then a redirect to the provider. The
provider sends the browser back to `/console/login/oidc/callback`, which takes the remembered sign-in
(once), exchanges the code and checks the ID token (accord.security.oidc), maps the provider's claim to a
role, finds or creates the user by issuer and `sub`, and starts a console session. Success and failure are
audited like a password login, with the reason of a failure and never who the provider said it was.

The browser cookie is SameSite=Lax: the provider's redirect back is a cross-site navigation, on which a
Strict cookie would not be sent.
"""

from __future__ import annotations

import secrets
from datetime import timedelta

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, Response

from accord.audit.service import Actor, record_audit
from accord.console import auth
from accord.console.login import login_form, safe_next
from accord.console.render import page
from accord.db.base import utcnow
from accord.errors import ApiError
from accord.runtime import Runtime
from accord.security import users
from accord.security.oidc import OidcError

router = APIRouter(include_in_schema=False)
OIDC_COOKIE = "accord_oidc"
SECURE_OIDC_COOKIE = "__Host-accord_oidc"
_NOT_SET_UP = "Single sign-on is not set up here. Log in with your email and password."


def _cookie(request: Request) -> str:
    return SECURE_OIDC_COOKIE if auth.is_https(request) else OIDC_COOKIE


def _client(request: Request) -> str:
    return (request.client.host if request.client else "unknown")[:64]


async def _refuse(request: Request, rt: Runtime, error: OidcError, *, next_path: str = "") -> Response:
    """The login page with the reason, and the failure in the audit trail (its code, not who tried)."""
    actor = Actor("anonymous", None, None, _client(request))

    def audit() -> None:
        with rt.db.unit_of_work() as session:
            record_audit(
                session,
                key=rt.signing,
                actor=actor,
                action="console.login_failed",
                details={"method": "oidc", "reason": error.code},
            )

    await run_in_threadpool(audit)
    response = login_form(request, status=error.status, error=error.message, next_path=next_path)
    response.delete_cookie(_cookie(request), path="/", secure=auth.is_https(request), httponly=True)
    return response


def _limited(request: Request, rt: Runtime) -> Response | None:
    try:
        rt.limits.check("login", _client(request))
    except ApiError as error:
        response = login_form(request, status=429, error="Too many attempts from here. Wait a minute.")
        response.headers.update(error.headers or {})
        return response
    return None


@router.get("/console/login/oidc")
async def begin(request: Request, next: str = "/console") -> Response:
    rt: Runtime = request.app.state.runtime
    if rt.oidc is None:
        return login_form(request, status=404, error=_NOT_SET_UP)
    limited = _limited(request, rt)
    if limited is not None:
        return limited
    next_path = safe_next(next[:200])
    redirect_url = auth.oidc_callback_url(request, rt, rt.oidc)
    try:
        authorization = await rt.oidc.authorization(redirect_url=redirect_url)
    except OidcError as error:
        return await _refuse(request, rt, error, next_path=next_path)
    browser = secrets.token_urlsafe(32)
    now = utcnow()

    def remember() -> None:
        with rt.db.unit_of_work() as session:
            users.begin_oidc_login(
                session,
                state=authorization.state,
                browser_secret=browser,
                nonce=authorization.nonce,
                code_verifier=authorization.code_verifier,
                redirect_url=redirect_url,
                next_path=next_path,
                now=now,
            )

    await run_in_threadpool(remember)
    response = RedirectResponse(authorization.url, status_code=303)
    response.set_cookie(
        _cookie(request),
        browser,
        max_age=int(users.OIDC_LOGIN_LIFETIME.total_seconds()),
        path="/",
        secure=auth.is_https(request),
        httponly=True,
        samesite="lax",
    )
    return response


@router.get("/console/login/oidc/callback")
async def callback(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    provider = rt.oidc
    if provider is None:
        return login_form(request, status=404, error=_NOT_SET_UP)
    limited = _limited(request, rt)
    if limited is not None:
        return limited
    query = request.query_params
    state, code, denied = query.get("state", ""), query.get("code", ""), query.get("error", "")
    if len(state) > 200 or len(code) > 4096 or len(denied) > 200:
        return await _refuse(
            request, rt, OidcError(400, "oidc_malformed", "The sign-in answer is malformed. Start again.")
        )
    browser = request.cookies.get(_cookie(request), "")
    now = utcnow()

    def take() -> users.OidcLoginTaken | None:
        with rt.db.unit_of_work() as session:
            return users.take_oidc_login(session, state=state, browser_secret=browser, now=now)

    pending = await run_in_threadpool(take)
    if pending is None:
        return await _refuse(
            request,
            rt,
            OidcError(
                400,
                "oidc_state_unknown",
                "This sign-in has expired, was used already, or began in another browser. Start again.",
            ),
        )
    if denied:
        reason = "".join(c for c in denied if c.isalnum() or c in "_-.")[:60]
        return await _refuse(
            request,
            rt,
            OidcError(401, "oidc_denied", f"The sign-in provider did not sign you in ({reason})."),
            next_path=pending.next_path,
        )
    if not code:
        return await _refuse(
            request,
            rt,
            OidcError(400, "oidc_malformed", "The sign-in answer has no code. Start again."),
            next_path=pending.next_path,
        )
    try:
        identity = await provider.finish(
            code=code, redirect_url=pending.redirect_url, nonce=pending.nonce, code_verifier=pending.code_verifier
        )
    except OidcError as error:
        return await _refuse(request, rt, error, next_path=pending.next_path)
    if identity.role is None:
        claim = provider.config.role_claim
        return await _refuse(
            request,
            rt,
            OidcError(
                403,
                "oidc_no_role",
                f"You signed in, but your account at {provider.config.name} has no Accord role: its {claim} claim "
                "holds none of the values Accord maps to a role. Ask an administrator to give you one.",
            ),
            next_path=pending.next_path,
        )
    role = identity.role
    lifetime = timedelta(hours=rt.settings.console_session_hours)
    client = _client(request)

    def start() -> users.StartedSession:
        with rt.db.unit_of_work() as session:
            user = users.oidc_user(
                session, issuer=identity.issuer, subject=identity.subject, email=identity.email, role=role, now=now
            )
            started = users.start_session(session, user, now=now, lifetime=lifetime, id_token=identity.id_token)
            actor = Actor("user", user.id, user.role, client)
            record_audit(
                session, key=rt.signing, actor=actor, action="console.login", details={"method": "oidc"}, now=now
            )
            return started

    try:
        started = await run_in_threadpool(start)
    except users.UserError as error:
        status = 409 if error.code == "oidc_email_taken" else 403
        message = f"Signed in at {provider.config.name}, but not let in here: {error}."
        return await _refuse(request, rt, OidcError(status, error.code, message), next_path=pending.next_path)
    response = page("oidc_done.html", title="Signed in", oidc_name=provider.config.name, next_path=pending.next_path)
    auth.set_session_cookie(response, request, started.secret, int(lifetime.total_seconds()))
    response.delete_cookie(_cookie(request), path="/", secure=auth.is_https(request), httponly=True)
    return response
