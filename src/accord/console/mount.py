"""Mounting the console on the app: its routers, static files and error pages."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from accord.console import admin, customers, dashboard, journeys, login, oidc, segments
from accord.console.render import STATIC, ConsoleError, LoginRequired, page

ROUTERS = (
    login.router,
    oidc.router,
    customers.router,
    segments.router,
    journeys.router,
    dashboard.router,
    admin.router,
)


def install(app: FastAPI) -> None:
    """Mount the console's pages, its static files and its error pages on the app."""
    app.mount("/console/static", StaticFiles(directory=STATIC), name="console-static")
    for router in ROUTERS:
        app.include_router(router)

    @app.exception_handler(ConsoleError)
    async def _console_error(request: Request, error: ConsoleError) -> Response:
        return page(
            "error.html",
            status=error.status,
            title=error.title,
            message=error.message,
            login=getattr(request.state, "console_login", None),
        )

    @app.exception_handler(LoginRequired)
    async def _login_required(request: Request, _: LoginRequired) -> Response:
        if request.headers.get("hx-request"):
            # htmx would swap a redirect's page into a fragment; send the whole window instead.
            return Response(status_code=401, headers={"HX-Redirect": "/console/login"})
        target = request.url.path if request.method == "GET" else "/console"
        return RedirectResponse(f"/console/login?next={target}", status_code=303)
