"""`accord segment ...`: define, read and delete segments; backfill and sweep. Thin: services do the work."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from accord.audit.service import record_command
from accord.config import Settings
from accord.db import migrate as migrations
from accord.db.base import utcnow
from accord.db.engine import Database
from accord.logs import configure_logging
from accord.segments import conditions, service
from accord.segments.models import Segment

app = typer.Typer(help="Segments: define, list, show, delete; backfill and sweep.", no_args_is_help=True)
console = Console()
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
MAX_DOCUMENT = 64 * 1024


@contextmanager
def database() -> Iterator[Database]:
    settings = Settings()
    configure_logging(settings.log_level)
    db = Database.from_settings(settings)
    try:
        migrations.upgrade(db)
        yield db
    finally:
        db.dispose()


def fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(1)


def read_document(source: str) -> Any:
    """A JSON condition: inline, @file, or - for standard input."""
    try:
        if source == "-":
            text = sys.stdin.read(MAX_DOCUMENT + 1)
        elif source.startswith("@"):
            text = Path(source[1:]).read_text()[: MAX_DOCUMENT + 1]
        else:
            text = source
        if len(text) > MAX_DOCUMENT:
            fail(f"a condition is at most {MAX_DOCUMENT} bytes")
        return json.loads(text)
    except (OSError, ValueError) as error:
        fail(f"cannot read a JSON condition from {source[:200]!r}: {type(error).__name__}")


def _data(row: Segment, size: int) -> dict[str, Any]:
    return {
        "key": row.key,
        "name": row.name,
        "description": row.description,
        "version": row.version,
        "condition": row.condition,
        "backfill": {"status": row.status, "done": row.backfill_done, "total": row.backfill_total},
        "size": size,
        "updated_at": row.updated_at.isoformat(),
        "actor": row.actor,
    }


def _backfill(db: Database, key: str, *, quiet: bool) -> None:
    with Progress(console=console, disable=quiet, transient=True) as bar:
        task = bar.add_task(f"backfilling {key}", total=None)
        while True:
            with db.unit_of_work() as session:
                step = service.backfill_step(session, key, now=utcnow())
            bar.update(task, completed=step.done, total=max(step.total, step.done))
            if step.finished:
                return


def _show(db: Database, key: str, as_json: bool) -> None:
    with db.read() as session:
        row = service.get(session, key)
        data = _data(row, service.size(session, key))
    if as_json:
        typer.echo(json.dumps(data))
    else:
        for name, value in data.items():
            console.print(f"[bold]{name}[/bold]: {json.dumps(value) if isinstance(value, dict) else value}")


def _save(
    key: str,
    condition: str | None,
    name: str | None,
    description: str | None,
    backfill: bool,
    as_json: bool,
    *,
    new: bool,
) -> None:
    document = read_document(condition) if condition is not None else None
    with database() as db:
        try:
            with db.unit_of_work() as session:
                if new:
                    row = service.create(
                        session,
                        key=key,
                        name=name or "",
                        description=description or "",
                        condition=document,
                        actor="cli",
                        now=utcnow(),
                    )
                else:
                    row = service.change(
                        session,
                        key=key,
                        name=name,
                        description=description,
                        condition=document,
                        actor="cli",
                        now=utcnow(),
                    )
                record_command(session, f"segment.{'create' if new else 'update'}", "segment", key, version=row.version)
            if backfill:
                _backfill(db, key, quiet=as_json)
            _show(db, key, as_json)
        except (service.SegmentError, conditions.ConditionError) as error:
            fail(str(error))


@app.command("create")
def create(
    key: Annotated[str, typer.Argument(help="The segment's key (a-z, 0-9, _ . -)")],
    condition: Annotated[str, typer.Option(help="The condition: JSON, @file or - for standard input")],
    name: Annotated[str | None, typer.Option(help="A readable name")] = None,
    description: Annotated[str | None, typer.Option(help="What the segment is for")] = None,
    backfill: Annotated[bool, typer.Option("--backfill/--no-backfill", help="Evaluate every profile now")] = True,
    as_json: JsonFlag = False,
) -> None:
    """Create a segment and backfill it from the stored profiles (with progress)."""
    _save(key, condition, name, description, backfill, as_json, new=True)


@app.command("update")
def update(
    key: Annotated[str, typer.Argument(help="The segment's key")],
    condition: Annotated[str | None, typer.Option(help="A new condition: JSON, @file or -")] = None,
    name: Annotated[str | None, typer.Option(help="A new name")] = None,
    description: Annotated[str | None, typer.Option(help="A new description")] = None,
    backfill: Annotated[bool, typer.Option("--backfill/--no-backfill", help="Evaluate every profile now")] = True,
    as_json: JsonFlag = False,
) -> None:
    """Change a segment (a new version); a changed condition is backfilled again."""
    _save(key, condition, name, description, backfill, as_json, new=False)


@app.command("list")
def list_segments(as_json: JsonFlag = False) -> None:
    """List segments with their size and backfill status."""
    with database() as db, db.read() as session:
        rows = service.listing(session)
        sizes = service.sizes(session, [r.key for r in rows])
        data = [_data(row, sizes.get(row.key, 0)) for row in rows]
    if as_json:
        typer.echo(json.dumps(data))
        return
    table = Table("key", "name", "version", "size", "backfill")
    for row in data:
        table.add_row(row["key"], row["name"], str(row["version"]), str(row["size"]), row["backfill"]["status"])
    console.print(table)


@app.command("show")
def show(key: Annotated[str, typer.Argument(help="The segment's key")], as_json: JsonFlag = False) -> None:
    """Show one segment: condition, version, size, backfill."""
    with database() as db:
        try:
            _show(db, key, as_json)
        except service.SegmentError as error:
            fail(str(error))


@app.command("delete")
def delete(key: Annotated[str, typer.Argument(help="The segment's key")], as_json: JsonFlag = False) -> None:
    """Delete a segment and its memberships (refused while another segment or a journey reads it)."""
    with database() as db:
        try:
            with db.unit_of_work() as session:
                gone = service.remove(session, key=key, actor="cli", now=utcnow())
                record_command(session, "segment.delete", "segment", key)
        except service.SegmentError as error:
            fail(str(error))
    if as_json:
        typer.echo(json.dumps({"deleted": key, "memberships": gone}))
    else:
        console.print(f"segment {key!r} deleted ({gone} memberships)")


@app.command("backfill")
def backfill(as_json: JsonFlag = False) -> None:
    """Finish every pending backfill now (workers do it too, a chunk at a time)."""
    with database() as db:
        with db.read() as session:
            keys = service.pending_backfills(session)
        for key in keys:
            _backfill(db, key, quiet=as_json)
    if as_json:
        typer.echo(json.dumps({"backfilled": keys}))
    else:
        console.print(f"backfilled {len(keys)} segments")


@app.command("sweep")
def sweep(as_json: JsonFlag = False) -> None:
    """Re-evaluate time-window segments for every profile now (workers do it periodically)."""
    now = utcnow()
    chunks = 0
    after: str | None = None
    with database() as db:
        while True:
            with db.unit_of_work() as session:
                last = service.sweep_step(session, now=now, after=after)
            if last is None:
                break
            chunks += 1
            after = last
    if as_json:
        typer.echo(json.dumps({"swept_chunks": chunks}))
    else:
        console.print(f"swept {chunks} chunks of profiles")


computed_app = typer.Typer(help="Computed traits: define, list, show, delete.", no_args_is_help=True)


def _computed_data(row: Any) -> dict[str, Any]:
    return {
        "key": row.key,
        "name": row.name,
        "version": row.version,
        "definition": row.definition,
        "updated_at": row.updated_at.isoformat(),
        "actor": row.actor,
    }


def _save_computed(key: str, definition: str, name: str | None, as_json: bool, *, create: bool) -> None:
    document = read_document(definition)
    with database() as db:
        try:
            with db.unit_of_work() as session:
                row = service.computed_save(
                    session, key=key, name=name, definition=document, actor="cli", now=utcnow(), create=create
                )
                action = f"computed_trait.{'create' if create else 'update'}"
                record_command(session, action, "computed_trait", key, version=row.version)
                data = _computed_data(row)
        except (service.SegmentError, conditions.ConditionError) as error:
            fail(str(error))
    if as_json:
        typer.echo(json.dumps(data))
    else:
        console.print(f"computed trait {key!r} at version {data['version']}")


@computed_app.command("create")
def computed_create(
    key: Annotated[str, typer.Argument(help="The computed trait's key (a-z, 0-9, _ . -)")],
    definition: Annotated[str, typer.Option(help="The definition: JSON, @file or - for standard input")],
    name: Annotated[str | None, typer.Option(help="A readable name")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Define a computed trait."""
    _save_computed(key, definition, name, as_json, create=True)


@computed_app.command("update")
def computed_update(
    key: Annotated[str, typer.Argument(help="The computed trait's key")],
    definition: Annotated[str, typer.Option(help="The new definition: JSON, @file or -")],
    name: Annotated[str | None, typer.Option(help="A new name")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Change a computed trait (a new version; the segments that read it are backfilled again)."""
    _save_computed(key, definition, name, as_json, create=False)


@computed_app.command("list")
def computed_list(as_json: JsonFlag = False) -> None:
    """List computed traits."""
    with database() as db, db.read() as session:
        data = [_computed_data(row) for row in service.computed_listing(session)]
    if as_json:
        typer.echo(json.dumps(data))
        return
    table = Table("key", "name", "version", "definition")
    for row in data:
        table.add_row(row["key"], row["name"], str(row["version"]), json.dumps(row["definition"]))
    console.print(table)


@computed_app.command("show")
def computed_show(
    key: Annotated[str, typer.Argument(help="The computed trait's key")], as_json: JsonFlag = False
) -> None:
    """Show one computed trait."""
    with database() as db:
        try:
            with db.read() as session:
                data = _computed_data(service.computed_get(session, key))
        except service.SegmentError as error:
            fail(str(error))
    typer.echo(json.dumps(data)) if as_json else console.print_json(json.dumps(data))


@computed_app.command("delete")
def computed_delete(
    key: Annotated[str, typer.Argument(help="The computed trait's key")], as_json: JsonFlag = False
) -> None:
    """Delete a computed trait (refused while a segment or a journey reads it)."""
    with database() as db:
        try:
            with db.unit_of_work() as session:
                service.computed_remove(session, key=key)
                record_command(session, "computed_trait.delete", "computed_trait", key)
        except service.SegmentError as error:
            fail(str(error))
    typer.echo(json.dumps({"deleted": key})) if as_json else console.print(f"computed trait {key!r} deleted")
