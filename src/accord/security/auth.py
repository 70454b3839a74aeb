"""Bearer-token authentication and role checks for the REST API."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from accord.errors import ApiError
from accord.runtime import Runtime, runtime
from accord.security import service

_bearer = HTTPBearer(auto_error=False, description="A token from `accord token create --role ROLE`")


@dataclass(frozen=True, slots=True)
class Principal:
    token_id: str
    role: str


def require_role(*roles: str) -> Callable[..., Coroutine[Any, Any, Principal]]:
    """A dependency that admits a valid bearer token of one of `roles` (admin always)."""
    allowed = {"admin", *roles}

    async def dependency(
        request: Request,
        rt: Annotated[Runtime, Depends(runtime)],
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Principal:
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise ApiError(
                401,
                "unauthorized",
                "send a bearer token: Authorization: Bearer <token>",
                {"WWW-Authenticate": "Bearer"},
            )

        def check() -> Principal | None:
            with rt.db.read() as session:
                row = service.authenticate(session, credentials.credentials)
                return Principal(token_id=row.id, role=row.role) if row else None

        principal = await run_in_threadpool(check)
        if principal is None:
            raise ApiError(
                401, "unauthorized", "the token is unknown, expired or revoked", {"WWW-Authenticate": "Bearer"}
            )
        rt.limits.check("api", principal.token_id)
        if principal.role not in allowed:
            raise ApiError(403, "forbidden", f"the {principal.role} role may not do this")
        request.state.principal = principal
        return principal

    return dependency
