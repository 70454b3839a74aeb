"""Live views as server-sent events: a profile's new timeline events, segment entries and exits and journey
stage changes, and every segment and journey change (optionally of one segment or journey), as they commit.

A stream polls the database when the pipeline reports a commit (`Runtime.commits`: a worker in this
process or `accord up`'s child), at most every MIN_GAP_SECONDS, and otherwise every
`ACCORD_STREAM_POLL_SECONDS` (workers elsewhere do not report). Each stream stays open for
STREAM_SECONDS and then ends; EventSource clients reconnect by themselves and send the last id back
(Last-Event-ID), so nothing is missed and no stream outlives a revoked token long.
The routes stay out of the OpenAPI schema (a schema-driven client would wait out every stream); their
roles are in docs/security.md and tested like the others.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from accord.errors import ApiError
from accord.journeys import service as journeys
from accord.journeys.models import JourneyTransition
from accord.profiles import service as profile_service
from accord.profiles.api import Ref, resolve_or_404
from accord.runtime import Runtime, runtime
from accord.security.auth import Principal, require_role
from accord.segments import service
from accord.segments.models import SegmentTransition

router = APIRouter(tags=["live"], include_in_schema=False)
Rt = Annotated[Runtime, Depends(runtime)]
Reader = Annotated[Principal, Depends(require_role("analyst", "agent"))]
MIN_GAP_SECONDS = 0.01  # between two polls of one stream, however often the pipeline commits
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


def _journey_transition(row: JourneyTransition) -> dict[str, Any]:
    return {
        "id": row.id,
        "profile_id": row.profile_id,
        "journey": row.journey_key,
        "kind": row.kind,
        "stage": row.stage,
        "from_stage": row.from_stage,
        "reason": row.reason,
        "version": row.version,
        "at": row.at,
    }


def _cursors(request: Request, after: str | None, count: int) -> list[int]:
    """The ids to resume after (`count` of them: segment transition, [timeline event,] journey transition):
    Last-Event-ID, else ?after=, as `T.E.J` (profile) or `T.J`; missing trailing parts count as 0."""
    text = request.headers.get("last-event-id") or after or "0"
    parts = text.split(".")
    if len(parts) > count or not all(p.isdigit() and len(p) < 19 for p in parts):
        raise ApiError(400, "invalid_cursor", "after (or Last-Event-ID) is not a cursor this stream gave out")
    return [int(p) for p in parts] + [0] * (count - len(parts))


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
    """A profile's new timeline events (`event`), segment entries and exits (`segment`) and journey stage
    changes (`journey`), as they commit."""
    transitions_after, events_after, journeys_after = _cursors(request, after, 3)

    def find() -> str:
        with rt.db.read() as session:
            return resolve_or_404(session, ref).id

    profile_id = await run_in_threadpool(find)
    seen_transitions, seen_events = _Unsent(transitions_after), _Unsent(events_after)
    seen_journeys = _Unsent(journeys_after)

    def cursor() -> str:
        return f"{seen_transitions.cursor}.{seen_events.cursor}.{seen_journeys.cursor}"

    def poll() -> tuple[list[bytes], bool]:
        with rt.db.read() as session:
            live = profile_service.resolve(session, profile_id)
            if live is None or live.id != profile_id:
                return [_sse("moved", {"profile_id": profile_id, "now": live.id if live else None})], True
            transitions = service.transitions_since(session, after=seen_transitions.floor(), profile_id=profile_id)
            events = service.events_since(session, profile_id, after=seen_events.floor())
            moves = journeys.transitions_since(session, after=seen_journeys.floor(), profile_id=profile_id)
        out: list[bytes] = []
        by_id = {t.id: t for t in transitions}
        for i in seen_transitions.fresh(sorted(by_id)):
            seen_transitions.mark(i)
            out.append(_sse("segment", _transition(by_id[i]), cursor()))
        by_move = {m.id: m for m in moves}
        for i in seen_journeys.fresh(sorted(by_move)):
            seen_journeys.mark(i)
            out.append(_sse("journey", _journey_transition(by_move[i]), cursor()))
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
            out.append(_sse("event", data, cursor()))
        return out, False

    async def stream() -> AsyncIterator[bytes]:
        yield b"retry: 1000\n\n"
        started = time.monotonic()
        while time.monotonic() - started < STREAM_SECONDS:
            seen, polled = rt.commits.count, time.monotonic()
            messages, done = await run_in_threadpool(poll)
            for message in messages:
                yield message
            if done:
                return
            await rt.commits.next_poll(seen, polled, every=rt.settings.stream_poll_seconds, min_gap=MIN_GAP_SECONDS)

    return _respond(stream())


@router.get("/api/v1/stream")
async def changes_stream(
    request: Request,
    rt: Rt,
    _: Reader,
    segment: Annotated[str | None, Query(max_length=100, description="Only this segment's changes")] = None,
    journey: Annotated[str | None, Query(max_length=100, description="Only this journey's changes")] = None,
    after: Annotated[str | None, Query(max_length=40)] = None,
) -> StreamingResponse:
    """Every segment entry and exit (`segment`) and journey stage change (`journey`), as they commit; with
    ?segment= only that segment's, with ?journey= only that journey's (both: both)."""
    transitions_after, journeys_after = _cursors(request, after, 2)
    with_segments = segment is not None or journey is None
    with_journeys = journey is not None or segment is None

    def check() -> None:
        with rt.db.read() as session:
            try:
                if segment is not None:
                    service.get(session, segment)
                if journey is not None:
                    journeys.get(session, journey)
            except (service.SegmentError, journeys.JourneyError) as error:
                raise ApiError(error.status, error.code, str(error)) from None

    if segment is not None or journey is not None:
        await run_in_threadpool(check)
    seen, seen_journeys = _Unsent(transitions_after), _Unsent(journeys_after)

    def poll() -> list[bytes]:
        with rt.db.read() as session:
            rows = service.transitions_since(session, after=seen.floor(), segment=segment) if with_segments else []
            moves = (
                journeys.transitions_since(session, after=seen_journeys.floor(), journey=journey)
                if with_journeys
                else []
            )
        out = []
        by_id = {t.id: t for t in rows}
        for i in seen.fresh(sorted(by_id)):
            seen.mark(i)
            out.append(_sse("segment", _transition(by_id[i]), f"{seen.cursor}.{seen_journeys.cursor}"))
        by_move = {m.id: m for m in moves}
        for i in seen_journeys.fresh(sorted(by_move)):
            seen_journeys.mark(i)
            out.append(_sse("journey", _journey_transition(by_move[i]), f"{seen.cursor}.{seen_journeys.cursor}"))
        return out

    async def stream() -> AsyncIterator[bytes]:
        yield b"retry: 1000\n\n"
        started = time.monotonic()
        while time.monotonic() - started < STREAM_SECONDS:
            seen, polled = rt.commits.count, time.monotonic()
            for message in await run_in_threadpool(poll):
                yield message
            await rt.commits.next_poll(seen, polled, every=rt.settings.stream_poll_seconds, min_gap=MIN_GAP_SECONDS)

    return _respond(stream())
