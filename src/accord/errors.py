"""Every error Accord answers is JSON `{"code": ..., "message": ...}` with a 4xx or 5xx status."""

from __future__ import annotations

from typing import Any

import orjson
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from accord.db.engine import conflicted


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


def _internal(error: Exception) -> JSON:
    # The type only: a message could quote personal data from the request.
    structlog.get_logger(__name__).error("unhandled error", error=type(error).__name__)
    return error_response(500, "internal_error", "Accord failed on this request; it has been logged")


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
            structlog.get_logger(__name__).warning("database busy", error=type(error.orig).__name__)
            return error_response(
                503, "database_busy", "The database is busy with other writers; try again shortly", {"Retry-After": "1"}
            )
        return _internal(error)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, error: Exception) -> JSON:
        return _internal(error)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, error: StarletteHTTPException) -> JSON:
        code = _HTTP_CODES.get(error.status_code, "http_error")
        return error_response(error.status_code, code, str(error.detail), getattr(error, "headers", None))
