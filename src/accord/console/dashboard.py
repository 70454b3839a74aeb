"""Dashboards: the live event rate and processing lag (refreshed every few seconds), segment sizes over
time, and a funnel per journey. Charts are SVG drawn on the server: no chart script, nothing for the
page's policy to admit."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from accord.console import auth
from accord.console import service as console_service
from accord.console.render import page
from accord.db.base import utcnow
from accord.runtime import Runtime
from accord.security.users import Login

router = APIRouter(include_in_schema=False)
Analyst = Annotated[Login, Depends(auth.require_login("analyst"))]


def _live(rt: Runtime) -> dict[str, Any]:
    now = utcnow()
    with rt.db.read() as session:
        bars, capped = console_service.event_rate(session, now=now)
    with rt.log.db.read() as session:
        oldest = console_service.oldest_pending(session)
    return {
        "rate": bars,
        "capped": capped,
        "last_minute": bars[-1].value if bars else 0,
        "pending": rt.log.pending(),
        "lag_seconds": max(0.0, (now - oldest).total_seconds()) if oldest else 0.0,
        "at": now,
    }


@router.get("/console/dashboard")
async def dashboard(request: Request, login: Analyst) -> Response:
    rt: Runtime = request.app.state.runtime

    def load() -> dict[str, Any]:
        with rt.db.read() as session:
            history = console_service.segment_history(session, now=utcnow())
            funnels = console_service.journey_funnels(session, now=utcnow())
        return {"segments": history, "funnels": funnels, **_live(rt)}

    return page("dashboard.html", title="Dashboard", login=login, section="dashboard", **await run_in_threadpool(load))


@router.get("/console/dashboard/live")
async def live(request: Request, login: Analyst) -> Response:
    """The live panel alone, for htmx to swap in every few seconds."""
    rt: Runtime = request.app.state.runtime
    return page("_dashboard_live.html", **await run_in_threadpool(_live, rt))
