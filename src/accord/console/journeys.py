"""Journeys in the console: the list, and an editor for a journey's definition (a JSON document) that is
checked as you type by the journey service's own check, so the console accepts exactly what the REST API
accepts and names the offending part with the same path."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, Response

from accord.console import auth
from accord.console.render import ConsoleError, page
from accord.db.base import utcnow
from accord.journeys import service as journeys
from accord.runtime import Runtime
from accord.security.users import Login
from accord.segments.conditions import ConditionError

router = APIRouter(include_in_schema=False)
Editor = Annotated[Login, Depends(auth.require_login("analyst"))]
MAX_DEFINITION = 60 * 1024  # the whole form is at most 64 KiB
EXAMPLE = orjson.dumps(
    {
        "stages": [
            {"key": "viewed", "name": "Viewed a product", "condition": {"event": "Product Viewed"}},
            {"key": "carted", "name": "Added to cart", "condition": {"event": "Product Added"}},
        ],
        "goal": {"event": "Order Completed"},
        "time_limit": "30d",
    },
    option=orjson.OPT_INDENT_2,
).decode()
DONE = {"saved": "Journey saved; positions are being worked out.", "deleted": "Journey deleted."}


def _rt(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def _parse(text: str) -> Any:
    if not text.strip():
        raise ConditionError("$", "write a definition")
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as error:
        raise ConditionError("$", f"not JSON: {error.msg} at character {error.pos}") from None


def _pretty(document: Any) -> str:
    return orjson.dumps(document, option=orjson.OPT_INDENT_2).decode()


@router.get("/console/journeys")
async def journeys_page(request: Request, login: Editor, done: str = "", edit: str = "") -> Response:
    rt = _rt(request)

    def load() -> tuple[list[dict[str, Any]], dict[str, str]]:
        rows: list[dict[str, Any]] = []
        form = {"key": "", "name": "", "description": "", "definition": EXAMPLE}
        with rt.db.read() as session:
            for journey in journeys.listing(session):
                definition = _pretty(journey.definition)
                rows.append(
                    {"journey": journey, "stages": len(journey.definition.get("stages", [])), "definition": definition}
                )
                if journey.key == edit:
                    form = {
                        "key": journey.key,
                        "name": journey.name,
                        "description": journey.description,
                        "definition": definition,
                    }
        return rows, form

    rows, form = await run_in_threadpool(load)
    return page(
        "journeys.html",
        title="Journeys",
        login=login,
        section="journeys",
        rows=rows,
        form=form,
        done=DONE.get(done, ""),
    )


@router.post("/console/journeys/check")
async def check(request: Request, login: Editor) -> Response:
    """Answers the editor as the analyst types: the definition is usable, or where and why it is not."""
    rt = _rt(request)
    values = await auth.form(request)
    text = auth.field(values, "definition", max_length=MAX_DEFINITION)

    def run() -> str | None:
        with rt.db.read() as session:
            try:
                journeys.check_definition(session, _parse(text))
            except ConditionError as error:
                return str(error)
        return None

    return page("_condition_check.html", problem=await run_in_threadpool(run), what="definition")


@router.post("/console/journeys")
async def save(request: Request, login: Editor) -> Response:
    """Create a journey, or give an existing one a new version (its definition replaced whole)."""
    rt = _rt(request)
    values = await auth.form(request)
    key = auth.field(values, "key", max_length=100).strip()
    name = auth.field(values, "name", max_length=200).strip()
    description = auth.field(values, "description", max_length=2000).strip()
    text = auth.field(values, "definition", max_length=MAX_DEFINITION)

    def run() -> None:
        now = utcnow()
        actor = f"console:{login.user_id}"
        with rt.db.unit_of_work() as session:
            document = _parse(text)
            if key in {row.key for row in journeys.listing(session)}:
                row = journeys.change(
                    session,
                    key=key,
                    name=name,
                    description=description,
                    definition=document,
                    actor=actor,
                    now=now,
                )
                action = "journey.update"
            else:
                row = journeys.create(
                    session, key=key, name=name, description=description, definition=document, actor=actor, now=now
                )
                action = "journey.create"
            auth.audit(session, request, login, action, "journey", row.key, version=row.version)

    try:
        await run_in_threadpool(run)
    except journeys.JourneyError as error:
        raise ConsoleError(error.status, "Journey not saved", str(error)) from None
    except ConditionError as error:
        raise ConsoleError(422, "Journey not saved", str(error)) from None
    return RedirectResponse("/console/journeys?done=saved", status_code=303)


@router.post("/console/journeys/delete")
async def delete(request: Request, login: Editor) -> Response:
    """Delete a journey and its positions, once its key is typed again to confirm."""
    rt = _rt(request)
    values = await auth.form(request)
    key = auth.field(values, "key", max_length=100).strip()
    confirm = auth.field(values, "confirm", max_length=100).strip()
    if not key or confirm != key:
        raise ConsoleError(422, "Journey not deleted", "Type the journey's key to confirm the deletion.")

    def run() -> None:
        with rt.db.unit_of_work() as session:
            journeys.remove(session, key=key, actor=f"console:{login.user_id}", now=utcnow())
            auth.audit(session, request, login, "journey.delete", "journey", key)

    try:
        await run_in_threadpool(run)
    except journeys.JourneyError as error:
        raise ConsoleError(error.status, "Journey not deleted", str(error)) from None
    return RedirectResponse("/console/journeys?done=deleted", status_code=303)
