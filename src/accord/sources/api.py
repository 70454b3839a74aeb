"""The import API: upload a file with a mapping, follow the run, read and replay its rejected rows, preview."""

from __future__ import annotations

import asyncio
import hashlib
import re
import shutil
import uuid
from datetime import datetime
from pathlib import Path as FilePath
from typing import Annotated, Any, cast

import orjson
from fastapi import APIRouter, Body, Depends, File, Form, Path, Query, Request, Response, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from accord.audit.service import record_audit
from accord.db.base import utcnow
from accord.errors import ApiError, documented, error_response
from accord.identity.service import current_rules
from accord.ingest import api as ingest_api
from accord.ingest.spec import SpecError, contains_nul
from accord.log.port import NewRecord
from accord.runtime import Runtime, runtime
from accord.security.auth import Principal, actor_of, require_role
from accord.security.datakeys import DataKeys
from accord.security.service import has_pii_access
from accord.sources import imports, schedules, sql_traits, webhooks
from accord.sources.connectors import EXTENSIONS, FileInput, InputError
from accord.sources.mapping import MAX_MAPPING_BYTES, Format, Mapping, MappingError, load_mapping, parse_mapping
from accord.sources.models import ImportReject, ImportRun, Schedule, SourceMapping, SqlTrait
from accord.sources.schemas import (
    ImportRunRead,
    ImportRunsRead,
    MappingRead,
    PreviewRead,
    RejectRead,
    RejectsRead,
    ReplayRequest,
    ScheduleCreate,
    ScheduleList,
    ScheduleRead,
    ScheduleUpdate,
    SqlPreviewRead,
    SqlPreviewRequest,
    SqlPreviewRow,
    SqlRunAccepted,
    SqlTraitCreate,
    SqlTraitList,
    SqlTraitRead,
    SqlTraitRun,
    SqlTraitUpdate,
    WebhookAccepted,
    WebhookReject,
)

UPLOADS = "/api/v1/sources/"
router = APIRouter(prefix="/api/v1/sources", tags=["sources"])
Rt = Annotated[Runtime, Depends(runtime)]
Analyst = Annotated[Principal, Depends(require_role("analyst"))]
Key = Annotated[
    str, Path(max_length=200, description="The source's id (`src_...`) or name", examples=["loyalty-export"])
]
RunId = Annotated[str, Path(max_length=60, description="The import run's id (`imp_...`)")]
ERRORS = documented(400, 401, 403, 404, 422, 429)
WRITE_ERRORS = documented(400, 401, 403, 404, 409, 413, 422, 429)
COPY_CHUNK = 1024 * 1024


def _source_id(rt: Runtime, key: str) -> str:
    with rt.db.read() as session:
        source = imports.find_source(session, key)
        if source is None:
            raise ApiError(404, "source_not_found", "no source has this id or name")
        return source.id


def _run_read(keys: DataKeys, run: ImportRun) -> ImportRunRead:
    """A run as the API shows it, its error decrypted (sealed under the run's key: it may quote the input)."""
    read = ImportRunRead.model_validate(run, from_attributes=True)
    return read.model_copy(update={"error": imports.run_error(keys, run)})


def _mapping(text: str) -> Mapping:
    if len(text.encode()) > MAX_MAPPING_BYTES:
        raise ApiError(413, "request_too_large", f"a mapping may be at most {MAX_MAPPING_BYTES} bytes")
    try:
        return load_mapping(text)
    except MappingError as error:
        raise ApiError(422, "invalid_mapping", str(error)) from None


def _suffix(name: str | None, declared: str | None) -> str:
    """The stored upload's suffix: the format's own when declared, else the upload name's (checked)."""
    if declared is not None:
        if declared not in ("csv", "parquet", "jsonl"):
            raise ApiError(422, "invalid_input", "format must be csv, parquet or jsonl")
        return "." + declared
    lower = (name or "").lower()
    gz = lower.endswith(".gz")
    stem = lower[:-3] if gz else lower
    suffix = "." + stem.rsplit(".", 1)[-1] if "." in stem else ""
    if suffix not in EXTENSIONS:
        raise ApiError(422, "invalid_input", "name the file .csv, .parquet or .jsonl, or give format")
    return suffix + (".gz" if gz else "")


async def _save(upload: UploadFile, target: FilePath, limit: int) -> str:
    """Copy the upload to `target` in chunks; returns its SHA-256."""
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    with target.open("wb") as out:
        while chunk := await upload.read(COPY_CHUNK):
            size += len(chunk)
            if size > limit:
                raise ApiError(413, "request_too_large", f"an upload may be at most {limit} bytes")
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def _uploads(rt: Runtime) -> FilePath:
    return rt.settings.data_dir / "imports"


@router.post(
    "/{key}/imports",
    status_code=202,
    response_model=ImportRunRead,
    responses=WRITE_ERRORS,
    summary="Import an uploaded file (CSV, Parquet, JSON lines) through a mapping; answers with the queued run",
)
async def post_import(
    key: Key,
    request: Request,
    rt: Rt,
    _: Analyst,
    file: Annotated[UploadFile, File(description="The file; its name's extension gives the format")],
    mapping: Annotated[str, Form(description="The mapping, YAML or JSON")],
    file_format: Annotated[str | None, Form(alias="format", description="csv, parquet or jsonl")] = None,
) -> JSONResponse:
    parsed = _mapping(mapping)
    source_id = await run_in_threadpool(_source_id, rt, key)
    run_id = imports.new_run_id()
    suffix = _suffix(file.filename, file_format or parsed.format)
    target = _uploads(rt) / run_id / f"upload{suffix}"
    try:
        digest = await _save(file, target, rt.settings.import_max_bytes)
        found = FileInput.at(target, declared=cast(Format | None, file_format or parsed.format), csv=parsed.csv)
    except (ApiError, InputError) as error:
        shutil.rmtree(target.parent, ignore_errors=True)
        if isinstance(error, InputError):
            raise ApiError(422, "invalid_input", str(error)) from None
        raise

    def create() -> ImportRunRead:
        with rt.db.unit_of_work() as session:
            run = imports.create_run(
                session,
                source_id=source_id,
                mapping=parsed,
                kind="upload",
                location=str(target),
                fmt=found.format,
                print_=digest,
                options={"upload_name": (file.filename or "")[:200]},
                run_id=run_id,
            )
            return _run_read(DataKeys.of(session), run)

    created = await run_in_threadpool(create)
    request.app.state.import_jobs.start(run_id, found)
    return JSONResponse(created.model_dump(mode="json"), status_code=202)


@router.get("/{key}/imports", response_model=ImportRunsRead, responses=ERRORS, summary="The source's import runs")
def list_imports(key: Key, rt: Rt, _: Analyst, limit: Annotated[int, Query(ge=1, le=500)] = 50) -> ImportRunsRead:
    source_id = _source_id(rt, key)
    with rt.db.read() as session:
        keys = DataKeys.of(session)
        runs = imports.list_runs(session, source_id=source_id, limit=limit)
        return ImportRunsRead(data=[_run_read(keys, r) for r in runs])


def _run_or_404(rt: Runtime, key: str, run_id: str) -> ImportRun:
    source_id = _source_id(rt, key)
    with rt.db.read() as session:
        run = imports.get_run(session, run_id, source_id=source_id)
        if run is None:
            raise ApiError(404, "import_not_found", "this source has no import run with this id")
        return run


@router.get(
    "/{key}/imports/{run_id}",
    response_model=ImportRunRead,
    responses=ERRORS,
    summary="An import run's status and counts (read = imported + rejected)",
)
def get_import(key: Key, run_id: RunId, rt: Rt, _: Analyst) -> ImportRunRead:
    run = _run_or_404(rt, key, run_id)
    with rt.db.read() as session:
        return _run_read(DataKeys.of(session), run)


def _reject(keys: DataKeys, row: ImportReject) -> RejectRead:
    return RejectRead.model_validate(imports.reject_document(keys, row))


@router.get(
    "/{key}/imports/{run_id}/rejects",
    response_model=RejectsRead,
    responses=ERRORS,
    summary="The rows a run rejected, with their reasons",
)
def get_rejects(
    key: Key,
    run_id: RunId,
    rt: Rt,
    _: Analyst,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    after: Annotated[int, Query(ge=0, le=2**62, description="Rejects after this id (paging)")] = 0,
) -> RejectsRead:
    run = _run_or_404(rt, key, run_id)
    with rt.db.read() as session:
        rows = imports.rejects(session, run.id, after=after, limit=limit)
        keys = DataKeys.of(session)
        data = [_reject(keys, r) for r in rows]
    return RejectsRead(run_id=run.id, data=data, next_after=rows[-1].id if len(rows) == limit else None)


@router.post(
    "/{key}/imports/{run_id}/replay",
    status_code=202,
    response_model=ImportRunRead,
    responses=WRITE_ERRORS,
    summary="Import a run's rejected rows again, through a fixed mapping or the run's own (a new run)",
)
async def post_replay(key: Key, run_id: RunId, request: Request, rt: Rt, _: Analyst, body: ReplayRequest) -> Any:
    run = await run_in_threadpool(_run_or_404, rt, key, run_id)
    try:
        mapping = parse_mapping(body.mapping) if body.mapping is not None else None
    except MappingError as error:
        raise ApiError(422, "invalid_mapping", str(error)) from None

    def start() -> tuple[ImportRunRead, Any]:
        try:
            with rt.db.unit_of_work() as session:
                replay, rows = imports.start_replay(session, run_id=run.id, mapping=mapping)
                return _run_read(DataKeys.of(session), replay), rows
        except imports.ImportFailed as error:
            raise ApiError(409, error.code, error.message) from None

    created, rows = await run_in_threadpool(start)
    request.app.state.import_jobs.start(created.id, rows)
    return JSONResponse(created.model_dump(mode="json"), status_code=202)


@router.post(
    "/{key}/preview",
    response_model=PreviewRead,
    responses=WRITE_ERRORS,
    summary="The first rows of an uploaded file as they would be imported, with errors and matching profiles; "
    "writes nothing",
)
async def post_preview(
    key: Key,
    rt: Rt,
    _: Analyst,
    file: Annotated[UploadFile, File(description="The file; its name's extension gives the format")],
    mapping: Annotated[str, Form(description="The mapping, YAML or JSON")],
    file_format: Annotated[str | None, Form(alias="format", description="csv, parquet or jsonl")] = None,
    limit: Annotated[int, Form(ge=1, le=1000)] = 20,
) -> PreviewRead:
    parsed = _mapping(mapping)
    source_id = await run_in_threadpool(_source_id, rt, key)
    suffix = _suffix(file.filename, file_format or parsed.format)
    folder = _uploads(rt) / f"preview-{uuid.uuid4().hex}"
    try:
        await _save(file, folder / f"upload{suffix}", rt.settings.import_max_bytes)

        def work() -> PreviewRead:
            found = FileInput.at(
                folder / f"upload{suffix}", declared=cast(Format | None, file_format or parsed.format), csv=parsed.csv
            )
            with rt.db.read() as session:
                shown = imports.preview(session, source_id=source_id, mapping=parsed, source=found, limit=limit)
            return PreviewRead.model_validate(imports.preview_document(shown))

        return await run_in_threadpool(work)
    except InputError as error:
        raise ApiError(422, "invalid_input", str(error)) from None
    except MappingError as error:
        raise ApiError(422, "invalid_mapping", str(error)) from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# -- stored mappings and inbound webhooks ------------------------------------------------------------------
NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,100}$"
NAME = re.compile(NAME_PATTERN)
MappingName = Annotated[str, Path(pattern=NAME_PATTERN, description="The mapping's name")]


def _mapping_read(row: SourceMapping) -> MappingRead:
    return MappingRead(
        name=row.name, version=row.version, mapping=row.document, actor=row.actor, created_at=row.created_at
    )


@router.put(
    "/{key}/mappings/{name}",
    response_model=MappingRead,
    responses=ERRORS,
    summary="Keep a mapping with the source under a name, as its newest version (webhooks use it)",
)
def put_mapping(
    request: Request,
    key: Key,
    name: MappingName,
    rt: Rt,
    principal: Analyst,
    document: Annotated[dict[str, Any], Body()],
) -> MappingRead:
    source_id = _source_id(rt, key)
    try:
        mapping = parse_mapping(document)
    except MappingError as error:
        raise ApiError(422, "invalid_mapping", str(error)) from None
    with rt.db.unit_of_work() as session:
        row = webhooks.put_mapping(
            session, source_id=source_id, name=name, mapping=mapping, actor=f"token:{principal.token_id}", now=utcnow()
        )
        _audit(request, session, rt, principal, "source_mapping.put", f"{source_id}/{name}", version=row.version)
        return _mapping_read(row)


@router.get(
    "/{key}/mappings/{name}",
    response_model=MappingRead,
    responses=ERRORS,
    summary="The newest version of a mapping kept with the source",
)
def get_mapping(key: Key, name: MappingName, rt: Rt, _: Analyst) -> MappingRead:
    source_id = _source_id(rt, key)
    with rt.db.read() as session:
        row = webhooks.latest_mapping(session, source_id=source_id, name=name)
        if row is None:
            raise ApiError(404, "mapping_not_found", "the source keeps no mapping of this name")
        return _mapping_read(row)


hooks = APIRouter(tags=["tracking"])


@hooks.post(
    "/v1/webhooks/{name}",
    response_model=WebhookAccepted,
    summary="An inbound webhook: a JSON object or array of objects, mapped by the source's mapping `name`",
    responses=documented(400, 401, 404, 413, 415, 422, 429, 503),
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": {}}}},
        "security": [{"writeKey": []}],
    },
)
async def post_webhook(
    name: Annotated[str, Path(description="The mapping's name")],
    request: Request,
    write_key: Annotated[
        str | None, Query(alias="writeKey", description="The write key, for senders that set no header")
    ] = None,
) -> Any:
    # Nothing is validated before the write key: a caller without one learns nothing, not even the rules.
    rt: Runtime = request.app.state.runtime
    try:
        key = ingest_api._basic_write_key(request) or write_key
        if not key or len(key) > 200:
            raise SpecError("unauthorized", "send the write key as HTTP Basic user name or as ?writeKey=", 401)
        source_id = await request.app.state.write_keys.source_for(rt, key)
        rt.limits.check("tracking", source_id)
        raw = await ingest_api._read_body(request)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as error:
            raise SpecError("invalid_json", f"the body is not valid JSON: {error.msg} at byte {error.pos}") from None
        rows = body if isinstance(body, list) else [body]
        if not rows or not all(isinstance(row, dict) and row for row in rows):
            raise SpecError("invalid_body", "the body must be a JSON object or a non-empty array of objects")
        if len(rows) > webhooks.MAX_ROWS:
            raise SpecError("batch_too_large", f"at most {webhooks.MAX_ROWS} rows per call", 413)
        if contains_nul(rows):
            raise SpecError("invalid_body", "the body contains a NUL character (\\u0000), which is not allowed")
    except SpecError as error:
        headers = {"WWW-Authenticate": 'Basic realm="accord"'} if error.status == 401 else None
        return error_response(error.status, error.code, error.message, headers)

    def work() -> webhooks.Mapped:
        if not NAME.match(name):
            raise ApiError(404, "mapping_not_found", "the source keeps no mapping of this name")
        with rt.db.read() as session:
            row = webhooks.latest_mapping(session, source_id=source_id, name=name)
            if row is None:
                raise ApiError(404, "mapping_not_found", "the source keeps no mapping of this name")
            rules = current_rules(session)
        try:
            return webhooks.map_rows(
                rows,
                mapping=parse_mapping(row.document),
                rules=rules,
                source_id=source_id,
                folder=_uploads(rt) / "webhooks",
                now=utcnow(),
            )
        except (InputError, MappingError) as error:
            raise ApiError(422, "invalid_input", str(error)) from None

    mapped = await run_in_threadpool(work)
    if mapped.events:
        payload = b"[" + b",".join(mapped.encoded) + b"]"
        record = NewRecord(source_id=source_id, received_at=utcnow(), events=mapped.events, payload=payload)
        try:
            await asyncio.wrap_future(rt.log.submit(record))
        except Exception:
            return error_response(503, "log_unavailable", "the event log could not store this call; retry it")
    return WebhookAccepted(
        accepted=len(mapped.events),
        rejected=[WebhookReject(position=p, reason=r) for p, r in mapped.rejected],
    )


# -- SQL computed traits -----------------------------------------------------------------------------------
sql_router = APIRouter(prefix="/api/v1/sql-traits", tags=["sources"])
schedule_router = APIRouter(prefix="/api/v1/schedules", tags=["sources"])
Viewer = Annotated[Principal, Depends(require_role("analyst", "auditor"))]
TraitKey = Annotated[str, Path(max_length=100, description="The SQL computed trait's key (the trait it sets)")]
ScheduleName = Annotated[str, Path(max_length=100, description="The schedule's name")]
RUN_ERRORS = documented(400, 401, 403, 404, 409, 422, 429)


def _audit(
    request: Request, session: Session, rt: Runtime, principal: Principal, action: str, target: str, **details: Any
) -> None:
    record_audit(
        session,
        key=rt.signing,
        actor=actor_of(request, principal),
        action=action,
        target_type=action.split(".", 1)[0],
        target_id=target,
        details=details,
    )


def _sql_fail(error: sql_traits.SqlTraitError) -> ApiError:
    return ApiError(error.status, error.code, error.message)


def _need_pii(principal: Principal, pii: bool | None) -> None:
    if pii and not has_pii_access(principal.role):
        raise ApiError(403, "forbidden", f"the {principal.role} role has no access to personal data (pii)")


def _sql_read(session: Session, row: SqlTrait) -> SqlTraitRead:
    last = None
    if row.last_run_id is not None and row.last_run_at is not None:
        last = SqlTraitRun(
            run_id=row.last_run_id, at=row.last_run_at, status=row.last_status or "", result=row.last_result or {}
        )
    return SqlTraitRead(
        key=row.key,
        sql=row.sql,
        pii=row.pii,
        description=row.description,
        version=row.version,
        created_at=row.created_at,
        updated_at=row.updated_at,
        actor=row.actor,
        running=row.running_since is not None,
        last_run=last,
        schedules=sql_traits.schedules_of(session, row.key),
    )


@sql_router.get("", response_model=SqlTraitList, responses=ERRORS, summary="Every SQL computed trait")
def list_sql_traits(rt: Rt, _: Viewer) -> SqlTraitList:
    with rt.db.read() as session:
        return SqlTraitList(data=[_sql_read(session, row) for row in sql_traits.listing(session)])


@sql_router.post(
    "", response_model=SqlTraitRead, status_code=201, responses=WRITE_ERRORS, summary="Define a SQL computed trait"
)
def create_sql_trait(request: Request, body: SqlTraitCreate, rt: Rt, principal: Analyst) -> SqlTraitRead:
    _need_pii(principal, body.pii)
    try:
        with rt.db.unit_of_work() as session:
            row = sql_traits.save(
                session,
                key=body.key,
                sql=body.sql,
                pii=body.pii,
                description=body.description,
                actor=f"token:{principal.token_id}",
                now=utcnow(),
                create=True,
            )
            _audit(request, session, rt, principal, "sql_trait.create", row.key, version=row.version, pii=row.pii)
            read = _sql_read(session, row)
    except sql_traits.SqlTraitError as error:
        raise _sql_fail(error) from None
    if read.pii:
        rt.db.checkpoint_wal()  # the values it moved out of `traits` leave no older page behind (SQLite)
    return read


@sql_router.post(
    "/preview",
    response_model=SqlPreviewRead,
    responses=RUN_ERRORS,
    summary="Run a query over the analytical view and show its first rows; nothing is set",
)
def preview_sql_trait(body: SqlPreviewRequest, rt: Rt, principal: Analyst) -> SqlPreviewRead:
    _need_pii(principal, body.pii)
    masked = not (body.pii and has_pii_access(principal.role))
    try:
        rows = sql_traits.preview(
            rt.db, sql=body.sql, masked=masked, folder=rt.settings.data_dir / "imports", limit=body.limit
        )
    except sql_traits.SqlTraitError as error:
        raise _sql_fail(error) from None
    return SqlPreviewRead(masked=masked, rows=[SqlPreviewRow(profile_id=p, value=v) for p, v in rows])


@sql_router.get("/{key}", response_model=SqlTraitRead, responses=ERRORS, summary="One SQL computed trait")
def get_sql_trait(key: TraitKey, rt: Rt, _: Viewer) -> SqlTraitRead:
    with rt.db.read() as session:
        try:
            return _sql_read(session, sql_traits.get(session, key))
        except sql_traits.SqlTraitError as error:
            raise _sql_fail(error) from None


@sql_router.put(
    "/{key}",
    response_model=SqlTraitRead,
    responses=WRITE_ERRORS,
    summary="Change a SQL computed trait (a new version when anything differs; the next run uses it)",
)
def put_sql_trait(request: Request, key: TraitKey, body: SqlTraitUpdate, rt: Rt, principal: Analyst) -> SqlTraitRead:
    _need_pii(principal, body.pii)
    try:
        with rt.db.unit_of_work() as session:
            current = sql_traits.get(session, key)
            if current.pii and not has_pii_access(principal.role):
                raise ApiError(403, "forbidden", f"the {principal.role} role may not change a trait that reads pii")
            before, was_pii = current.version, current.pii
            row = sql_traits.save(
                session,
                key=key,
                sql=body.sql,
                pii=current.pii if body.pii is None else body.pii,
                description=body.description,
                actor=f"token:{principal.token_id}",
                now=utcnow(),
                create=False,
                expected_version=body.version,
            )
            if row.version != before:
                _audit(request, session, rt, principal, "sql_trait.update", row.key, version=row.version, pii=row.pii)
            read = _sql_read(session, row)
    except sql_traits.SqlTraitError as error:
        raise _sql_fail(error) from None
    if read.pii and not was_pii:
        rt.db.checkpoint_wal()  # the values it moved out of `traits` leave no older page behind (SQLite)
    return read


@sql_router.delete("/{key}", status_code=204, responses=WRITE_ERRORS, summary="Delete a SQL computed trait")
def delete_sql_trait(request: Request, key: TraitKey, rt: Rt, principal: Analyst) -> Response:
    try:
        with rt.db.unit_of_work() as session:
            sql_traits.remove(session, key=key)
            _audit(request, session, rt, principal, "sql_trait.delete", key)
    except sql_traits.SqlTraitError as error:
        raise _sql_fail(error) from None
    return Response(status_code=204)


@sql_router.post(
    "/{key}/run",
    status_code=202,
    response_model=SqlRunAccepted,
    responses=RUN_ERRORS,
    summary="Run a SQL computed trait now, in the background (409 while a run of it is under way)",
)
def run_sql_trait(request: Request, key: TraitKey, rt: Rt, principal: Analyst) -> SqlRunAccepted:
    now = utcnow()
    try:
        claimed = sql_traits.claim(rt.db, key, now=now)
    except sql_traits.SqlTraitError as error:
        raise _sql_fail(error) from None
    with rt.db.unit_of_work() as session:
        _audit(request, session, rt, principal, "sql_trait.run", key, version=claimed.version, run_id=claimed.run_id)
    folder = rt.settings.data_dir / "imports"
    request.app.state.import_jobs.start_task(
        claimed.run_id, lambda: sql_traits.run(rt.db, rt.log, claimed, folder=folder, now=now)
    )
    return SqlRunAccepted(key=key, run_id=claimed.run_id, version=claimed.version)


# -- schedules ---------------------------------------------------------------------------------------------
def _schedule_fail(error: schedules.ScheduleError) -> ApiError:
    return ApiError(error.status, error.code, error.message)


def _schedule_read(row: Schedule) -> ScheduleRead:
    return ScheduleRead(
        name=row.name,
        kind=row.kind,
        every_minutes=row.every_seconds // 60,
        enabled=row.enabled,
        next_at=row.next_at,
        version=row.version,
        spec=row.spec,
        created_at=row.created_at,
        updated_at=row.updated_at,
        actor=row.actor,
        last_started_at=row.last_started_at,
        last_status=row.last_status,
        last_result=row.last_result,
    )


@schedule_router.get("", response_model=ScheduleList, responses=ERRORS, summary="Every schedule")
def list_schedules(rt: Rt, _: Viewer) -> ScheduleList:
    with rt.db.read() as session:
        return ScheduleList(data=[_schedule_read(row) for row in schedules.list_schedules(session)])


def _add_table(session: Session, body: ScheduleCreate, actor: str, now: datetime) -> Schedule:
    if body.url_env is None or body.mapping is None or body.source is None:
        raise ApiError(422, "invalid_schedule", "a table schedule needs url_env, mapping and source")
    source = imports.find_source(session, body.source)
    if source is None:
        raise ApiError(404, "source_not_found", "no source has this id or name")
    try:
        mapping = parse_mapping(body.mapping)
    except MappingError as error:
        raise ApiError(422, "invalid_mapping", str(error)) from None
    return schedules.add_table(
        session,
        name=body.name,
        every_seconds=body.every_minutes * 60,
        url_env=body.url_env,
        table=body.table,
        query=body.query,
        cursor=body.cursor,
        mapping=mapping,
        source_id=source.id,
        now=now,
        actor=actor,
    )


@schedule_router.post(
    "",
    response_model=ScheduleRead,
    status_code=201,
    responses=WRITE_ERRORS,
    summary="Schedule a SQL computed trait (kind computed) or a table import (kind table, admin only)",
)
def create_schedule(request: Request, body: ScheduleCreate, rt: Rt, principal: Analyst) -> ScheduleRead:
    if body.kind == "table" and principal.role != "admin":
        raise ApiError(403, "forbidden", "a table schedule reads a server environment variable: admin only")
    table_fields = (body.url_env, body.table, body.query, body.cursor, body.mapping, body.source)
    if body.kind == "computed" and (body.trait is None or any(f is not None for f in table_fields)):
        raise ApiError(422, "invalid_schedule", "a computed schedule takes trait and no table fields")
    if body.kind == "table" and body.trait is not None:
        raise ApiError(422, "invalid_schedule", "a table schedule takes no trait")
    actor, now = f"token:{principal.token_id}", utcnow()
    try:
        with rt.db.unit_of_work() as session:
            if body.kind == "computed":
                every = body.every_minutes * 60
                row = schedules.add_computed(
                    session, name=body.name, every_seconds=every, trait=str(body.trait), now=now, actor=actor
                )
            else:
                row = _add_table(session, body, actor, now)
            _audit(request, session, rt, principal, "schedule.create", row.name, kind=row.kind, version=row.version)
            return _schedule_read(row)
    except schedules.ScheduleError as error:
        raise _schedule_fail(error) from None


@schedule_router.get("/{name}", response_model=ScheduleRead, responses=ERRORS, summary="One schedule")
def get_schedule(name: ScheduleName, rt: Rt, _: Viewer) -> ScheduleRead:
    with rt.db.read() as session:
        try:
            return _schedule_read(schedules.get(session, name))
        except schedules.ScheduleError as error:
            raise _schedule_fail(error) from None


@schedule_router.put(
    "/{name}",
    response_model=ScheduleRead,
    responses=WRITE_ERRORS,
    summary="Change a schedule's interval, pause or resume it, or point it at another trait (a new version)",
)
def put_schedule(
    request: Request, name: ScheduleName, body: ScheduleUpdate, rt: Rt, principal: Analyst
) -> ScheduleRead:
    try:
        with rt.db.unit_of_work() as session:
            current = schedules.get(session, name)
            if current.kind == "table" and principal.role != "admin":
                raise ApiError(403, "forbidden", "a table schedule reads a server environment variable: admin only")
            if body.trait is not None and current.kind != "computed":
                raise ApiError(422, "invalid_schedule", "only a computed schedule takes a trait")
            before = current.version
            row = schedules.change(
                session,
                name=name,
                every_seconds=None if body.every_minutes is None else body.every_minutes * 60,
                enabled=body.enabled,
                spec=None if body.trait is None else {"trait": body.trait},
                actor=f"token:{principal.token_id}",
                now=utcnow(),
                expected_version=body.version,
            )
            if row.version != before:
                _audit(request, session, rt, principal, "schedule.update", row.name, version=row.version)
            return _schedule_read(row)
    except schedules.ScheduleError as error:
        raise _schedule_fail(error) from None


@schedule_router.delete("/{name}", status_code=204, responses=WRITE_ERRORS, summary="Delete a schedule")
def delete_schedule(request: Request, name: ScheduleName, rt: Rt, principal: Analyst) -> Response:
    try:
        with rt.db.unit_of_work() as session:
            if schedules.get(session, name).kind == "table" and principal.role != "admin":
                raise ApiError(403, "forbidden", "a table schedule reads a server environment variable: admin only")
            schedules.remove(session, name)
            _audit(request, session, rt, principal, "schedule.delete", name)
    except schedules.ScheduleError as error:
        raise _schedule_fail(error) from None
    return Response(status_code=204)


@schedule_router.post(
    "/{name}/run",
    status_code=202,
    response_model=ScheduleRead,
    responses=RUN_ERRORS,
    summary="Run a schedule now, in the background (then every N minutes from now)",
)
def run_schedule(request: Request, name: ScheduleName, rt: Rt, principal: Analyst) -> ScheduleRead:
    try:
        with rt.db.unit_of_work() as session:
            row = schedules.get(session, name)
            if row.kind == "table" and principal.role != "admin":
                raise ApiError(403, "forbidden", "a table schedule reads a server environment variable: admin only")
            _audit(request, session, rt, principal, "schedule.run", name, version=row.version)
            shown = _schedule_read(row)
    except schedules.ScheduleError as error:
        raise _schedule_fail(error) from None
    data_dir = rt.settings.data_dir
    request.app.state.import_jobs.start_task(
        f"schedule-{name}", lambda: schedules.run_now(rt.db, rt.log, name=name, data_dir=data_dir)
    )
    return shown
