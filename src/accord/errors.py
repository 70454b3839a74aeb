"""Every error Accord answers is JSON `{"code": ..., "message": ...}` with a 4xx or 5xx status."""

from __future__ import annotations

from typing import Any

import orjson
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import IntegrityError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from accord.db.engine import conflicted, duplicate_key


class JSON(JSONResponse):
    """A JSON response rendered with orjson."""

    def render(self, content: object) -> bytes:
        return orjson.dumps(content)


class ErrorBody(BaseModel):
    """What every error answer holds."""

    code: str
    message: str


def documented(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for the error statuses a route answers."""
    return {status: {"model": ErrorBody} for status in statuses}


def document_body_limit(schema: dict[str, Any]) -> None:
    """Every operation that takes a body may answer 413: the body limit applies before any route runs."""
    for methods in schema.get("paths", {}).values():
        for operation in methods.values():
            if isinstance(operation, dict) and "requestBody" in operation:
                operation.setdefault("responses", {}).setdefault(
                    "413",
                    {
                        "description": "Request Entity Too Large",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
                    },
                )


# Routes under /api/v1/profiles/{ref}: besides the usual errors, an erased person's id answers 410.
PROFILE_ERRORS = documented(400, 401, 403, 404, 410, 422, 429)
PROFILE_WRITE_ERRORS = documented(400, 401, 403, 404, 409, 410, 422, 429)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSON:
    return JSON({"code": code, "message": message}, status_code=status, headers=headers)


_HTTP_CODES = {401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed"}


def _internal(error: object, **where: str) -> JSON:
    # The type only (and where, a constraint's name): a message could quote personal data from the request.
    structlog.get_logger(__name__).error("unhandled error", error=type(error).__name__, **where)
    return error_response(500, "internal_error", "Accord failed on this request; it has been logged")


def _busy(error: object, **where: str) -> JSON:
    structlog.get_logger(__name__).warning("database busy", error=type(error).__name__, **where)
    return error_response(
        503, "database_busy", "The database is busy with other writers; try again shortly", {"Retry-After": "1"}
    )


def _constraint(error: IntegrityError) -> dict[str, str]:
    """The name of the constraint PostgreSQL reports the error broke, to log: a name from the schema, never
    the values (which the message quotes). SQLite names none."""
    name = getattr(getattr(error.orig, "diag", None), "constraint_name", None)
    return {"constraint": name} if name else {}


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, error: ApiError) -> JSON:
        return error_response(error.status, error.code, error.message, error.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, error: RequestValidationError) -> JSON:
        first = error.errors()[0] if error.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()))
        return error_response(422, "invalid_request", f"{where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(OperationalError)
    async def _database(_request: Request, error: OperationalError) -> JSON:
        # Other writers got in the way (SQLite's write lock held past the timeout; on PostgreSQL a deadlock, a
        # serialization failure, lock_timeout): a passing state, and the transaction wrote nothing.
        if conflicted(error):
            return _busy(error.orig)
        return _internal(error)

    @app.exception_handler(IntegrityError)
    async def _integrity(_request: Request, error: IntegrityError) -> JSON:
        # A key another writer took between the service's check that it was free and the insert (on PostgreSQL,
        # which made the insert wait for that writer's commit): a passing state too, and nothing was written.
        # Sent again, the request meets the service's own check (409 for a name taken). Any other integrity
        # error (foreign key, not null, check) is a fault that got past validation.
        if duplicate_key(error):
            return _busy(error.orig, **_constraint(error))
        return _internal(error.orig, **_constraint(error))

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, error: Exception) -> JSON:
        return _internal(error)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, error: StarletteHTTPException) -> JSON:
        code = _HTTP_CODES.get(error.status_code, "http_error")
        return error_response(error.status_code, code, str(error.detail), getattr(error, "headers", None))
