"""Segments in the console: the list with sizes, and an editor that checks a condition as you type (the
segment service's own check, so the console accepts exactly what the REST API accepts)."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, Response

from accord.console import auth
from accord.console.render import ConsoleError, page
from accord.db.base import utcnow
from accord.runtime import Runtime
from accord.security.users import Login
from accord.segments import conditions
from accord.segments import service as segments

router = APIRouter(include_in_schema=False)
Reader = Annotated[Login, Depends(auth.require_login("analyst", "agent"))]
Editor = Annotated[Login, Depends(auth.require_login("analyst"))]
MAX_CONDITION = 64 * 1024
EXAMPLE = '{"all": [{"trait": "plan", "op": "eq", "value": "gold"}]}'


def _rt(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def _parse(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as error:
        raise conditions.ConditionError("$", f"not JSON: {error.msg} at character {error.pos}") from None


@router.get("/console/segments")
async def segments_page(request: Request, login: Reader, done: str = "") -> Response:
    rt = _rt(request)

    def load() -> list[dict[str, Any]]:
        with rt.db.read() as session:
            rows = segments.listing(session)
            sizes = segments.sizes(session, [r.key for r in rows])
            return [
                {
                    "segment": row,
                    "size": sizes.get(row.key, 0),
                    "condition": orjson.dumps(row.condition, option=orjson.OPT_INDENT_2).decode(),
                }
                for row in rows
            ]

    return page(
        "segments.html",
        title="Segments",
        login=login,
        section="segments",
        rows=await run_in_threadpool(load),
        can_edit=login.role in {"admin", "analyst"},
        example=EXAMPLE,
        done="Segment saved; members are being worked out." if done == "segment" else "",
    )


@router.post("/console/segments/check")
async def check(request: Request, login: Editor) -> Response:
    """Answers the editor as the analyst types: the condition is usable, or where and why it is not."""
    rt = _rt(request)
    values = await auth.form(request)
    key = auth.field(values, "key", max_length=100).strip() or "new-segment"
    text = auth.field(values, "condition", max_length=MAX_CONDITION)

    def run() -> str | None:
        with rt.db.read() as session:
            try:
                segments.check_condition(session, key, _parse(text))
            except conditions.ConditionError as error:
                return str(error)
        return None

    problem = await run_in_threadpool(run) if text.strip() else "$: write a condition"
    return page("_condition_check.html", problem=problem)


@router.post("/console/segments")
async def save(request: Request, login: Editor) -> Response:
    """Create a segment, or give an existing one a new version."""
    rt = _rt(request)
    values = await auth.form(request)
    key = auth.field(values, "key", max_length=100).strip()
    name = auth.field(values, "name", max_length=200).strip()
    description = auth.field(values, "description", max_length=2000).strip()
    text = auth.field(values, "condition", max_length=MAX_CONDITION)

    def run() -> None:
        now = utcnow()
        actor = f"console:{login.user_id}"
        with rt.db.unit_of_work() as session:
            document = _parse(text)
            if key in {row.key for row in segments.listing(session)}:
                row = segments.change(
                    session,
                    key=key,
                    name=name or None,
                    description=description,
                    condition=document,
                    actor=actor,
                    now=now,
                )
                action = "segment.update"
            else:
                row = segments.create(
                    session, key=key, name=name, description=description, condition=document, actor=actor, now=now
                )
                action = "segment.create"
            auth.audit(session, request, login, action, "segment", row.key, version=row.version)

    try:
        await run_in_threadpool(run)
    except segments.SegmentError as error:
        raise ConsoleError(error.status, "Segment not saved", str(error)) from None
    except conditions.ConditionError as error:
        raise ConsoleError(422, "Segment not saved", str(error)) from None
    return RedirectResponse("/console/segments?done=segment", status_code=303)
