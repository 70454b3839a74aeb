"""The ASGI app factory: mounts each feature's router; optionally runs a worker in-process."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from accord import __version__, errors
from accord import metrics as counters
from accord.audit import api as audit_api
from accord.config import Settings
from accord.consent import api as consent_api
from accord.consent import preferences
from accord.consent.capture import Capture
from accord.console import mount as console_mount
from accord.db import migrate
from accord.identity import api as identity_api
from accord.ingest import api as ingest_api
from accord.ingest import quarantine
from accord.journeys import api as journeys_api
from accord.pipeline.embedded import WorkerProcess
from accord.pipeline.worker import Worker
from accord.profiles import api as profiles_api
from accord.rights import api as rights_api
from accord.runtime import Runtime
from accord.security.auth import BearerAuthentication, Principal, require_role
from accord.security.headers import BodyLimit, SecurityHeaders, TrackingCors
from accord.security.service import ROLES
from accord.segments import api as segments_api
from accord.segments import live as segments_live
from accord.sources import api as sources_api
from accord.sources.jobs import ImportJobs
from accord.sources.schedules import SchedulePoller

MAX_API_BODY_BYTES = 1024 * 1024
AnyRole = Annotated[Principal, Depends(require_role(*ROLES))]


def create_app(
    settings: Settings | None = None, *, rt: Runtime | None = None, worker: Literal["thread", "process"] | None = None
) -> FastAPI:
    """The app. `worker` runs a pipeline worker beside the API while the app runs: in a thread of this
    process (the tests' live server) or as a child process (`accord up`: each gets a core)."""
    settings = settings or (rt.settings if rt else Settings())
    owns_runtime = rt is None
    rt = rt or Runtime.create(settings)
    stop = threading.Event()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        thread = None
        child = WorkerProcess(on_commit=rt.commits.notify) if worker == "process" else None
        if child is not None:
            child.start()
            rt.log.listeners.append(child.nudge)
        if worker == "thread":
            in_process = Worker(
                db=rt.db,
                log=rt.log,
                batch_size=settings.worker_batch_size,
                max_batch_size=settings.worker_max_batch_size,
                yield_seconds=settings.worker_yield_seconds,
                poll_interval=settings.worker_poll_interval,
                wake=rt.log.appended,
                consent=Capture(key=rt.signing, settings=settings),
                segment_sweep_seconds=settings.segment_sweep_seconds,
                on_commit=rt.commits.notify,
            )
            thread = threading.Thread(target=in_process.run, args=(stop,), name="accord-worker", daemon=True)
            thread.start()
        app.state.import_jobs.resume_interrupted()  # uploads and replays a stopped API process left
        poller = SchedulePoller(
            rt.db,
            rt.log,
            data_dir=settings.data_dir,
            every=settings.schedule_poll_seconds,
            rejects_days=settings.import_rejects_days,
        )
        poller.start()
        yield
        await run_in_threadpool(poller.stop)
        # Shutdown runs here, before uvicorn re-raises the signal that stopped it.
        await run_in_threadpool(app.state.import_jobs.stop)
        if child is not None:
            rt.log.listeners.remove(child.nudge)
            child.stop()
        stop.set()
        rt.log.appended.set()
        if thread is not None:
            thread.join(timeout=10)
        if owns_runtime:
            rt.close()
        else:
            rt.log.close()
            rt.audit.close()

    app = FastAPI(
        title="Accord",
        version=__version__,
        description="Open, self-hosted customer data platform. Tracking API (Segment-compatible) and REST API.",
        lifespan=lifespan,
        # Served below behind a token; the interactive pages would load scripts from a CDN, so none.
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.runtime = rt
    # Starlette runs the last added first: headers, CORS, then the token check, then the body limit, so a
    # caller without a token gets 401 whatever the size of what it sent.
    app.add_middleware(
        BodyLimit, max_bytes=MAX_API_BODY_BYTES, larger={sources_api.UPLOADS: settings.import_max_bytes + 64 * 1024}
    )
    app.add_middleware(BearerAuthentication, rt=rt)
    app.add_middleware(TrackingCors, origins=settings.cors_origins)
    app.add_middleware(SecurityHeaders)
    app.state.write_keys = ingest_api.WriteKeys()
    errors.install(app)
    app.include_router(ingest_api.router)
    app.include_router(profiles_api.router)
    app.include_router(identity_api.profiles)
    app.include_router(identity_api.router)
    app.include_router(consent_api.profiles)
    app.include_router(consent_api.router)
    app.include_router(consent_api.jwks)
    app.include_router(preferences.router)
    app.include_router(sources_api.router)
    app.include_router(sources_api.sql_router)
    app.include_router(sources_api.schedule_router)
    app.include_router(sources_api.hooks)
    app.state.import_jobs = ImportJobs(rt.db, rt.log)
    console_mount.install(app)
    app.include_router(segments_api.router)
    app.include_router(segments_api.profiles)
    app.include_router(segments_api.computed)
    app.include_router(segments_live.router)
    app.include_router(journeys_api.router)
    app.include_router(journeys_api.profiles)
    app.include_router(audit_api.router)
    app.include_router(rights_api.router)

    @app.get("/healthz", tags=["operations"], summary="The process is up")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["operations"],
        summary="The database answers and its schema is current",
        responses=errors.documented(503),
    )
    async def readyz() -> Response:
        def check() -> str | None:
            try:
                with rt.db.read() as session:
                    session.execute(text("SELECT 1"))
                if not migrate.is_current(rt.db):
                    return "the database schema is not current; run `accord migrate`"
            except Exception as error:  # readiness reports, it does not raise
                return f"the database does not answer ({type(error).__name__})"
            return None

        problem = await run_in_threadpool(check)
        if problem:
            return errors.error_response(503, "not_ready", problem)
        return errors.JSON({"status": "ready"})

    @app.get(
        "/metrics",
        tags=["operations"],
        summary="Prometheus metrics (any role)",
        response_class=Response,
        responses=errors.documented(401, 429),
    )
    async def metrics(_: AnyRole) -> Response:
        def backlog() -> None:
            # Read from the database, so they hold whichever process the workers run in.
            counters.LOG_PENDING.set(rt.log.pending())
            with rt.db.read() as session:
                counters.QUARANTINE_WAITING.set(quarantine.count_waiting(session))

        await run_in_threadpool(backlog)
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            components = schema.setdefault("components", {})
            components.setdefault("schemas", {}).update(ingest_api.openapi_components())
            components.setdefault("securitySchemes", {})["writeKey"] = {
                "type": "http",
                "scheme": "basic",
                "description": "The source's write key as user name",
            }
            errors.document_body_limit(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get(
        "/openapi.json",
        tags=["operations"],
        summary="This API's OpenAPI schema (any role)",
        responses=errors.documented(401, 429),
    )
    async def openapi_schema(_: AnyRole) -> dict[str, Any]:
        return app.openapi()

    return app
