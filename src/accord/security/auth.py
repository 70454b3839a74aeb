"""Bearer-token authentication and role checks for the REST API."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Receive, Scope, Send

from accord.audit.service import Actor
from accord.errors import ApiError, error_response
from accord.runtime import Runtime, runtime
from accord.security import service

_bearer = HTTPBearer(auto_error=False, description="A token from `accord token create --role ROLE`")


@dataclass(frozen=True, slots=True)
class Principal:
    token_id: str
    role: str


_ASK_FOR_CREDENTIALS = "send a bearer token: Authorization: Bearer <token>"
_REFUSED_CREDENTIALS = "the token is unknown, expired or revoked"
# Paths that need a bearer token whatever the route; the middleware checks them before the body is read.
PROTECTED_PREFIXES = ("/api/", "/metrics", "/openapi.json")


async def _authenticate(rt: Runtime, token: str) -> Principal | None:
    def check() -> Principal | None:
        with rt.db.read() as session:
            row = service.authenticate(session, token)
            return Principal(token_id=row.id, role=row.role) if row else None

    return await run_in_threadpool(check)


class BearerAuthentication:
    """Answer 401 to a request for a protected path without a valid bearer token, before the route reads
    its body or parameters: a caller without credentials learns nothing, not even what a valid body is.
    The principal it finds is left in the request state for the routes' role checks."""

    def __init__(self, app: ASGIApp, *, rt: Runtime) -> None:
        self.app = app
        self.rt = rt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PROTECTED_PREFIXES):
            await self.app(scope, receive, send)
            return
        header = dict(scope.get("headers", [])).get(b"authorization", b"").decode("latin-1")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            await _unauthorized(scope, receive, send, _ASK_FOR_CREDENTIALS)
            return
        principal = await _authenticate(self.rt, token.strip())
        if principal is None:
            await _unauthorized(scope, receive, send, _REFUSED_CREDENTIALS)
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)


async def _unauthorized(scope: Scope, receive: Receive, send: Send, message: str) -> None:
    response = error_response(401, "unauthorized", message, {"WWW-Authenticate": "Bearer"})
    await response(scope, receive, send)


def require_role(*roles: str) -> Callable[..., Coroutine[Any, Any, Principal]]:
    """A dependency that admits a valid bearer token of one of `roles` (admin always)."""
    allowed = {"admin", *roles}

    async def dependency(
        request: Request,
        rt: Annotated[Runtime, Depends(runtime)],
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Principal:
        principal: Principal | None = getattr(request.state, "principal", None)
        if principal is None:  # a route outside the middleware's prefixes
            if credentials is None or credentials.scheme.lower() != "bearer":
                raise ApiError(401, "unauthorized", _ASK_FOR_CREDENTIALS, {"WWW-Authenticate": "Bearer"})
            principal = await _authenticate(rt, credentials.credentials)
            if principal is None:
                raise ApiError(401, "unauthorized", _REFUSED_CREDENTIALS, {"WWW-Authenticate": "Bearer"})
        rt.limits.check("api", principal.token_id)
        if principal.role not in allowed:
            raise ApiError(403, "forbidden", f"the {principal.role} role may not do this")
        request.state.principal = principal
        return principal

    return dependency


def actor_of(request: Request, principal: Principal) -> Actor:
    """Who an audit record names for this request: the token, its role and the address it came from."""
    ip = request.client.host if request.client else None
    return Actor("token", principal.token_id, principal.role, ip[:64] if ip else None)
