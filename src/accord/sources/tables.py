"""The database connector: a table or query in PostgreSQL, MySQL/MariaDB or SQLite, incremental by a
cursor column.

A run first exports the rows to read (those whose cursor is at or after where the last finished run of
the same table and mapping stopped) into a CSV file in the data dir, streaming them with a server-side
cursor, inside a read-only transaction. It then imports that file like any other, with the same
checkpoints, rejects and resume. `>=` rather than `>`: rows written later with the last run's final
cursor value are read again, and dedupe by messageId makes that harmless.
"""

from __future__ import annotations

import csv
import hashlib
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from accord.db.base import utcnow
from accord.db.engine import Database
from accord.log.port import EventLog
from accord.sources import imports
from accord.sources.connectors import FileInput, InputError
from accord.sources.mapping import CsvOptions, Mapping
from accord.sources.models import ImportRun

DRIVERS = {"postgresql": "postgresql+psycopg", "mysql": "mysql+pymysql", "mariadb": "mysql+pymysql", "sqlite": "sqlite"}
KINDS = {"postgresql": "postgresql", "mysql": "mysql", "mariadb": "mysql", "sqlite": "sqlite"}
STREAM_ROWS = 5000
MAX_QUERY = 20_000


@dataclass(frozen=True, slots=True)
class TableSpec:
    """What to read: a table (optionally schema-qualified) or a SELECT query, and the cursor column."""

    url: str
    table: str | None
    query: str | None
    cursor: str | None

    def database_url(self) -> URL:
        try:
            url = make_url(self.url)
        except ArgumentError:
            raise InputError(
                "the database URL is not valid (postgresql://, mysql://, mariadb:// or sqlite:///)"
            ) from None
        backend = url.get_backend_name()
        if backend not in DRIVERS:
            raise InputError(f"databases are postgresql, mysql, mariadb or sqlite, not {backend[:40]!r}")
        return url.set(drivername=DRIVERS[backend])

    @property
    def kind(self) -> str:
        return KINDS[make_url(self.url).get_backend_name()]

    def location(self) -> str:
        """Where it reads, without credentials."""
        url = self.database_url().render_as_string(hide_password=True)
        what = f"table {self.table}" if self.table else f"query {self.query[:200] if self.query else ''}"
        return f"{url} {what}" + (f" by {self.cursor}" if self.cursor else "")

    def fingerprint(self) -> str:
        """Table and mapping identify an incremental series of runs (the credentials do not)."""
        return hashlib.sha256(orjson.dumps([self.location()])).hexdigest()


def encode_cursor(value: Any) -> str:
    """A cursor value as stored with a run: JSON, typed so that it binds back as what it was."""
    if isinstance(value, datetime):
        return orjson.dumps({"datetime": value.isoformat()}).decode()
    if isinstance(value, date):
        return orjson.dumps({"date": value.isoformat()}).decode()
    if isinstance(value, Decimal):
        return orjson.dumps({"decimal": str(value)}).decode()
    if isinstance(value, bool | int | float | str):
        return orjson.dumps(value).decode()
    return orjson.dumps(str(value)).decode()


def decode_cursor(stored: str) -> Any:
    value = orjson.loads(stored)
    if isinstance(value, dict):
        if "datetime" in value:
            return datetime.fromisoformat(value["datetime"])
        if "date" in value:
            return date.fromisoformat(value["date"])
        if "decimal" in value:
            return Decimal(value["decimal"])
    return value


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes | memoryview):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    return str(value).replace("\x00", "\ufffd")


def _read_only(connection: Connection, kind: str) -> None:
    if kind == "postgresql":
        connection.execute(text("SET TRANSACTION READ ONLY"))
    elif kind == "sqlite":
        connection.exec_driver_sql("PRAGMA query_only = ON")


@dataclass(slots=True)
class Export:
    rows: int
    columns: list[str]
    last_cursor: str | None  # encoded; None when no row was read


def export(spec: TableSpec, target: Path, *, since: str | None) -> Export:
    """Stream the rows to read into a CSV file at `target` (header first, every value as text)."""
    if (spec.table is None) == (spec.query is None):
        raise InputError("give a table or a query, not both")
    if spec.query is not None and (len(spec.query) > MAX_QUERY or ";" in spec.query.rstrip().rstrip(";")):
        raise InputError(f"the query must be one SELECT of at most {MAX_QUERY} characters")
    url = spec.database_url()
    kind = spec.kind
    engine = create_engine(url)
    try:
        quote = engine.dialect.identifier_preparer.quote
        if spec.table is not None:
            relation = ".".join(quote(part) for part in spec.table.split("."))
        else:
            relation = f"({spec.query.rstrip().rstrip(';') if spec.query else ''}) AS accord_source"
        sql = f"SELECT * FROM {relation}"  # noqa: S608 (names quoted by the dialect; the query is the analyst's)
        params: dict[str, Any] = {}
        if spec.cursor is not None:
            column = quote(spec.cursor)
            if since is not None:
                sql += f" WHERE {column} >= :since"
                params["since"] = decode_cursor(since)
            sql += f" ORDER BY {column}"
        target.parent.mkdir(parents=True, exist_ok=True)
        rows = 0
        last: Any = None
        with engine.connect() as connection:
            if kind == "mysql":
                connection.exec_driver_sql("SET SESSION TRANSACTION READ ONLY")  # for the transactions after
                connection.commit()
            with connection.begin():
                _read_only(connection, kind)
                result = connection.execution_options(stream_results=True, yield_per=STREAM_ROWS).execute(
                    text(sql), params
                )
                columns = [str(c) for c in result.keys()]  # noqa: SIM118 (a result, not a dict)
                if spec.cursor is not None and spec.cursor not in columns:
                    raise InputError(f"the cursor column {spec.cursor!r} is not among the columns read")
                at = columns.index(spec.cursor) if spec.cursor is not None else -1
                with target.open("w", newline="", encoding="utf-8") as out:
                    writer = csv.writer(out, quoting=csv.QUOTE_MINIMAL)
                    writer.writerow(columns)
                    for partition in result.partitions():
                        writer.writerows([_text(v) for v in row] for row in partition)
                        rows += len(partition)
                        if at >= 0:
                            last = next((r[at] for r in reversed(partition) if r[at] is not None), last)
    except SQLAlchemyError as error:
        raise InputError(
            f"the database refused: {str(error.orig if hasattr(error, 'orig') else error)[:300]}"
        ) from None
    finally:
        engine.dispose()
    return Export(rows=rows, columns=columns, last_cursor=encode_cursor(last) if last is not None else since)


def run_table_import(
    db: Database,
    log: EventLog,
    *,
    source_id: str,
    mapping: Mapping,
    spec: TableSpec,
    data_dir: Path,
    full: bool = False,
    stop: threading.Event | None = None,
    progress: Callable[[imports.Progress], None] | None = None,
) -> ImportRun:
    """Import the table's new rows (all of them with `full`), or resume the interrupted run of it."""
    print_ = spec.fingerprint()
    wanted = imports.fingerprint(source_id, mapping, print_)
    with db.unit_of_work() as session:
        run = imports.interrupted_run(session, source_id=source_id, print_=print_, mapping=mapping, now=utcnow())
        if run is not None and run.options.get("export") and Path(run.options["export"]).is_file():
            resumed: str | None = run.id
            export_path = Path(run.options["export"])
        else:
            resumed = None
            previous = session.scalar(
                select(ImportRun.cursor)
                .where(ImportRun.fingerprint == wanted, ImportRun.status == "done", ImportRun.cursor.is_not(None))
                .order_by(ImportRun.created_at.desc())
                .limit(1)
            )
            since = None if full or spec.cursor is None else previous
            run = imports.create_run(
                session,
                source_id=source_id,
                mapping=mapping,
                kind=spec.kind,
                location=spec.location(),
                fmt="csv",
                print_=print_,
                options={"since": since, "cursor": spec.cursor},
            )
            export_path = data_dir / "imports" / run.id / "export.csv"
        run_id = run.id
    if resumed is None:
        try:
            done = export(spec, export_path, since=run.options.get("since"))
        except InputError as error:
            shutil.rmtree(export_path.parent, ignore_errors=True)
            with db.unit_of_work() as session:
                failed = session.get(ImportRun, run_id)
                assert failed is not None
                failed.status, failed.finished_at = "failed", utcnow()
                failed.error = imports.seal_error(session, run_id, str(error))
                return failed
        with db.unit_of_work() as session:
            started = session.get(ImportRun, run_id)
            assert started is not None
            started.options = {**started.options, "export": str(export_path), "cursor_to": done.last_cursor}
    found = FileInput.at(export_path, declared="csv", csv=CsvOptions(), kind=spec.kind)
    ended = imports.Runner(db, log, stop=stop).execute(run_id, found, progress=progress)
    if ended.status in ("done", "failed"):
        with db.unit_of_work() as session:
            final = session.get(ImportRun, run_id)
            assert final is not None
            if final.status == "done":
                final.cursor = final.options.get("cursor_to")
            ended = final
        shutil.rmtree(export_path.parent, ignore_errors=True)
    return ended
