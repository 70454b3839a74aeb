"""The import commands' bodies (`accord import`, `accord imports ...`); accord/cli.py declares them."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import typer
from rich.console import Console
from rich.progress import Progress as Bar
from rich.progress import SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy.orm import Session

from accord.config import Settings
from accord.db import migrate
from accord.db.base import utcnow
from accord.logs import configure_logging
from accord.runtime import Runtime
from accord.security.datakeys import DataKeys
from accord.sources import imports
from accord.sources import service as sources
from accord.sources.connectors import FileInput, InputError
from accord.sources.mapping import Format, Mapping, MappingError, load_mapping
from accord.sources.models import ImportRun

FORMATS = ("csv", "parquet", "jsonl")


def _fail(console: Console, message: str) -> None:
    console.print(f"[red]error:[/red] {message}", markup=True, highlight=False)
    raise typer.Exit(1)


@contextmanager
def _runtime() -> Iterator[Runtime]:
    settings = Settings()
    configure_logging(settings.log_level)
    rt = Runtime.create(settings)
    try:
        migrate.upgrade(rt.db)
        yield rt
    finally:
        rt.close()


def _mapping(path: Path, console: Console) -> Mapping:
    try:
        return load_mapping(path.read_bytes()[: 1024 * 1024])
    except OSError as error:
        _fail(console, f"cannot read the mapping {str(path)[:200]!r}: {error.strerror or type(error).__name__}")
    except MappingError as error:
        _fail(console, f"{path.name}: {error}")
    raise AssertionError  # unreachable: _fail exits


def run_summary(keys: DataKeys, run: ImportRun) -> dict[str, Any]:
    """A run as printed; its error decrypted (sealed under the run's key: it may quote the input)."""
    return {
        "run_id": run.id,
        "source_id": run.source_id,
        "kind": run.kind,
        "status": run.status,
        "location": run.location,
        "mapping": f"{run.mapping_name} v{run.mapping_version}",
        "read": run.read,
        "imported": run.imported,
        "rejected": run.rejected,
        "appended": run.appended,
        "parent_id": run.parent_id,
        "error": imports.run_error(keys, run),
        "created_at": run.created_at.isoformat(),
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
    }


def _summary(rt: Runtime, run: ImportRun) -> dict[str, Any]:
    with rt.db.read() as session:
        return run_summary(DataKeys.of(session), run)


def _print(data: dict[str, Any], as_json: bool, console: Console) -> None:
    if as_json:
        typer.echo(json.dumps(data))
        return
    for key, value in data.items():
        if value is not None:
            console.print(f"[bold]{key}[/bold]: {value}", highlight=False)


def import_file(
    file: Path,
    mapping_path: Path,
    *,
    source: str | None,
    file_format: str | None,
    preview: bool,
    limit: int,
    resume: str | None,
    as_json: bool,
    console: Console,
) -> None:
    mapping = _mapping(mapping_path, console)
    if file_format is not None and file_format not in FORMATS:
        _fail(console, f"--format must be one of {', '.join(FORMATS)}")
    try:
        found = FileInput.at(file, declared=cast(Format | None, file_format) or mapping.format, csv=mapping.csv)
    except (InputError, OSError) as error:
        _fail(console, str(error))
    name = source or mapping.source or mapping.name
    with _runtime() as rt:
        with rt.db.unit_of_work() as session:
            row = imports.find_source(session, name)
            source_id = row.id if row is not None else sources.create_source(session, name=name).id
        if preview:
            _preview(rt, source_id, mapping, found, limit, as_json, console)
            return
        run_id = _start(rt, source_id, mapping, found, resume, console)
        stop = threading.Event()
        previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            run = _execute(rt, run_id, found, stop, show=not as_json)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        data = _summary(rt, run)
    _print(data, as_json, console)
    if run.status == "failed":
        raise typer.Exit(1)
    if run.status == "interrupted":
        raise typer.Exit(130)


def _start(
    rt: Runtime, source_id: str, mapping: Mapping, found: FileInput, resume: str | None, console: Console
) -> str:
    print_ = found.fingerprint()
    try:
        with rt.db.unit_of_work() as session:
            if resume is not None:
                run = imports.get_run(session, resume)
                if run is None:
                    _fail(console, f"no import run {resume[:60]!r}")
                assert run is not None
                if run.fingerprint != imports.fingerprint(source_id, mapping, print_):
                    _fail(
                        console, f"run {run.id} imported another file, mapping or source; it cannot resume with these"
                    )
                return run.id
            run = imports.interrupted_run(session, source_id=source_id, print_=print_, mapping=mapping, now=utcnow())
            if run is not None:
                console.print(f"resuming run {run.id} from row {run.checkpoint}", highlight=False)
                return run.id
            kind = "file"
            return imports.create_run(
                session,
                source_id=source_id,
                mapping=mapping,
                kind=kind,
                location=str(found.path.resolve()),
                fmt=found.format,
                print_=print_,
            ).id
    except imports.ImportFailed as error:
        _fail(console, error.message)
    raise AssertionError


def _execute(rt: Runtime, run_id: str, found: FileInput, stop: threading.Event, *, show: bool) -> ImportRun:
    runner = imports.Runner(rt.db, rt.log, stop=stop)
    if not show:
        return runner.execute(run_id, found)
    started = time.monotonic()
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Bar(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(f"importing {found.path.name}", total=None)

        def progress(counts: imports.Progress) -> None:
            rate = counts.read / max(time.monotonic() - started, 1e-6)
            bar.update(
                task,
                description=f"{found.path.name}: read {counts.read:,}  imported {counts.imported:,}  "
                f"rejected {counts.rejected:,}  ({rate:,.0f} rows/s)",
            )

        return runner.execute(run_id, found, progress=progress)


def _preview(
    rt: Runtime, source_id: str, mapping: Mapping, found: FileInput, limit: int, as_json: bool, console: Console
) -> None:
    try:
        with rt.db.read() as session:
            shown = imports.preview(session, source_id=source_id, mapping=mapping, source=found, limit=limit)
    except (MappingError, InputError) as error:
        _fail(console, str(error))
    data = imports.preview_document(shown)
    if as_json:
        typer.echo(json.dumps(data))
        return
    table = Table("#", "values", "error", "profiles")
    for row in shown.rows:
        values = ", ".join(f"{k}={v!r}" for k, v in row.values.items())
        table.add_row(str(row.position), values, row.error or "", ", ".join(row.profiles) or "new")
    console.print(table)
    for line in shown.line_errors:
        console.print(f"line {line['line']}: {line['reason']}", highlight=False)


def list_runs(*, source: str | None, limit: int, as_json: bool, console: Console) -> None:
    with _runtime() as rt, rt.db.read() as session:
        source_id = None
        if source is not None:
            row = imports.find_source(session, source)
            if row is None:
                _fail(console, f"no source {source[:200]!r}")
            source_id = row.id if row else None
        keys = DataKeys.of(session)
        rows = [run_summary(keys, r) for r in imports.list_runs(session, source_id=source_id, limit=limit)]
    if as_json:
        typer.echo(json.dumps(rows))
        return
    table = Table("run", "status", "location", "read", "imported", "rejected", "created")
    for r in rows:
        shown = ("run_id", "status", "location", "read", "imported", "rejected", "created_at")
        table.add_row(*(str(r[k]) for k in shown))
    console.print(table)


def show_run(run_id: str, *, as_json: bool, console: Console) -> None:
    with _runtime() as rt, rt.db.read() as session:
        run = imports.get_run(session, run_id[:60])
        if run is None:
            _fail(console, f"no import run {run_id[:60]!r}")
        assert run is not None
        data = run_summary(DataKeys.of(session), run)
    _print(data, as_json, console)


def show_rejects(run_id: str, *, limit: int, as_json: bool, console: Console) -> None:
    with _runtime() as rt, rt.db.read() as session:
        if imports.get_run(session, run_id[:60]) is None:
            _fail(console, f"no import run {run_id[:60]!r}")
        keys = DataKeys.of(session)
        rows = [imports.reject_document(keys, r) for r in imports.rejects(session, run_id, limit=limit)]
    if as_json:
        typer.echo(json.dumps(rows))
        return
    table = Table("id", "where", "reason", "replayed by")
    for r in rows:
        table.add_row(str(r["id"]), f"{r['origin']} {r['position']}", r["reason"], r["replayed_by"] or "")
    console.print(table)


def replay(run_id: str, mapping_path: Path | None, *, as_json: bool, console: Console) -> None:
    mapping = _mapping(mapping_path, console) if mapping_path is not None else None
    with _runtime() as rt:
        try:
            with rt.db.unit_of_work() as session:
                run, rows = imports.start_replay(session, run_id=run_id[:60], mapping=mapping)
                new_id = run.id
        except (imports.ImportFailed, MappingError) as error:
            _fail(console, getattr(error, "message", str(error)))
        done = imports.Runner(rt.db, rt.log).execute(new_id, rows)
        with rt.db.unit_of_work() as session:
            ended = imports.get_run(session, new_id)
            assert ended is not None
            imports.mark_replayed(session, ended)
        data = _summary(rt, done)
    _print(data, as_json, console)
    if done.status == "failed":
        raise typer.Exit(1)


def resume(run_id: str, *, as_json: bool, console: Console) -> None:
    with _runtime() as rt:
        try:
            with rt.db.read() as session:
                run = imports.get_run(session, run_id[:60])
                if run is None:
                    _fail(console, f"no import run {run_id[:60]!r}")
                assert run is not None
                if run.status in ("done", "failed"):
                    _fail(console, f"run {run.id} has {'finished' if run.status == 'done' else 'failed'}")
                found = imports.input_for(session, run)
                resumed = run.id
        except (imports.ImportFailed, InputError) as error:
            _fail(console, getattr(error, "message", str(error)))
        done = imports.Runner(rt.db, rt.log).execute(resumed, found)
        if done.kind == "replay":
            with rt.db.unit_of_work() as session:
                imports.mark_replayed(session, done)
        data = _summary(rt, done)
    _print(data, as_json, console)
    if done.status != "done":
        raise typer.Exit(1)


def import_table(
    url: str,
    mapping_path: Path,
    *,
    table: str | None,
    query: str | None,
    cursor: str | None,
    source: str | None,
    full: bool,
    as_json: bool,
    console: Console,
) -> None:
    from accord.sources import tables

    mapping = _mapping(mapping_path, console)
    spec = tables.TableSpec(url=url, table=table, query=query, cursor=cursor)
    if (table is None) == (query is None):
        _fail(console, "give --table or --query (one of them)")
    try:
        spec.database_url()
    except InputError as error:
        _fail(console, str(error))
    name = source or mapping.source or mapping.name
    with _runtime() as rt:
        with rt.db.unit_of_work() as session:
            row = imports.find_source(session, name)
            source_id = row.id if row is not None else sources.create_source(session, name=name).id
        stop = threading.Event()
        previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            run = tables.run_table_import(
                rt.db,
                rt.log,
                source_id=source_id,
                mapping=mapping,
                spec=spec,
                data_dir=rt.settings.data_dir,
                full=full,
                stop=stop,
            )
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        data = _summary(rt, run)
    _print(data, as_json, console)
    if run.status == "failed":
        raise typer.Exit(1)
    if run.status == "interrupted":
        raise typer.Exit(130)


# -- SQL computed traits and schedules ---------------------------------------------------------------------
def audit_change(rt: Runtime, session: Session, action: str, target: str, **details: Any) -> None:
    """Record a change made by a command (actor `cli`), in its transaction, as the API records its own."""
    from accord.audit.service import CLI, record_audit

    record_audit(
        session,
        key=rt.signing,
        actor=CLI,
        action=action,
        target_type=action.split(".", 1)[0],
        target_id=target,
        details=details,
    )


def define_sql_trait(rt: Runtime, session: Session, *, key: str, sql: str, pii: bool) -> None:
    """Define or change a SQL computed trait (a new version only when something differs), audited."""
    from accord.sources import sql_traits
    from accord.sources.models import SqlTrait

    stored = session.get(SqlTrait, key) if sql_traits.KEY.match(key) else None
    before = None if stored is None else stored.version
    row = sql_traits.save(session, key=key, sql=sql, pii=pii, description=None, actor="cli", now=utcnow(), create=None)
    if row.version != before:
        action = "sql_trait.create" if before is None else "sql_trait.update"
        audit_change(rt, session, action, key, version=row.version, pii=row.pii)


def _schedule_document(row: Any) -> dict[str, Any]:
    spec = dict(row.spec)
    spec.pop("mapping", None)
    return {
        "name": row.name,
        "kind": row.kind,
        "every_minutes": row.every_seconds // 60,
        "next_at": row.next_at.isoformat(),
        "enabled": row.enabled,
        "last_started_at": row.last_started_at.isoformat() if row.last_started_at else None,
        "last_status": row.last_status,
        "last_result": row.last_result,
        "spec": spec,
    }


def schedule_table(
    name: str,
    every: int,
    url_env: str,
    mapping_path: Path,
    *,
    table: str | None,
    query: str | None,
    cursor: str | None,
    source: str | None,
    as_json: bool,
    console: Console,
) -> None:
    from accord.sources import schedules

    mapping = _mapping(mapping_path, console)
    with _runtime() as rt:
        try:
            with rt.db.unit_of_work() as session:
                label = source or mapping.source or mapping.name
                row = imports.find_source(session, label)
                source_id = row.id if row is not None else sources.create_source(session, name=label).id
                added = schedules.add_table(
                    session,
                    name=name,
                    every_seconds=every * 60,
                    url_env=url_env,
                    table=table,
                    query=query,
                    cursor=cursor,
                    mapping=mapping,
                    source_id=source_id,
                    now=utcnow(),
                )
                audit_change(rt, session, "schedule.create", name, kind="table", version=added.version)
                data = _schedule_document(added)
        except schedules.ScheduleError as error:
            _fail(console, str(error))
    _print(data, as_json, console)


def schedule_computed(
    name: str, every: int, trait: str, sql: str | None, *, pii: bool, as_json: bool, console: Console
) -> None:
    from accord.sources import schedules, sql_traits

    with _runtime() as rt:
        try:
            with rt.db.unit_of_work() as session:
                if sql is not None:
                    define_sql_trait(rt, session, key=trait, sql=sql, pii=pii)
                added = schedules.add_computed(session, name=name, every_seconds=every * 60, trait=trait, now=utcnow())
                audit_change(rt, session, "schedule.create", name, kind="computed", version=added.version)
                data = _schedule_document(added)
        except (schedules.ScheduleError, sql_traits.SqlTraitError) as error:
            _fail(console, str(error))
        if sql is not None and pii:
            rt.db.checkpoint_wal()  # values moved out of `traits` leave no older page behind (SQLite)
    _print(data, as_json, console)


def schedule_run(name: str, *, as_json: bool, console: Console) -> None:
    from accord.sources import schedules

    with _runtime() as rt:
        try:
            with rt.db.unit_of_work() as session:
                audit_change(rt, session, "schedule.run", name, version=schedules.get(session, name).version)
            done = schedules.run_now(rt.db, rt.log, name=name, data_dir=rt.settings.data_dir)
        except schedules.ScheduleError as error:
            _fail(console, str(error))
    _print({"name": done.name, "status": done.status, "result": done.result}, as_json, console)
    if done.status != "done":
        raise typer.Exit(1)


def schedule_list(*, as_json: bool, console: Console) -> None:
    from accord.sources import schedules

    with _runtime() as rt, rt.db.read() as session:
        rows = [_schedule_document(r) for r in schedules.list_schedules(session)]
    if as_json:
        typer.echo(json.dumps(rows))
        return
    table = Table("name", "kind", "every (min)", "next", "last", "result")
    for r in rows:
        table.add_row(
            r["name"], r["kind"], str(r["every_minutes"]), r["next_at"], r["last_status"] or "", r["last_result"] or ""
        )
    console.print(table)


def schedule_remove(name: str, *, console: Console) -> None:
    from accord.sources import schedules

    with _runtime() as rt:
        try:
            with rt.db.unit_of_work() as session:
                schedules.remove(session, name)
                audit_change(rt, session, "schedule.delete", name)
        except schedules.ScheduleError as error:
            _fail(console, str(error))
    console.print(f"schedule {name!r} removed", highlight=False)


def schedule_run_due(*, as_json: bool, console: Console) -> None:
    from datetime import timedelta

    from accord.sources import schedules

    with _runtime() as rt:
        done = schedules.run_due(rt.db, rt.log, data_dir=rt.settings.data_dir)
        with rt.db.unit_of_work() as session:
            imports.purge_rejects(session, finished_before=utcnow() - timedelta(days=rt.settings.import_rejects_days))
    rows = [{"name": o.name, "status": o.status, "result": o.result} for o in done]
    if as_json:
        typer.echo(json.dumps(rows))
        return
    for row in rows:
        console.print(f"{row['name']}: {row['status']} ({row['result']})", highlight=False)
