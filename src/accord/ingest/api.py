"""The Segment-compatible tracking API: `POST /v1/{track,identify,page,screen,group,alias,batch,import}`."""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
import zlib
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from accord import metrics
from accord.db.base import utcnow
from accord.errors import ApiError, documented, error_response
from accord.ingest.schemas import REQUEST_MODELS, Accepted
from accord.ingest.spec import MAX_REQUEST_BYTES, SpecError, contains_nul, normalise_and_encode
from accord.log.port import NewRecord
from accord.runtime import Runtime
from accord.sources import service as sources

router = APIRouter(tags=["tracking"])
KEY_CACHE_SECONDS = 5.0
_OK = orjson.dumps({"success": True})


class WriteKeys:
    """Write key to source id, cached briefly so that ingest does not query per request.

    Disabling a source takes effect within KEY_CACHE_SECONDS.
    """

    def __init__(self) -> None:
        self._cache: dict[str, tuple[str, float]] = {}

    async def source_for(self, rt: Runtime, write_key: str) -> str:
        hit = self._cache.get(write_key)
        now = time.monotonic()
        if hit is not None and hit[1] > now:
            return hit[0]

        def lookup() -> str | None:
            with rt.db.read() as session:
                source = sources.find_by_write_key(session, write_key)
                return source.id if source is not None and source.enabled else None

        source_id = await run_in_threadpool(lookup)
        if source_id is None:
            self._cache.pop(write_key, None)
            raise SpecError("unauthorized", "the write key is unknown or its source is disabled", 401)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[write_key] = (source_id, now + KEY_CACHE_SECONDS)
        return source_id


def _basic_write_key(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() != "basic":
        raise SpecError("unauthorized", "use HTTP Basic auth with the write key as user name", 401)
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise SpecError("unauthorized", "the Authorization header is not valid Basic credentials", 401) from None
    key = decoded.split(":", 1)[0]
    if not key:
        raise SpecError("unauthorized", "the write key in the Authorization header is empty", 401)
    return key


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise SpecError("invalid_body", "Content-Length is not a number")
        if int(declared) > MAX_REQUEST_BYTES:
            raise SpecError("request_too_large", f"a request may be at most {MAX_REQUEST_BYTES} bytes", 413)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_REQUEST_BYTES:
            raise SpecError("request_too_large", f"a request may be at most {MAX_REQUEST_BYTES} bytes", 413)
        chunks.append(chunk)
    body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding != "gzip":
        raise SpecError("unsupported_encoding", f"Content-Encoding {encoding[:20]!r} is not supported; use gzip", 415)
    # Bounded inflation: a small gzip bomb must not become a large allocation.
    inflater = zlib.decompressobj(wbits=31)
    try:
        data = inflater.decompress(body, MAX_REQUEST_BYTES + 1)
    except zlib.error:
        raise SpecError("invalid_body", "the body is not valid gzip") from None
    if len(data) > MAX_REQUEST_BYTES or inflater.unconsumed_tail:
        raise SpecError("request_too_large", f"a request may be at most {MAX_REQUEST_BYTES} bytes uncompressed", 413)
    if not inflater.eof:
        raise SpecError("invalid_body", "the gzip body is truncated")
    return data


async def ingest(request: Request, endpoint: str) -> Any:
    started = time.perf_counter()
    rt: Runtime = request.app.state.runtime
    received_at = utcnow()
    try:
        write_key = _basic_write_key(request)
        source_id = await request.app.state.write_keys.source_for(rt, write_key) if write_key else None
        raw = await _read_body(request)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as error:
            raise SpecError("invalid_json", f"the body is not valid JSON: {error.msg} at byte {error.pos}") from None
        # PostgreSQL stores NUL neither in text nor in JSONB: refuse it here rather than quarantine it later.
        # The byte search is cheap; only a hit pays for the exact walk.
        if b"\\u0000" in raw and contains_nul(body):
            raise SpecError("invalid_body", "the body contains a NUL character (\\u0000), which is not allowed")
        if source_id is None:
            body_key = body.get("writeKey") if isinstance(body, dict) else None
            if not isinstance(body_key, str) or not body_key:
                raise SpecError("unauthorized", "send the write key as HTTP Basic user name or as writeKey", 401)
            source_id = await request.app.state.write_keys.source_for(rt, body_key)
        rt.limits.check("tracking", source_id)
        client_ip = request.client.host if request.client else None
        gpc = request.headers.get("sec-gpc", "").strip() == "1"
        events, payload = normalise_and_encode(
            body, endpoint=endpoint, received_at=received_at, client_ip=client_ip, gpc=gpc
        )
    except SpecError as error:
        metrics.REQUESTS_REJECTED.labels(code=error.code).inc()
        headers = {"WWW-Authenticate": 'Basic realm="accord"'} if error.status == 401 else None
        return error_response(error.status, error.code, error.message, headers)
    except ApiError as error:  # the write key's rate limit
        metrics.REQUESTS_REJECTED.labels(code=error.code).inc()
        return error_response(error.status, error.code, error.message, error.headers)
    try:
        await asyncio.wrap_future(
            rt.log.submit(NewRecord(source_id=source_id, received_at=received_at, events=events, payload=payload))
        )
    except Exception:
        metrics.REQUESTS_REJECTED.labels(code="log_unavailable").inc()
        return error_response(
            503, "log_unavailable", "the event log could not store this request; retry it", {"Retry-After": "1"}
        )
    metrics.EVENTS_ACCEPTED.inc(len(events))
    metrics.INGEST_SECONDS.observe(time.perf_counter() - started)
    return Response(content=_OK, media_type="application/json")


def _route(endpoint: str) -> None:
    model = REQUEST_MODELS[endpoint]

    async def handler(request: Request) -> Any:
        return await ingest(request, endpoint)

    handler.__name__ = f"ingest_{endpoint}"
    router.add_api_route(
        f"/v1/{endpoint}",
        handler,
        methods=["POST"],
        summary=f"Segment {endpoint} call",
        response_model=Accepted,
        responses=documented(400, 401, 413, 415, 429, 503),
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
            },
            "security": [{"writeKey": []}],
        },
    )


for _endpoint in REQUEST_MODELS:
    _route(_endpoint)


def openapi_components() -> dict[str, Any]:
    """The request models' schemas, to be placed under components/schemas."""
    schemas: dict[str, Any] = {}
    for model in set(REQUEST_MODELS.values()):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return schemas
