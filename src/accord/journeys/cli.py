"""`accord journey ...`: define, read and delete journeys; backfill, sweep, funnel. Thin: services do the
work; the JSON reading and the database come from the segments' commands."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer
from rich.progress import Progress
from rich.table import Table

from accord.audit.service import record_command
from accord.db.base import utcnow
from accord.db.engine import Database
from accord.journeys import service
from accord.journeys.models import Journey
from accord.segments.cli import console, database, fail, read_document
from accord.segments.conditions import ConditionError

app = typer.Typer(help="Journeys: define, list, show, delete; backfill, sweep, funnel.", no_args_is_help=True)
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def _data(row: Journey, positions: dict[str, int]) -> dict[str, Any]:
    return {
        "key": row.key,
        "name": row.name,
        "description": row.description,
        "version": row.version,
        "definition": row.definition,
        "backfill": {"status": row.status, "done": row.backfill_done, "total": row.backfill_total},
        "positions": {state: positions.get(state, 0) for state in ("active", "completed", "exited")},
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
        data = _data(row, service.counts(session, [key]).get(key, {}))
    if as_json:
        typer.echo(json.dumps(data))
    else:
        for name, value in data.items():
            console.print(f"[bold]{name}[/bold]: {json.dumps(value) if isinstance(value, dict) else value}")


def _save(
    key: str,
    definition: str | None,
    name: str | None,
    description: str | None,
    backfill: bool,
    as_json: bool,
    *,
    new: bool,
) -> None:
    document = read_document(definition) if definition is not None else None
    with database() as db:
        try:
            with db.unit_of_work() as session:
                if new:
                    row = service.create(
                        session,
                        key=key,
                        name=name or "",
                        description=description or "",
                        definition=document,
                        actor="cli",
                        now=utcnow(),
                    )
                else:
                    row = service.change(
                        session,
                        key=key,
                        name=name,
                        description=description,
                        definition=document,
                        actor="cli",
                        now=utcnow(),
                    )
                record_command(session, f"journey.{'create' if new else 'update'}", "journey", key, version=row.version)
            if backfill:
                _backfill(db, key, quiet=as_json)
            _show(db, key, as_json)
        except (service.JourneyError, ConditionError) as error:
            fail(str(error))


DefinitionHelp = "The definition {stages, goal, exit, time_limit}: JSON, @file or - for standard input"


@app.command("create")
def create(
    key: Annotated[str, typer.Argument(help="The journey's key (a-z, 0-9, _ . -)")],
    definition: Annotated[str, typer.Option(help=DefinitionHelp)],
    name: Annotated[str | None, typer.Option(help="A readable name")] = None,
    description: Annotated[str | None, typer.Option(help="What the journey is for")] = None,
    backfill: Annotated[bool, typer.Option("--backfill/--no-backfill", help="Place every profile now")] = True,
    as_json: JsonFlag = False,
) -> None:
    """Create a journey and backfill positions from the stored profiles (with progress)."""
    _save(key, definition, name, description, backfill, as_json, new=True)


@app.command("update")
def update(
    key: Annotated[str, typer.Argument(help="The journey's key")],
    definition: Annotated[str | None, typer.Option(help="A new definition (replaces the whole definition)")] = None,
    name: Annotated[str | None, typer.Option(help="A new name")] = None,
    description: Annotated[str | None, typer.Option(help="A new description")] = None,
    backfill: Annotated[bool, typer.Option("--backfill/--no-backfill", help="Place every profile now")] = True,
    as_json: JsonFlag = False,
) -> None:
    """Change a journey (a new version); a changed definition is backfilled again."""
    _save(key, definition, name, description, backfill, as_json, new=False)


@app.command("list")
def list_journeys(as_json: JsonFlag = False) -> None:
    """List journeys with their positions by state and backfill status."""
    with database() as db, db.read() as session:
        rows = service.listing(session)
        counts = service.counts(session, [r.key for r in rows])
        data = [_data(row, counts.get(row.key, {})) for row in rows]
    if as_json:
        typer.echo(json.dumps(data))
        return
    table = Table("key", "name", "version", "stages", "active", "completed", "exited", "backfill")
    for row in data:
        p = row["positions"]
        stages = len(row["definition"].get("stages", []))
        table.add_row(
            row["key"], row["name"], str(row["version"]), str(stages), *map(str, p.values()), row["backfill"]["status"]
        )
    console.print(table)


@app.command("show")
def show(key: Annotated[str, typer.Argument(help="The journey's key")], as_json: JsonFlag = False) -> None:
    """Show one journey: definition, version, positions, backfill."""
    with database() as db:
        try:
            _show(db, key, as_json)
        except service.JourneyError as error:
            fail(str(error))


@app.command("delete")
def delete(key: Annotated[str, typer.Argument(help="The journey's key")], as_json: JsonFlag = False) -> None:
    """Delete a journey and its positions."""
    with database() as db:
        try:
            with db.unit_of_work() as session:
                gone = service.remove(session, key=key, actor="cli", now=utcnow())
                record_command(session, "journey.delete", "journey", key)
        except service.JourneyError as error:
            fail(str(error))
    if as_json:
        typer.echo(json.dumps({"deleted": key, "positions": gone}))
    else:
        console.print(f"journey {key!r} deleted ({gone} positions)")


@app.command("backfill")
def backfill(as_json: JsonFlag = False) -> None:
    """Finish every pending journey backfill now (workers do it too, a chunk at a time)."""
    with database() as db:
        with db.read() as session:
            keys = service.pending_backfills(session)
        for key in keys:
            _backfill(db, key, quiet=as_json)
    if as_json:
        typer.echo(json.dumps({"backfilled": keys}))
    else:
        console.print(f"backfilled {len(keys)} journeys")


@app.command("sweep")
def sweep(as_json: JsonFlag = False) -> None:
    """Apply time limits and time-window conditions of every journey now (workers do it periodically)."""
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


def _moment(text: str | None, name: str) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text[:64])
    except ValueError:
        fail(f"--{name} is not an ISO-8601 time")
        raise
    if moment.tzinfo is None:
        fail(f"--{name} needs a zone (Z or +hh:mm)")
    return moment.astimezone(UTC)


@app.command("funnel")
def funnel(
    key: Annotated[str, typer.Argument(help="The journey's key")],
    start: Annotated[
        str | None, typer.Option("--from", help="Entered at or after (ISO-8601); default: to - 30d")
    ] = None,
    end: Annotated[str | None, typer.Option("--to", help="Entered before (ISO-8601); default: now")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Counts per stage, conversion and median time between stages, for profiles that entered in a window."""
    until = _moment(end, "to") or utcnow()
    since = _moment(start, "from") or until - timedelta(days=30)
    with database() as db:
        try:
            with db.read() as session:
                found = service.funnel(session, key, start=since, end=until)
        except service.JourneyError as error:
            fail(str(error))
    data: dict[str, Any] = {
        "key": found.key,
        "version": found.version,
        "from": found.start.isoformat(),
        "to": found.end.isoformat(),
        "entered": found.entered,
        "active": found.active,
        "completed": found.completed,
        "exited": found.exited,
        "stages": [
            {
                "key": s.key,
                "name": s.name,
                "reached": s.reached,
                "entered": s.entered,
                "conversion": s.conversion,
                "median_seconds_to_next": s.median_seconds_to_next,
                "timed": s.timed,
            }
            for s in found.stages
        ],
    }
    if as_json:
        typer.echo(json.dumps(data))
        return
    table = Table("stage", "reached", "entered", "conversion", "median to next")
    for s in data["stages"]:
        conversion = "" if s["conversion"] is None else f"{s['conversion']:.1%}"
        median = "" if s["median_seconds_to_next"] is None else f"{s['median_seconds_to_next']:.0f} s"
        table.add_row(s["key"], str(s["reached"]), str(s["entered"]), conversion, median)
    console.print(table)
    console.print(f"entered {found.entered}, completed {found.completed}, exited {found.exited}")
