"""Import jobs: read an input through a mapping into the event log, like tracked events.

A run streams its input from DuckDB in chunks. For each chunk it appends the new events to the log
(durable first), then commits the rows it rejected, its counts and its checkpoint together. A run killed
at any point resumes from its last checkpoint: a chunk it had appended but not checkpointed is appended
again, and the processor's dedupe by messageId (deterministic per source and row) makes that harmless.
So does importing the same rows twice: the second run appends nothing the store holds already.
"""

from __future__ import annotations

import hashlib
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

import duckdb
import orjson
import structlog
from sqlalchemy import Table, func, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from accord.db.base import utcnow
from accord.db.engine import Database
from accord.identity.rules import Rules
from accord.identity.service import current_rules
from accord.ingest.spec import iso
from accord.log.port import EventLog, NewRecord
from accord.profiles.models import ProfileEvent
from accord.security.crypto import PREFIX, Undecryptable, aad, is_ciphertext
from accord.security.datakeys import DataKeys, destroy
from accord.sources.connectors import FileInput, Input, InputError, RowsInput
from accord.sources.mapping import Mapping, MappingError, parse_mapping
from accord.sources.models import ImportReject, ImportRun, Source
from accord.sources.transform import Query, Rejected, RowMapper, check_query, compile_query

log = structlog.get_logger(__name__)
FETCH_ROWS = 5000  # rows per chunk: one checkpoint each
RECORD_EVENTS = 500  # events per log record, so that a worker's claim stays its usual size
STALE_AFTER = timedelta(seconds=60)  # a running run not heard of for this long was interrupted
MAX_ERROR = 2000
REJECTS = cast(Table, ImportReject.__table__)
EVENTS = cast(Table, ProfileEvent.__table__)


class ImportFailed(Exception):
    """An import that cannot start or go on; `code` is stable for the API."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Progress:
    read: int
    imported: int
    rejected: int


def new_run_id() -> str:
    return "imp_" + uuid.uuid4().hex[:16]


def fingerprint(source_id: str, mapping: Mapping, input_print: str) -> str:
    document = orjson.dumps(mapping.document(), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(b"\x00".join([source_id.encode(), document, input_print.encode()])).hexdigest()


def find_source(session: Session, key: str) -> Source | None:
    """A source by id or by name."""
    return session.get(Source, key) or session.scalar(select(Source).where(Source.name == key))


def create_run(
    session: Session,
    *,
    source_id: str,
    mapping: Mapping,
    kind: str,
    location: str,
    fmt: str | None,
    print_: str,
    options: dict[str, Any] | None = None,
    parent_id: str | None = None,
    run_id: str | None = None,
) -> ImportRun:
    run = ImportRun(
        id=run_id or new_run_id(),
        source_id=source_id,
        kind=kind,
        status="queued",
        location=location[:2000],
        format=fmt,
        fingerprint=fingerprint(source_id, mapping, print_),
        mapping=mapping.document(),
        mapping_name=mapping.name,
        mapping_version=mapping.version,
        options=options or {},
        parent_id=parent_id,
        read=0,
        imported=0,
        appended=0,
        rejected=0,
        checkpoint=0,
        created_at=utcnow(),
    )
    session.add(run)
    session.flush()
    return run


def interrupted_run(
    session: Session, *, source_id: str, print_: str, mapping: Mapping, now: datetime
) -> ImportRun | None:
    """An unfinished run of the same input, mapping and source that nobody is running: to resume.

    Raises ImportFailed when such a run is still being worked on (heard of within STALE_AFTER)."""
    wanted = fingerprint(source_id, mapping, print_)
    run = session.scalar(
        select(ImportRun)
        .where(ImportRun.fingerprint == wanted, ImportRun.status.in_(("queued", "running", "interrupted")))
        .order_by(ImportRun.created_at.desc())
        .limit(1)
    )
    if run is None:
        return None
    if run.status == "running" and run.heartbeat_at is not None and now - run.heartbeat_at < STALE_AFTER:
        raise ImportFailed("import_running", f"run {run.id} is importing this input now; wait for it to finish")
    return run


def get_run(session: Session, run_id: str, *, source_id: str | None = None) -> ImportRun | None:
    run = session.get(ImportRun, run_id)
    if run is None or (source_id is not None and run.source_id != source_id):
        return None
    return run


def list_runs(session: Session, *, source_id: str | None, limit: int = 50) -> Sequence[ImportRun]:
    query = select(ImportRun).order_by(ImportRun.created_at.desc()).limit(limit)
    if source_id is not None:
        query = query.where(ImportRun.source_id == source_id)
    return session.scalars(query).all()


def rejects(session: Session, run_id: str, *, after: int = 0, limit: int = 100) -> Sequence[ImportReject]:
    return session.scalars(
        select(ImportReject)
        .where(ImportReject.run_id == run_id, ImportReject.id > after)
        .order_by(ImportReject.id)
        .limit(limit)
    ).all()


def stored_message_ids(session: Session, source_id: str, message_ids: list[str]) -> set[str]:
    """Of these messageIds, those the event store holds for this source already (one query per 5,000)."""
    found: set[str] = set()
    postgres = session.get_bind().dialect.name == "postgresql"
    membership = "= ANY(:ids)" if postgres else "IN (SELECT value FROM json_each(:ids))"
    statement = text(f"SELECT message_id FROM {EVENTS.name} WHERE source_id = :source AND message_id {membership}")  # noqa: S608
    for start in range(0, len(message_ids), 5000):
        chunk = message_ids[start : start + 5000]
        ids: Any = chunk if postgres else orjson.dumps(chunk).decode()
        found.update(session.scalars(statement, {"source": source_id, "ids": ids}))
    return found


def sandboxed_duckdb(source: Input) -> duckdb.DuckDBPyConnection:
    """A DuckDB of its own for one run, that may read the input's file and nothing else: a mapping's SQL
    expressions are the analyst's, and must not read the server's files or write any."""
    connection = duckdb.connect(
        config={  # no extension is installed or loaded on demand (sqlite_scan, httpfs...)
            "threads": 2,
            "memory_limit": "1GB",
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
        }
    )
    connection.execute("SET TimeZone='UTC'")
    path = getattr(source, "path", None)
    if path is not None:
        connection.execute("SET allowed_paths=?", [[str(path)]])
    connection.execute("SET enable_external_access=false")
    connection.execute("SET lock_configuration=true")
    return connection


def prepare(connection: duckdb.DuckDBPyConnection, source: Input, mapping: Mapping) -> Query:
    """Open the input on `connection` and compile the mapping's transform over it."""
    columns = source.open(connection)
    query = compile_query(mapping, columns)
    check_query(connection, mapping, query)
    return query


@dataclass(slots=True)
class _Chunk:
    read: int
    refused: list[dict[str, Any]]
    appended: int
    checkpoint: int
    futures: list[Future[None]]


class Runner:
    """Executes one run; any number of runs may execute at once, each in its own thread or process."""

    def __init__(self, db: Database, log: EventLog, *, stop: threading.Event | None = None) -> None:
        self.db = db
        self.log = log
        self.stop = stop or threading.Event()

    def execute(self, run_id: str, source: Input, *, progress: Callable[[Progress], None] | None = None) -> ImportRun:
        """Run (or resume) `run_id` over `source` to its end; returns the run as it ended."""
        now = utcnow()
        with self.db.unit_of_work() as session:
            run = session.get(ImportRun, run_id)
            if run is None:
                raise ImportFailed("import_not_found", f"no import run {run_id}")
            if run.status in ("done", "failed"):
                return run
            run.status = "running"
            run.started_at = run.started_at or now
            run.heartbeat_at = now
            mapping = parse_mapping(run.mapping)
            rules = current_rules(session)
            checkpoint, counts = run.checkpoint, Progress(run.read, run.imported, run.rejected)
            source_id, started = run.source_id, run.started_at
        try:
            self._stream(run_id, source, mapping, rules, source_id, started, checkpoint, counts, progress)
        except (MappingError, InputError, ImportFailed, duckdb.Error) as error:
            message = str(error) if not isinstance(error, duckdb.Error) else str(error).splitlines()[0]
            return self._finish(run_id, "failed", message)
        except Exception as error:  # the run stays resumable; the log line names the type only (rows are PII)
            log.warning("import run failed", run=run_id, error=type(error).__name__)
            return self._finish(run_id, "interrupted", f"{type(error).__name__}; resume the run"[:MAX_ERROR])
        if self.stop.is_set():
            return self._finish(run_id, "interrupted", None)
        return self._finish(run_id, "done", None)

    def _stream(
        self,
        run_id: str,
        source: Input,
        mapping: Mapping,
        rules: Rules,
        source_id: str,
        started: datetime,
        checkpoint: int,
        counts: Progress,
        progress: Callable[[Progress], None] | None,
    ) -> None:
        if isinstance(source, FileInput) and source.empty():
            return  # nothing to read: done, with every count 0
        connection = sandboxed_duckdb(source)
        try:
            query = prepare(connection, source, mapping)
            with self.db.unit_of_work() as session:
                run = session.get(ImportRun, run_id)
                if run is not None and "columns" not in run.options:
                    run.options = {**run.options, "columns": query.input_columns}
            mapper = RowMapper(
                mapping=mapping,
                query=query,
                rules=rules,
                source_id=source_id,
                run_id=run_id,
                default_time=iso(started),
                received_at=iso(utcnow()),
            )
            result = connection.execute(f"{query.sql} OFFSET {int(checkpoint)}")
            position = checkpoint
            # Pipelined: a chunk's log write is in flight while the next chunk is mapped; each chunk's
            # checkpoint commits once its own write is durable, in order.
            waiting: _Chunk | None = None
            while not self.stop.is_set():
                rows = result.fetchmany(FETCH_ROWS)
                if not rows:
                    break
                chunk = self._map(run_id, source_id, mapper, rows, position)
                position += len(rows)
                if waiting is not None:
                    counts = self._settle(run_id, waiting, counts, progress)
                waiting = chunk
            if waiting is not None:
                counts = self._settle(run_id, waiting, counts, progress)
            if self.stop.is_set():
                return
            lines = source.line_rejects(connection)
        finally:
            connection.close()
        if lines:
            with self.db.unit_of_work() as session:
                added = _put_rejects(
                    count=True,
                    session=session,
                    rows=[
                        {
                            "run_id": run_id,
                            "origin": "line",
                            "position": r.line,
                            "row": None,
                            "text": r.text[:100_000],
                            "reason": r.reason,
                        }
                        for r in lines
                    ],
                )
                run = session.get(ImportRun, run_id)
                assert run is not None
                run.read += added
                run.rejected += added
            if progress is not None:
                progress(Progress(counts.read + added, counts.imported, counts.rejected + added))

    def _map(
        self, run_id: str, source_id: str, mapper: RowMapper, rows: list[tuple[Any, ...]], position: int
    ) -> _Chunk:
        """Map a chunk's rows, drop the events stored already, and submit the rest to the log."""
        events: list[dict[str, Any]] = []
        encoded: list[bytes] = []
        refused: list[dict[str, Any]] = []
        for offset, row in enumerate(rows, start=position + 1):
            try:
                event, data = mapper.event(row)
            except Rejected as reason:
                refused.append(
                    {
                        "run_id": run_id,
                        "origin": "row",
                        "position": offset,
                        "row": mapper.raw(row),
                        "text": None,
                        "reason": str(reason),
                    }
                )
                continue
            events.append(event)
            encoded.append(data)
        if events:
            with self.db.read() as session:
                present = stored_message_ids(session, source_id, [e["messageId"] for e in events])
            if present:
                kept = [(e, d) for e, d in zip(events, encoded, strict=True) if e["messageId"] not in present]
                events, encoded = [e for e, _ in kept], [d for _, d in kept]
        return _Chunk(
            read=len(rows),
            refused=refused,
            appended=len(events),
            checkpoint=position + len(rows),
            futures=self._submit(source_id, events, encoded),
        )

    def _settle(
        self, run_id: str, chunk: _Chunk, counts: Progress, progress: Callable[[Progress], None] | None
    ) -> Progress:
        """Once the chunk's events are durable, commit its rejected rows, counts and checkpoint together."""
        for future in chunk.futures:
            future.result()
        imported = chunk.read - len(chunk.refused)
        with self.db.unit_of_work() as session:
            if chunk.refused:
                _put_rejects(session, chunk.refused)
            session.execute(
                update(ImportRun)
                .where(ImportRun.id == run_id)
                .values(
                    read=ImportRun.read + chunk.read,
                    imported=ImportRun.imported + imported,
                    appended=ImportRun.appended + chunk.appended,
                    rejected=ImportRun.rejected + len(chunk.refused),
                    checkpoint=chunk.checkpoint,
                    heartbeat_at=utcnow(),
                )
            )
        counts = Progress(counts.read + chunk.read, counts.imported + imported, counts.rejected + len(chunk.refused))
        if progress is not None:
            progress(counts)
        return counts

    def _submit(self, source_id: str, events: list[dict[str, Any]], encoded: list[bytes]) -> list[Future[None]]:
        received = utcnow()
        futures: list[Future[None]] = []
        for start in range(0, len(events), RECORD_EVENTS):
            payload = b"[" + b",".join(encoded[start : start + RECORD_EVENTS]) + b"]"
            record = NewRecord(
                source_id=source_id, received_at=received, events=events[start : start + RECORD_EVENTS], payload=payload
            )
            submit = getattr(self.log, "submit", None)
            if submit is None:
                self.log.append(record)  # a log without group commit: durable on return
            else:
                futures.append(submit(record))
        return futures

    def _finish(self, run_id: str, status: str, error: str | None) -> ImportRun:
        with self.db.unit_of_work() as session:
            run = session.get(ImportRun, run_id)
            assert run is not None
            run.status = status
            run.error = seal_error(session, run_id, error) if error else None
            run.heartbeat_at = utcnow()
            if status in ("done", "failed"):
                run.finished_at = utcnow()
            return run


def reject_key(run_id: str) -> str:
    """The run's data key: its rejected rows and its error are sealed under it (destroyed with them when
    they are purged)."""
    return "rej-" + hashlib.sha256(run_id.encode()).hexdigest()[:32]


# What a failed run's error reads once it was purged with the run's rejects (stored as is, in clear).
PURGED_ERROR = "(removed with the run's rejects after their retention: it could quote the input)"


def _error_aad(run_id: str) -> bytes:
    return aad("import_runs", "error", run_id)


def seal_error(session: Session, run_id: str, error: str) -> str:
    """A run's error sealed under the run's key, bound to the run: the reader's or DuckDB's message about the
    input can quote a value of it. A run that failed before rejecting any row gets its key now."""
    clear = error.replace("\x00", "\ufffd")[:MAX_ERROR]
    return DataKeys.of(session).encrypt(reject_key(run_id), clear.encode(), _error_aad(run_id))


def run_error(keys: DataKeys, run: ImportRun) -> str | None:
    """A run's error in clear; once purged, a placeholder; when it does not open (altered, moved to another
    run, its key destroyed), why, never an exception: listings of runs go on."""
    if run.error is None or run.error == PURGED_ERROR:
        return run.error
    if not is_ciphertext(run.error):
        return "(the error cannot be opened: it is not sealed)"
    try:
        return keys.decrypt(run.error, _error_aad(run.id)).decode()
    except Undecryptable as error:
        return f"(the error cannot be opened: {error})"


def _reject_aad(field: str, run_id: str, origin: str, position: int) -> bytes:
    return aad("import_rejects", field, f"{run_id}\0{origin}\0{position}")


def _seal_rejects(session: Session, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows with their personal part (the row as read, the line as read, and the reason, which may quote
    the value that failed) sealed under the run's key."""
    keys = DataKeys.of(session)
    sealed = []
    for r in rows:
        key = reject_key(r["run_id"])
        place = (r["run_id"], r["origin"], r["position"])
        row, line = r["row"], r["text"]
        sealed.append(
            r
            | {
                "row": None
                if row is None
                else {"sealed": keys.encrypt(key, orjson.dumps(row), _reject_aad("row", *place))},
                "text": None if line is None else keys.encrypt(key, line.encode(), _reject_aad("text", *place)),
                "reason": keys.encrypt(key, r["reason"].encode(), _reject_aad("reason", *place)),
            }
        )
    return sealed


@dataclass(frozen=True, slots=True)
class RejectContent:
    row: dict[str, Any] | None
    text: str | None
    reason: str


def open_reject(keys: DataKeys, reject: ImportReject) -> RejectContent:
    """A rejected row's content and reason in clear (Undecryptable when altered, moved, or its key purged)."""
    place = (reject.run_id, reject.origin, reject.position)
    row: dict[str, Any] | None = None
    if reject.row is not None:
        row = orjson.loads(keys.decrypt(str(reject.row.get("sealed", "")), _reject_aad("row", *place)))
    text_ = None if reject.text is None else keys.decrypt(reject.text, _reject_aad("text", *place)).decode()
    reason = keys.decrypt(reject.reason, _reject_aad("reason", *place)).decode()
    return RejectContent(row=row, text=text_, reason=reason)


def _put_rejects(session: Session, rows: list[dict[str, Any]], *, count: bool = False) -> int:
    """Keep rejected rows, sealed; one kept already (a line seen again by a resumed run) is left as it is.
    With `count`, returns how many were new."""
    rows = _seal_rejects(session, rows)
    dialect = session.get_bind().dialect.name
    statement = (pg_insert if dialect == "postgresql" else sqlite_insert)(REJECTS).on_conflict_do_nothing(
        index_elements=["run_id", "origin", "position"]
    )

    def kept() -> int:
        where = (REJECTS.c.run_id == rows[0]["run_id"]) & (REJECTS.c.origin == rows[0]["origin"])
        return int(session.scalar(select(func.count()).select_from(REJECTS).where(where)) or 0)

    before = kept() if count else 0
    session.execute(statement, rows)
    return kept() - before if count else len(rows)


def rows_of(connection: duckdb.DuckDBPyConnection, query: Query, limit: int) -> Iterator[tuple[Any, ...]]:
    yield from connection.execute(f"{query.sql} LIMIT {int(limit)}").fetchall()


# -- preview ---------------------------------------------------------------------------------------------
@dataclass(slots=True)
class PreviewRow:
    position: int
    input: dict[str, Any]
    values: dict[str, Any]
    event: dict[str, Any] | None
    error: str | None
    profiles: list[str]
    candidates: list[dict[str, Any]] = field(default_factory=list)  # probabilistic: profile_id, probability


@dataclass(slots=True)
class Preview:
    columns: list[str]
    rows: list[PreviewRow]
    line_errors: list[dict[str, Any]]


def preview(session: Session, *, source_id: str, mapping: Mapping, source: Input, limit: int) -> Preview:
    """The first `limit` rows as they would be imported, with their errors and the profiles they would
    join. Writes nothing."""
    if isinstance(source, FileInput) and source.empty():
        return Preview(columns=[], rows=[], line_errors=[])
    rules = current_rules(session)
    now = iso(utcnow())
    connection = sandboxed_duckdb(source)
    try:
        query = prepare(connection, source, mapping)
        mapper = RowMapper(
            mapping=mapping,
            query=query,
            rules=rules,
            source_id=source_id,
            run_id="preview",
            default_time=now,
            received_at=now,
        )
        rows: list[PreviewRow] = []
        for position, row in enumerate(rows_of(connection, query, limit), start=1):
            try:
                event, _ = mapper.event(row)
            except Rejected as reason:
                rows.append(PreviewRow(position, mapper.raw(row), mapper.values(row), None, str(reason), []))
                continue
            rows.append(
                PreviewRow(
                    position,
                    mapper.raw(row),
                    mapper.values(row),
                    event,
                    None,
                    _matches(session, rules, event),
                    _candidates(session, event),
                )
            )
        lines = [{"line": r.line, "text": r.text[:1000], "reason": r.reason} for r in source.line_rejects(connection)]
    finally:
        connection.close()
    return Preview(columns=query.input_columns, rows=rows, line_errors=lines[:limit])


def _candidates(session: Session, event: dict[str, Any]) -> list[dict[str, Any]]:
    """The profiles probabilistic matching finds most like the row's traits (none without a trained model)."""
    from accord.identity import linkage

    traits = event.get("traits") if event.get("type") == "identify" else None
    if not isinstance(traits, dict) or not traits:
        return []
    try:
        _, found = linkage.match(session, traits, limit=3, min_probability=0.5)
    except linkage.LinkageError:
        return []
    return [{"profile_id": c.profile_id, "probability": round(c.probability, 4)} for c in found]


def _matches(session: Session, rules: Rules, event: dict[str, Any]) -> list[str]:
    from accord.identity.blind import protect
    from accord.identity.models import Identity
    from accord.security.datakeys import keyring_of

    found: list[str] = []
    for kind, value in protect(rules, keyring_of(session), rules.identifiers(event)):
        profile_id = session.scalar(select(Identity.profile_id).where(Identity.type == kind, Identity.value == value))
        if profile_id is not None and profile_id not in found:
            found.append(profile_id)
    return found


# -- replay ----------------------------------------------------------------------------------------------
def start_replay(session: Session, *, run_id: str, mapping: Mapping | None) -> tuple[ImportRun, Input]:
    """A new run over the rows `run_id` rejected and nobody has replayed yet, through `mapping` (default:
    the run's own, for rows rejected because of identity rules since changed, say)."""
    parent = session.get(ImportRun, run_id)
    if parent is None:
        raise ImportFailed("import_not_found", f"no import run {run_id}")
    if parent.status not in ("done", "failed"):
        raise ImportFailed("import_running", f"run {run_id} has not finished; replay its rejects afterwards")
    waiting = session.scalars(
        select(ImportReject)
        .where(ImportReject.run_id == run_id, ImportReject.replayed_by.is_(None), ImportReject.row.is_not(None))
        .order_by(ImportReject.id)
    ).all()
    if not waiting:
        raise ImportFailed("nothing_to_replay", f"run {run_id} has no rejected rows waiting to be replayed")
    mapping = mapping or parse_mapping(parent.mapping)
    keys = DataKeys.of(session)
    rows = [open_reject(keys, r).row or {} for r in waiting]
    columns = list(parent.options.get("columns") or [])
    source = RowsInput(rows=rows, columns=columns, location=f"rejects of {run_id}")
    run = create_run(
        session,
        source_id=parent.source_id,
        mapping=mapping,
        kind="replay",
        location=source.location,
        fmt=None,
        print_=source.fingerprint(),
        options={"columns": columns, "rejects": [r.id for r in waiting]},
        parent_id=run_id,
    )
    return run, source


def replay_input(session: Session, run: ImportRun) -> Input:
    """The input of a replay run, to resume it: the parent's rejects it took."""
    ids = list(run.options.get("rejects") or [])
    rows = session.scalars(select(ImportReject).where(ImportReject.id.in_(ids)).order_by(ImportReject.id)).all()
    keys = DataKeys.of(session)
    return RowsInput(
        rows=[open_reject(keys, r).row or {} for r in rows],
        columns=list(run.options.get("columns") or []),
        location=run.location,
    )


def mark_replayed(session: Session, run: ImportRun) -> None:
    ids = list(run.options.get("rejects") or [])
    if ids and run.status == "done":
        session.execute(update(ImportReject).where(ImportReject.id.in_(ids)).values(replayed_by=run.id))


def preview_document(shown: Preview) -> dict[str, Any]:
    return {
        "columns": shown.columns,
        "rows": [
            {
                "position": r.position,
                "input": r.input,
                "values": r.values,
                "event": r.event,
                "error": r.error,
                "profiles": r.profiles,
                "candidates": r.candidates,
            }
            for r in shown.rows
        ],
        "line_errors": shown.line_errors,
    }


def reject_document(keys: DataKeys, reject: ImportReject) -> dict[str, Any]:
    content = open_reject(keys, reject)
    return {
        "id": reject.id,
        "origin": reject.origin,
        "position": reject.position,
        "row": content.row,
        "text": content.text,
        "reason": content.reason,
        "replayed_by": reject.replayed_by,
    }


def input_for(session: Session, run: ImportRun) -> Input:
    """The input a run reads, rebuilt from what the run stored: to resume it."""
    if run.kind in ("file", "upload"):
        mapping = parse_mapping(run.mapping)
        return FileInput.at(run.location, declared=cast(Any, run.format), csv=mapping.csv, kind=run.kind)
    if run.kind == "replay":
        return replay_input(session, run)
    raise ImportFailed("import_not_resumable", f"run {run.id} reads {run.kind}; import it again to carry on")


def purge_rejects(session: Session, *, finished_before: datetime) -> int:
    """Delete the rejected rows of runs that finished before `finished_before` (the rows may hold personal
    data; the runs keep their counts), replace the sealed errors of those runs by PURGED_ERROR (they may
    quote the input) and destroy the runs' keys. Returns how many rows were deleted."""
    finished = (ImportRun.finished_at.is_not(None), ImportRun.finished_at < finished_before)
    old = select(ImportRun.id).where(*finished)
    runs = set(session.scalars(select(REJECTS.c.run_id).where(REJECTS.c.run_id.in_(old)).distinct()))
    sealed = (*finished, ImportRun.error.startswith(PREFIX, autoescape=True))
    runs.update(session.scalars(select(ImportRun.id).where(*sealed)))
    result = session.execute(REJECTS.delete().where(REJECTS.c.run_id.in_(old)))
    session.execute(update(ImportRun).where(*sealed).values(error=PURGED_ERROR))
    destroy(session, [reject_key(run_id) for run_id in sorted(runs)])
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
