"""Live views as server-sent events: a profile's new timeline events and segment entries and exits, and
every segment change (optionally of one segment), as they commit.

Each stream stays open for STREAM_SECONDS and then ends; EventSource clients reconnect by themselves and
send the last id back (Last-Event-ID), so nothing is missed and no stream outlives a revoked token long.
The routes stay out of the OpenAPI schema (a schema-driven client would wait out every stream); their
roles are in docs/security.md and tested like the others.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from accord.errors import ApiError
from accord.profiles import service as profile_service
from accord.profiles.api import Ref, resolve_or_404
from accord.runtime import Runtime, runtime
from accord.security.auth import Principal, require_role
from accord.segments import service
from accord.segments.models import SegmentTransition

router = APIRouter(tags=["live"], include_in_schema=False)
Rt = Annotated[Runtime, Depends(runtime)]
Reader = Annotated[Principal, Depends(require_role("analyst", "agent"))]
POLL_SECONDS = 0.1
STREAM_SECONDS = 25.0
LOOKBACK_IDS = 1000  # on PostgreSQL ids can commit out of order; look back this far for ones not yet sent
HEADERS = {"cache-control": "no-store", "x-accel-buffering": "no"}


def _sse(kind: str, data: dict[str, Any], event_id: str | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {kind}\ndata: ".encode() + orjson.dumps(data) + b"\n\n"


def _transition(row: SegmentTransition) -> dict[str, Any]:
    return {
        "id": row.id,
        "profile_id": row.profile_id,
        "segment": row.segment_key,
        "kind": row.kind,
        "version": row.version,
        "at": row.at,
    }


def _cursors(request: Request, after: str | None) -> tuple[int, int]:
    """(transition id, event id) to resume after: Last-Event-ID, else ?after=, as `T.E` or `T`."""
    text = request.headers.get("last-event-id") or after or "0"
    parts = text.split(".")
    if len(parts) > 2 or not all(p.isdigit() and len(p) < 19 for p in parts):
        raise ApiError(400, "invalid_cursor", "after (or Last-Event-ID) is not a cursor this stream gave out")
    numbers = [int(p) for p in parts] + [0]
    return numbers[0], numbers[1]


class _Unsent:
    """Ids already sent above a cursor that trails by LOOKBACK_IDS, so late commits are still sent once."""

    def __init__(self, cursor: int) -> None:
        self.start = self.cursor = cursor  # the client has everything up to `start`
        self.sent: set[int] = set()

    def floor(self) -> int:
        return max(self.start, self.cursor - LOOKBACK_IDS)

    def fresh(self, ids: list[int]) -> list[int]:
        return [i for i in ids if i not in self.sent and i > self.floor()]

    def mark(self, i: int) -> None:
        self.sent.add(i)
        self.cursor = max(self.cursor, i)
        if len(self.sent) > 10 * LOOKBACK_IDS:
            self.sent = {s for s in self.sent if s > self.floor()}


def _respond(stream: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(stream, media_type="text/event-stream", headers=HEADERS)


@router.get("/api/v1/profiles/{ref}/stream")
async def profile_stream(
    request: Request, ref: Ref, rt: Rt, _: Reader, after: Annotated[str | None, Query(max_length=40)] = None
) -> StreamingResponse:
    """A profile's new timeline events (`event`) and segment entries and exits (`segment`), as they commit."""
    transitions_after, events_after = _cursors(request, after)

    def find() -> str:
        with rt.db.read() as session:
            return resolve_or_404(session, ref).id

    profile_id = await run_in_threadpool(find)
    seen_transitions, seen_events = _Unsent(transitions_after), _Unsent(events_after)

    def poll() -> tuple[list[bytes], bool]:
        with rt.db.read() as session:
            live = profile_service.resolve(session, profile_id)
            if live is None or live.id != profile_id:
                return [_sse("moved", {"profile_id": profile_id, "now": live.id if live else None})], True
            transitions = service.transitions_since(session, after=seen_transitions.floor(), profile_id=profile_id)
            events = service.events_since(session, profile_id, after=seen_events.floor())
        out: list[bytes] = []
        by_id = {t.id: t for t in transitions}
        for i in seen_transitions.fresh(sorted(by_id)):
            seen_transitions.mark(i)
            out.append(_sse("segment", _transition(by_id[i]), f"{seen_transitions.cursor}.{seen_events.cursor}"))
        rows = {e.id: e for e in events}
        for i in seen_events.fresh(sorted(rows)):
            seen_events.mark(i)
            row = rows[i]
            data = {
                "id": row.id,
                "type": row.type,
                "event": row.event,
                "timestamp": row.timestamp,
                "profile_id": profile_id,
            }
            out.append(_sse("event", data, f"{seen_transitions.cursor}.{seen_events.cursor}"))
        return out, False

    async def stream() -> AsyncIterator[bytes]:
        yield b"retry: 1000\n\n"
        started = time.monotonic()
        while time.monotonic() - started < STREAM_SECONDS:
            messages, done = await run_in_threadpool(poll)
            for message in messages:
                yield message
            if done:
                return
            await asyncio.sleep(POLL_SECONDS)

    return _respond(stream())


@router.get("/api/v1/stream")
async def changes_stream(
    request: Request,
    rt: Rt,
    _: Reader,
    segment: Annotated[str | None, Query(max_length=100, description="Only this segment's changes")] = None,
    after: Annotated[str | None, Query(max_length=40)] = None,
) -> StreamingResponse:
    """Every segment entry and exit (`segment`), of one segment with ?segment=, as they commit."""
    transitions_after, _ignored = _cursors(request, after)
    if segment is not None:

        def check() -> None:
            with rt.db.read() as session:
                try:
                    service.get(session, segment)
                except service.SegmentError as error:
                    raise ApiError(error.status, error.code, str(error)) from None

        await run_in_threadpool(check)
    seen = _Unsent(transitions_after)

    def poll() -> list[bytes]:
        with rt.db.read() as session:
            rows = service.transitions_since(session, after=seen.floor(), segment=segment)
        by_id = {t.id: t for t in rows}
        out = []
        for i in seen.fresh(sorted(by_id)):
            seen.mark(i)
            out.append(_sse("segment", _transition(by_id[i]), str(seen.cursor)))
        return out

    async def stream() -> AsyncIterator[bytes]:
        yield b"retry: 1000\n\n"
        started = time.monotonic()
        while time.monotonic() - started < STREAM_SECONDS:
            for message in await run_in_threadpool(poll):
                yield message
            await asyncio.sleep(POLL_SECONDS)

    return _respond(stream())
