"""Who is using the console: the session cookie, the role check and CSRF protection of every form.

The cookie is HttpOnly, SameSite=Strict, Path=/, and Secure with the `__Host-` prefix when the request
came over HTTPS. Every request that changes something must also carry the session's CSRF token, as the
form field `csrf` or the header `X-CSRF-Token` (htmx sends it), and must not come from another site
(`Origin` / `Sec-Fetch-Site`).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from sqlalchemy.orm import Session

from accord.audit.service import Actor, record_audit
from accord.console.render import ConsoleError, LoginRequired
from accord.db.base import utcnow
from accord.runtime import Runtime
from accord.security import users
from accord.security.oidc import CALLBACK_PATH, OidcProvider
from accord.security.users import Login

COOKIE = "accord_console"
SECURE_COOKIE = "__Host-accord_console"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
MAX_FORM_BYTES = 64 * 1024  # the login form
MAX_SESSION_FORM_BYTES = 512 * 1024  # forms of a logged-in user (a notice's text can be long)


def is_https(request: Request) -> bool:
    return request.url.scheme == "https"


def session_secret(request: Request) -> str:
    return request.cookies.get(SECURE_COOKIE if is_https(request) else COOKIE, "")


def set_session_cookie(response: Response, request: Request, secret: str, max_age: int) -> None:
    secure = is_https(request)
    response.set_cookie(
        SECURE_COOKIE if secure else COOKIE,
        secret,
        max_age=max_age,
        path="/",
        secure=secure,
        httponly=True,
        samesite="strict",
    )


def clear_session_cookie(response: Response, request: Request) -> None:
    secure = is_https(request)
    response.delete_cookie(
        SECURE_COOKIE if secure else COOKIE, path="/", secure=secure, httponly=True, samesite="strict"
    )


async def form(request: Request, *, max_bytes: int = MAX_FORM_BYTES) -> dict[str, list[str]]:
    """The URL-encoded form of a POST, read once and kept; a body over `max_bytes` is refused."""
    cached: dict[str, list[str]] | None = getattr(request.state, "console_form", None)
    if cached is not None:
        return cached
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > max_bytes:
            raise ConsoleError(413, "Too much data", f"A form may send at most {max_bytes // 1024} KiB.")
    parsed = parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=500)
    request.state.console_form = parsed
    return parsed


def field(values: dict[str, list[str]], name: str, *, max_length: int = 1000) -> str:
    """One form field's first value; longer than `max_length`, or with a NUL, is refused."""
    value = (values.get(name) or [""])[0]
    if len(value) > max_length:
        raise ConsoleError(422, "Too long", f"The field {name} may hold at most {max_length} characters.")
    if "\x00" in value:
        raise ConsoleError(422, "Not allowed", f"The field {name} holds a NUL character.")
    return value


def same_site(request: Request) -> bool:
    """False when the browser says the request comes from another site."""
    if request.headers.get("sec-fetch-site", "same-origin") not in {"same-origin", "none"}:
        return False
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    parts = urlsplit(origin)
    return parts.scheme == request.url.scheme and parts.netloc == request.headers.get("host", "")


async def check_csrf(request: Request, expected: str) -> None:
    values = await form(request, max_bytes=MAX_SESSION_FORM_BYTES)
    sent = request.headers.get("x-csrf-token") or field(values, "csrf", max_length=200)
    if not same_site(request) or not sent or not hmac.compare_digest(sent.encode(), expected.encode()):
        raise ConsoleError(
            403, "Form expired", "This form is not valid any more (or came from another site). Reload and retry."
        )


async def current_login(request: Request) -> Login | None:
    rt: Runtime = request.app.state.runtime
    secret = session_secret(request)
    if not secret:
        return None
    now = utcnow()
    idle = timedelta(minutes=rt.settings.console_idle_minutes)

    def check() -> Login | None:
        with rt.db.read() as session:
            login = users.session_login(session, secret, now=now, idle=idle)
        if login is not None and login.stale:
            with rt.db.unit_of_work() as session:
                users.touch(session, session_hash=login.session_hash, now=now)
        return login

    return await run_in_threadpool(check)


def require_login(*roles: str) -> Callable[[Request], Coroutine[Any, Any, Login]]:
    """A dependency that admits a live console session of one of `roles` (admin always); for a request that
    changes something, also a valid CSRF token from this site."""
    allowed = {"admin", *roles}

    async def dependency(request: Request) -> Login:
        login = await current_login(request)
        if login is None:
            raise LoginRequired
        request.state.console_login = login
        if login.role not in allowed:
            raise ConsoleError(403, "Not for your role", f"The {login.role} role cannot open this page.")
        if request.method not in SAFE_METHODS:
            await check_csrf(request, login.csrf_token)
        return login

    return dependency


def actor(request: Request, login: Login) -> Actor:
    """Who an audit record names for a console request: the user, their role and the client's address."""
    ip = request.client.host if request.client else None
    return Actor("user", login.user_id, login.role, ip[:64] if ip else None)


def audit(
    session: Session,
    request: Request,
    login: Login,
    action: str,
    target_type: str | None = None,
    target_id: str | None = None,
    **details: Any,
) -> None:
    """Record a console action in the caller's transaction. `details` hold ids, keys and counts, never
    personal data."""
    rt: Runtime = request.app.state.runtime
    record_audit(
        session,
        key=rt.signing,
        actor=actor(request, login),
        action=action,
        target_type=target_type,
        target_id=target_id,
        details=details,
    )


def oidc_callback_url(request: Request, rt: Runtime, provider: OidcProvider) -> str:
    """Where the provider sends the browser back after a sign-in: ACCORD_OIDC_REDIRECT_URL, else the callback
    under ACCORD_PUBLIC_URL, else under the URL this request came to."""
    if provider.config.redirect_url:
        return provider.config.redirect_url
    if rt.settings.public_url:
        return rt.settings.public_url.rstrip("/") + CALLBACK_PATH
    return str(request.base_url).rstrip("/") + CALLBACK_PATH
