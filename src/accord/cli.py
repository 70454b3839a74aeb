"""The `accord` command. Thin: each command opens a unit of work and calls a service."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from itertools import count
from pathlib import Path
from typing import Annotated, Any

import typer
import uvicorn
from rich.console import Console
from rich.table import Table
from sqlalchemy.orm import Session

from accord.audit import service as audit
from accord.config import Settings
from accord.consent import ledger as consent_ledger
from accord.consent import service as consent_service
from accord.consent.capture import Capture
from accord.consent.keys import SigningKey
from accord.db import migrate as migrations
from accord.db.base import utcnow
from accord.db.engine import Database
from accord.identity import history as identity_history_service
from accord.identity import service as identity_service
from accord.ingest import quarantine
from accord.journeys import cli as journey_cli
from accord.logs import configure_logging
from accord.pipeline.embedded import SocketWake, watch_parent
from accord.pipeline.worker import Worker
from accord.runtime import Runtime, tune_gc
from accord.security import service as security
from accord.security import users
from accord.security.datakeys import DataKeys
from accord.security.keys import KeyringError
from accord.segments import cli as segment_cli
from accord.sources import service as sources

app = typer.Typer(help="Accord: open, self-hosted customer data platform.", no_args_is_help=True)
source_app = typer.Typer(help="Sources and their write keys.", no_args_is_help=True)
token_app = typer.Typer(help="API tokens for the REST API.", no_args_is_help=True)
quarantine_app = typer.Typer(help="Events that failed processing.", no_args_is_help=True)
app.add_typer(source_app, name="source")
app.add_typer(token_app, name="token")
app.add_typer(quarantine_app, name="quarantine")
consent_app = typer.Typer(help="The consent ledger: verify, checkpoint, expire.", no_args_is_help=True)
app.add_typer(consent_app, name="consent")
identity_app = typer.Typer(help="Identity rules, merge history, unmerge, probabilistic matching.", no_args_is_help=True)
app.add_typer(identity_app, name="identity")
user_app = typer.Typer(help="People who log in to the console.", no_args_is_help=True)
app.add_typer(user_app, name="user")
app.add_typer(segment_cli.app, name="segment")
app.add_typer(segment_cli.computed_app, name="computed")
app.add_typer(journey_cli.app, name="journey")
audit_app = typer.Typer(help="The audit trail: verify, checkpoint.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")
erasure_app = typer.Typer(help="Erased people: list, lift a suppression.", no_args_is_help=True)
app.add_typer(erasure_app, name="erasure")
keys_app = typer.Typer(help="Keys of encryption at rest: rotate the key-encryption key.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
console = Console()
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def _settings() -> Settings:
    settings = Settings()
    configure_logging(settings.log_level)
    return settings


@contextmanager
def _db(settings: Settings) -> Iterator[Database]:
    """The database, migrated, disposed of when the command ends."""
    db = Database.from_settings(settings)
    try:
        migrations.upgrade(db)
        yield db
    finally:
        db.dispose()


@contextmanager
def _session(*, write: bool = True) -> Iterator[Session]:
    """One unit of work (or a read) for a command, on the migrated database."""
    with _db(_settings()) as db, db.unit_of_work() if write else db.read() as session:
        yield session


def _audit(session: Session, action: str, target_type: str | None, target_id: str | None, **details: Any) -> None:
    """Record what a command changed, as the command line, in the command's transaction."""
    audit.record_command(session, action, target_type, target_id, **details)


def _print(data: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(data))
    else:
        for key, value in data.items():
            console.print(f"[bold]{key}[/bold]: {value}")


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(1)


@app.command()
def migrate() -> None:
    """Bring the database schema up to date."""
    with _db(_settings()) as db:
        console.print(f"schema at revision {migrations.current_revision(db)}")


@app.command()
def up(
    host: Annotated[str | None, typer.Option(help="Bind address [ACCORD_HOST]")] = None,
    port: Annotated[int | None, typer.Option(help="Port [ACCORD_PORT]")] = None,
) -> None:
    """Run everything on the embedded default: migrate, then the API and a worker beside it."""
    _serve(host, port, with_worker=True)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address [ACCORD_HOST]")] = None,
    port: Annotated[int | None, typer.Option(help="Port [ACCORD_PORT]")] = None,
) -> None:
    """Run the API only (scale-out role); pair with `accord worker` processes."""
    _serve(host, port, with_worker=False)


def _serve(host: str | None, port: int | None, *, with_worker: bool) -> None:
    from accord.app import create_app

    settings = _settings()
    if (settings.tls_certfile is None) != (settings.tls_keyfile is None):
        _fail("set both ACCORD_TLS_CERTFILE and ACCORD_TLS_KEYFILE to serve HTTPS, or neither")
    with _db(settings):
        pass
    application = create_app(settings, worker="process" if with_worker else None)
    tune_gc()
    uvicorn.run(
        application,
        host=host or settings.host,
        port=port or settings.port,
        log_level="warning",
        access_log=False,
        loop="uvloop",
        http="httptools",
        ssl_certfile=settings.tls_certfile,
        ssl_keyfile=settings.tls_keyfile,
    )


@app.command()
def worker(
    parent_pid: Annotated[int | None, typer.Option(hidden=True, help="Exit when this process is gone")] = None,
    wake_fd: Annotated[int | None, typer.Option(hidden=True, help="A socket the parent nudges on new events")] = None,
) -> None:
    """Run a pipeline worker (scale-out role); any number may run against one PostgreSQL database."""
    settings = _settings()
    rt = Runtime.create(settings)
    migrations.upgrade(rt.db)
    rt.db.checkpoint_in_background()
    rt.log.db.checkpoint_in_background()  # SQLite: the event log's own file
    rt.log.acknowledge_when_durable(rt.db)  # SQLite: a run's commit waits for no fsync of its own
    rt.db.keep_pages(settings.worker_cache_mib)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    if parent_pid is not None:
        watch_parent(parent_pid, stop)
    tune_gc()
    wake = None if wake_fd is None else SocketWake(wake_fd)
    try:
        Worker(
            db=rt.db,
            log=rt.log,
            batch_size=settings.worker_batch_size,
            max_batch_size=settings.worker_max_batch_size,
            yield_seconds=settings.worker_yield_seconds,
            poll_interval=settings.worker_poll_interval,
            wake=wake,
            consent=Capture(key=rt.signing, settings=settings),
            segment_sweep_seconds=settings.segment_sweep_seconds,
            on_commit=None if wake is None else wake.announce,
        ).run(stop)
    finally:
        rt.close()


@source_app.command("create")
def source_create(name: str, as_json: JsonFlag = False) -> None:
    """Create a source and print its write key (shown once)."""
    try:
        with _session() as session:
            created = sources.create_source(session, name=name)
            _audit(session, "source.create", "source", created.id, name=created.name)
    except (sources.SourceExists, ValueError) as error:
        _fail(str(error))
    _print({"id": created.id, "name": created.name, "write_key": created.write_key}, as_json)


@source_app.command("list")
def source_list(as_json: JsonFlag = False) -> None:
    """List sources."""
    with _session(write=False) as session:
        rows = [
            {"id": s.id, "name": s.name, "enabled": s.enabled, "created_at": s.created_at.isoformat()}
            for s in sources.list_sources(session)
        ]
    if as_json:
        typer.echo(json.dumps(rows))
        return
    table = Table("id", "name", "enabled", "created_at")
    for row in rows:
        table.add_row(*(str(row[k]) for k in ("id", "name", "enabled", "created_at")))
    console.print(table)


def _set_source(name: str, enabled: bool) -> None:
    try:
        with _session() as session:
            source = sources.set_enabled(session, name=name, enabled=enabled)
            _audit(session, "source.enable" if enabled else "source.disable", "source", source.id)
    except sources.SourceNotFound as error:
        _fail(str(error))
    console.print(f"source {name!r} {'enabled' if enabled else 'disabled'}")


@source_app.command("disable")
def source_disable(name: str) -> None:
    """Stop accepting events with this source's write key (within 5 seconds)."""
    _set_source(name, False)


@source_app.command("enable")
def source_enable(name: str) -> None:
    """Accept events with this source's write key again."""
    _set_source(name, True)


@token_app.command("create")
def token_create(
    role: Annotated[str, typer.Option(help="admin, analyst, agent or auditor")],
    description: Annotated[str, typer.Option(help="What the token is for")] = "",
    expires_days: Annotated[int | None, typer.Option(help="Days until it expires (default never)")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Create an API token and print it (shown once)."""
    expires = timedelta(days=expires_days) if expires_days else None
    try:
        with _session() as session:
            created = security.create_token(session, role=role, description=description, expires_in=expires)
            expires_at = created.expires_at.isoformat() if created.expires_at else None
            _audit(session, "token.create", "token", created.id, role=created.role, expires_at=expires_at)
    except ValueError as error:
        _fail(str(error))
    _print(
        {
            "id": created.id,
            "role": created.role,
            "token": created.token,
            "expires_at": created.expires_at.isoformat() if created.expires_at else None,
        },
        as_json,
    )


@token_app.command("revoke")
def token_revoke(token_id: str) -> None:
    """Revoke a token by its id; it stops working at once."""
    try:
        with _session() as session:
            security.revoke_token(session, token_id=token_id)
            _audit(session, "token.revoke", "token", token_id)
    except security.TokenNotFound as error:
        _fail(str(error))
    console.print(f"token {token_id} revoked")


@quarantine_app.command("list")
def quarantine_list(limit: Annotated[int, typer.Option(min=1, max=10_000)] = 100, as_json: JsonFlag = False) -> None:
    """Events waiting in quarantine, with their errors."""
    with _session(write=False) as session:
        keys = DataKeys.of(session)
        rows = [
            {
                "id": q.id,
                "source_id": q.source_id,
                "message_id": q.message_id,
                "error": quarantine.shown_error(keys, q),
                "attempts": q.attempts,
                "quarantined_at": q.quarantined_at.isoformat(),
            }
            for q in quarantine.waiting(session, limit=limit)
        ]
    if as_json:
        typer.echo(json.dumps(rows))
        return
    table = Table("id", "source", "messageId", "attempts", "error")
    for row in rows:
        table.add_row(*(str(row[k]) for k in ("id", "source_id", "message_id", "attempts", "error")))
    console.print(table)


@quarantine_app.command("replay")
def quarantine_replay(
    ids: Annotated[list[int] | None, typer.Argument(help="Quarantine ids; default all waiting")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Send quarantined events back through the pipeline."""
    settings = _settings()
    rt = Runtime.create(settings)
    try:
        migrations.upgrade(rt.db)
        replayed = quarantine.replay(rt.db, rt.log, ids=ids or None)
    finally:
        rt.close()
    _print({"replayed": replayed}, as_json)


@app.command()
def demo(
    customers: Annotated[int, typer.Option(min=1, max=1_000_000, help="Synthetic customers to send")] = 2000,
    url: Annotated[str | None, typer.Option(help="Accord's base URL (default http://ACCORD_HOST:ACCORD_PORT)")] = None,
    write_key: Annotated[str | None, typer.Option(help="Write key (default: a new 'demo' source)")] = None,
    seed: Annotated[int, typer.Option(help="Random seed, for the same data every time")] = 42,
) -> None:
    """Send synthetic customers with multi-device journeys through the tracking API."""
    from accord.demo import run_demo

    settings = _settings()
    if write_key is None:
        with _db(settings) as db, db.unit_of_work() as session:
            names = {s.name for s in sources.list_sources(session)}
            runs = sum(1 for n in names if n == "demo" or n.startswith("demo-"))
            name = "demo" if runs == 0 else next(f"demo-{i}" for i in count(runs + 1) if f"demo-{i}" not in names)
            write_key = sources.create_source(session, name=name).write_key
        # A new source is a new run: send new people rather than the same events again.
        seed += runs
    base = url or f"http://{settings.host}:{settings.port}"
    try:
        summary = run_demo(base_url=base, write_key=write_key, customers=customers, seed=seed, console=console)
    except ConnectionError as error:
        _fail(f"{error}. Start Accord first with `make run` or `accord up`.")
    except RuntimeError as error:
        _fail(str(error))
    console.print(summary)


def main() -> None:
    try:
        app()
    except KeyringError as error:  # a key file that is damaged, missing or another installation's
        console.print(f"[red]error:[/red] {error}")
        raise SystemExit(1) from None


@contextmanager
def _consent_runtime() -> Iterator[tuple[Database, SigningKey, Settings]]:
    settings = _settings()
    key = SigningKey.load_or_create(settings.signing_key_path())
    with _db(settings) as db:
        yield db, key, settings


@consent_app.command("verify")
def consent_verify(
    as_json: JsonFlag = False,
    workers: Annotated[
        int, typer.Option(min=1, max=64, help="Processes that walk a long ledger at once (default: one per core)")
    ] = os.cpu_count() or 1,
) -> None:
    """Walk the whole consent ledger; exit 1 and name the first bad record if anything was tampered with."""
    with _consent_runtime() as (db, key, _):
        keys = None if db.keyring is None else db.keyring.provider
        report = consent_ledger.verify(db.engine, key=key, keys=keys, workers=workers)
    bad = report.first_bad
    data = {
        "ok": report.ok,
        "records": report.records,
        "checkpoints": report.checkpoints,
        "evidence_checked": report.evidence_checked,
        "head_seq": report.head_seq,
        "head_hash": report.head_hash,
        "first_bad": None if bad is None else {"seq": bad.seq, "record_id": bad.record_id, "problem": bad.problem},
    }
    _print(data, as_json)
    if not report.ok:
        raise typer.Exit(1)


@consent_app.command("checkpoint")
def consent_checkpoint(as_json: JsonFlag = False) -> None:
    """Sign a checkpoint of the ledger's head now (nothing when the head is signed already)."""
    with _consent_runtime() as (db, key, _), db.unit_of_work() as session:
        row = consent_ledger.checkpoint(session, key=key, now=utcnow())
        if row is not None:
            _audit(session, "consent.checkpoint", "consent_ledger", None, seq=row.seq)
        data = {"signed": row is not None, "seq": row.seq if row else None, "hash": row.hash if row else None}
    _print(data, as_json)


@consent_app.command("expire")
def consent_expire(as_json: JsonFlag = False) -> None:
    """Record `expired` for every consent whose expiry has passed (the state reads expired already)."""
    with _consent_runtime() as (db, key, settings), db.unit_of_work() as session:
        count = consent_service.expire_lapsed(session, key=key, settings=settings, now=utcnow(), limit=1_000_000)
        if count:
            _audit(session, "consent.expire", "consent_ledger", None, expired=count)
    _print({"expired": count}, as_json)


@identity_app.command("rules")
def identity_rules(as_json: JsonFlag = False) -> None:
    """Print the identity rules in force and their version."""
    with _session(write=False) as session:
        rows = identity_service.rules_history(session, limit=1)
        data = {"version": rows[0].version if rows else 0, "rules": identity_service.current_rules(session).document()}
    if as_json:
        typer.echo(json.dumps(data))
    else:
        console.print_json(json.dumps(data))


@identity_app.command("set-rules")
def identity_set_rules(
    path: Annotated[str, typer.Argument(help="A JSON file with the rules document, or - for standard input")],
    as_json: JsonFlag = False,
) -> None:
    """Put new identity rules in force (a new version; running workers use it from their next batch)."""
    try:
        text = sys.stdin.read(65_536) if path == "-" else Path(path).read_text()[:65_536]
        document = json.loads(text)
    except (OSError, ValueError) as error:
        _fail(f"cannot read a JSON document from {path[:200]!r}: {type(error).__name__}")
    try:
        with _session() as session:
            rules = identity_service.set_rules(session, document, actor="cli", now=utcnow())
            _audit(session, "identity.rules.set", "identity_rules", str(rules.version), version=rules.version)
    except identity_service.RulesError as error:
        _fail(str(error))
    _print({"version": rules.version}, as_json)


def _profile_or_fail(session: Session, ref: str) -> Any:
    from accord.profiles import service as profile_service

    try:
        profile = profile_service.resolve(session, ref[:500])
    except profile_service.BadReference as error:
        _fail(str(error))
    if profile is None:
        _fail("no profile matches this reference")
    return profile


@identity_app.command("history")
def identity_history(
    ref: Annotated[str, typer.Argument(help="A profile id or type:value")],
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 100,
    as_json: JsonFlag = False,
) -> None:
    """A person's merges, unmerges and re-derivations, newest first."""
    with _session(write=False) as session:
        profile = _profile_or_fail(session, ref)
        rows = [
            {
                "id": m.id,
                "kind": m.kind,
                "survivor_id": m.survivor_id,
                "absorbed_id": m.absorbed_id,
                "identity_type": m.identity_type,
                "at": m.merged_at.isoformat(),
                "undone_by": m.undone_by,
            }
            for m in identity_history_service.history(session, profile, limit=limit)
        ]
    if as_json:
        typer.echo(json.dumps(rows))
        return
    table = Table("id", "kind", "survivor", "absorbed", "through", "at", "undone by")
    for row in rows:
        keys = ("id", "kind", "survivor_id", "absorbed_id", "identity_type", "at", "undone_by")
        table.add_row(*(str(row[k]) for k in keys))
    console.print(table)


@identity_app.command("unmerge")
def identity_unmerge(
    ref: Annotated[str, typer.Argument(help="A profile id or type:value")],
    merge_id: Annotated[int, typer.Option("--merge", min=1, help="The merge to undo (from accord identity history)")],
    as_json: JsonFlag = False,
) -> None:
    """Split a merge back into profiles with their own identifiers, traits and events."""
    settings = _settings()
    with _db(settings) as db, db.unit_of_work() as session:
        profile = _profile_or_fail(session, ref)
        try:
            done = identity_history_service.unmerge(
                session, profile, merge_id=merge_id, actor="cli", now=utcnow(), lock_rows=db.dialect == "postgresql"
            )
        except identity_history_service.UnmergeError as error:
            _fail(str(error))
        data = {"unmerge_id": done.unmerge_id, "profiles": done.profiles, "moved_events": done.moved_events}
        _audit(
            session,
            "profile.unmerge",
            "profile",
            profile.id,
            merge_id=done.merge_id,
            unmerge_id=done.unmerge_id,
            profiles=list(done.profiles),
        )
    _print(data, as_json)


def _verification(report: Any) -> dict[str, Any]:
    bad = report.first_bad
    return {
        "ok": report.ok,
        "records": report.records,
        "checkpoints": report.checkpoints,
        "head_seq": report.head_seq,
        "head_hash": report.head_hash,
        "first_bad": None if bad is None else {"seq": bad.seq, "record_id": bad.record_id, "problem": bad.problem},
    }


@audit_app.command("verify")
def audit_verify(as_json: JsonFlag = False) -> None:
    """Walk the whole audit trail; exit 1 and name the first bad record if anything was tampered with."""
    with _consent_runtime() as (db, key, _):
        report = audit.verify(db.engine, key=key)
    _print(_verification(report), as_json)
    if not report.ok:
        raise typer.Exit(1)


@audit_app.command("checkpoint")
def audit_checkpoint(as_json: JsonFlag = False) -> None:
    """Sign a checkpoint of the audit trail's head now (nothing when the head is signed already)."""
    with _consent_runtime() as (db, key, _), db.unit_of_work() as session:
        row = audit.checkpoint(session, key=key, now=utcnow())
        data = {"signed": row is not None, "seq": row.seq if row else None, "hash": row.hash if row else None}
    _print(data, as_json)


# -- imports ---------------------------------------------------------------------------------------------
imports_app = typer.Typer(help="Import runs: list, show, rejected rows, replay.", no_args_is_help=True)
app.add_typer(imports_app, name="imports")


@app.command("import")
def import_file(
    file: Annotated[Path, typer.Argument(help="A CSV, Parquet or JSON lines file")],
    mapping: Annotated[Path, typer.Option("--mapping", help="The mapping (YAML or JSON)")],
    source: Annotated[str | None, typer.Option(help="Source name or id (default: the mapping's, or its name)")] = None,
    file_format: Annotated[
        str | None, typer.Option("--format", help="csv, parquet or jsonl (default: from the extension)")
    ] = None,
    preview: Annotated[bool, typer.Option("--preview", help="Show the first rows mapped; write nothing")] = False,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Rows to preview")] = 20,
    resume: Annotated[
        str | None, typer.Option(help="Resume this run (default: an interrupted run of the same file)")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Import a file through a mapping into the event log (a job: resumable, idempotent)."""
    from accord.sources import cli as import_cli

    import_cli.import_file(
        file,
        mapping,
        source=source,
        file_format=file_format,
        preview=preview,
        limit=limit,
        resume=resume,
        as_json=as_json,
        console=console,
    )


@app.command("import-table")
def import_table(
    url: Annotated[str, typer.Option(help="postgresql://..., mysql://... (or mariadb://...), sqlite:///path")],
    mapping: Annotated[Path, typer.Option("--mapping", help="The mapping (YAML or JSON)")],
    table: Annotated[str | None, typer.Option(help="A table, optionally schema.table")] = None,
    query: Annotated[str | None, typer.Option(help="A SELECT query, instead of a table")] = None,
    cursor: Annotated[
        str | None, typer.Option(help="A column that grows: read only rows from where the last run stopped")
    ] = None,
    source: Annotated[str | None, typer.Option(help="Source name or id (default: the mapping's, or its name)")] = None,
    full: Annotated[bool, typer.Option("--full", help="Read every row, not only those after the last run")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Import a table or query of PostgreSQL, MySQL/MariaDB or SQLite, incrementally by a cursor column."""
    from accord.sources import cli as import_cli

    import_cli.import_table(
        url,
        mapping,
        table=table,
        query=query,
        cursor=cursor,
        source=source,
        full=full,
        as_json=as_json,
        console=console,
    )


PiiFlag = Annotated[
    bool, typer.Option("--pii", help="The query reads personal data unmasked; the trait is then flagged as PII")
]


@app.command("computed-trait")
def computed_trait(
    name: Annotated[str, typer.Argument(help="The trait to set")],
    sql: Annotated[str | None, typer.Option(help="A SELECT returning profile_id and value")] = None,
    sql_file: Annotated[Path | None, typer.Option("--sql-file", help="A file holding the SELECT")] = None,
    pii: PiiFlag = False,
    preview: Annotated[bool, typer.Option("--preview", help="Show the first result rows; set nothing")] = False,
    limit: Annotated[int, typer.Option(min=1, max=100, help="Rows to preview")] = 20,
    as_json: JsonFlag = False,
) -> None:
    """Define (or change) a SQL computed trait and run it now; without --sql, run the one defined."""
    from accord.profiles.computed import ComputedTraitError
    from accord.sources import cli as import_cli
    from accord.sources import sql_traits

    if sql is not None and sql_file is not None:
        _fail("give --sql or --sql-file, not both")
    try:
        text = sql if sql_file is None else Path(str(sql_file)).read_text()[:100_000]
    except OSError as error:
        _fail(f"cannot read {str(sql_file)[:200]!r}: {error.strerror or type(error).__name__}")
    settings = _settings()
    rt = Runtime.create(settings)
    folder = settings.data_dir / "imports"
    try:
        migrations.upgrade(rt.db)
        if text is None:
            with rt.db.read() as session:
                stored = sql_traits.get(session, name)
                text, pii = stored.sql, stored.pii
        if preview:
            rows = sql_traits.preview(rt.db, sql=text, folder=folder, masked=not pii, limit=limit)
            _print({"rows": [{"profile_id": p, "value": v} for p, v in rows]}, as_json)
            return
        if sql is not None or sql_file is not None:
            with rt.db.unit_of_work() as session:
                import_cli.define_sql_trait(rt, session, key=name, sql=text, pii=pii)
            if pii:
                rt.db.checkpoint_wal()  # values moved out of `traits` leave no older page behind (SQLite)
        claimed = sql_traits.claim(rt.db, name, now=utcnow())
        with rt.db.unit_of_work() as session:
            import_cli.audit_change(rt, session, "sql_trait.run", name, version=claimed.version, run_id=claimed.run_id)
        done = sql_traits.run(rt.db, rt.log, claimed, folder=folder, now=utcnow())
    except (sql_traits.SqlTraitError, ComputedTraitError) as error:
        _fail(str(error))
    finally:
        rt.close()
    _print(
        {
            "name": done.name,
            "run_id": done.run_id,
            "rows": done.rows,
            "appended": done.appended,
            "unchanged": done.unchanged,
            "skipped": done.skipped,
        },
        as_json,
    )


schedule_app = typer.Typer(help="Recurring table imports and computed traits.", no_args_is_help=True)
app.add_typer(schedule_app, name="schedule")
Every = Annotated[int, typer.Option(min=1, max=527_040, help="Minutes between runs")]


@schedule_app.command("add-table")
def schedule_add_table(
    name: str,
    every: Every,
    url_env: Annotated[str, typer.Option(help="The environment variable holding the database URL (not stored)")],
    mapping: Annotated[Path, typer.Option("--mapping", help="The mapping (YAML or JSON)")],
    table: Annotated[str | None, typer.Option(help="A table, optionally schema.table")] = None,
    query: Annotated[str | None, typer.Option(help="A SELECT query, instead of a table")] = None,
    cursor: Annotated[
        str | None, typer.Option(help="A column that grows: each run reads from where the last stopped")
    ] = None,
    source: Annotated[str | None, typer.Option(help="Source name or id (default: the mapping's, or its name)")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Import a table or query every N minutes (the API processes run it; first run at once)."""
    from accord.sources import cli as import_cli

    import_cli.schedule_table(
        name,
        every,
        url_env,
        mapping,
        table=table,
        query=query,
        cursor=cursor,
        source=source,
        as_json=as_json,
        console=console,
    )


@schedule_app.command("add-computed")
def schedule_add_computed(
    name: str,
    every: Every,
    trait: Annotated[str, typer.Option(help="The trait to set")],
    sql: Annotated[
        str | None, typer.Option(help="A SELECT returning profile_id and value (defines or changes the trait)")
    ] = None,
    pii: PiiFlag = False,
    as_json: JsonFlag = False,
) -> None:
    """Run a SQL computed trait every N minutes."""
    from accord.sources import cli as import_cli

    import_cli.schedule_computed(name, every, trait, sql, pii=pii, as_json=as_json, console=console)


@schedule_app.command("list")
def schedule_list(as_json: JsonFlag = False) -> None:
    """Schedules, when each runs next and how its last run went."""
    from accord.sources import cli as import_cli

    import_cli.schedule_list(as_json=as_json, console=console)


@schedule_app.command("remove")
def schedule_remove(name: str) -> None:
    """Stop and forget a schedule."""
    from accord.sources import cli as import_cli

    import_cli.schedule_remove(name, console=console)


@schedule_app.command("run")
def schedule_run(name: str, as_json: JsonFlag = False) -> None:
    """Run one schedule now, due or not (then every N minutes from now)."""
    from accord.sources import cli as import_cli

    import_cli.schedule_run(name, as_json=as_json, console=console)


@schedule_app.command("run-due")
def schedule_run_due(as_json: JsonFlag = False) -> None:
    """Run the schedules that are due now, here (what each API process does every ACCORD_SCHEDULE_POLL_SECONDS)."""
    from accord.sources import cli as import_cli

    import_cli.schedule_run_due(as_json=as_json, console=console)


@imports_app.command("list")
def imports_list(
    source: Annotated[str | None, typer.Option(help="Only this source's runs")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
    as_json: JsonFlag = False,
) -> None:
    """Import runs, newest first, with their counts."""
    from accord.sources import cli as import_cli

    import_cli.list_runs(source=source, limit=limit, as_json=as_json, console=console)


@imports_app.command("show")
def imports_show(run_id: str, as_json: JsonFlag = False) -> None:
    """One run's status and counts (read = imported + rejected)."""
    from accord.sources import cli as import_cli

    import_cli.show_run(run_id, as_json=as_json, console=console)


@imports_app.command("rejects")
def imports_rejects(
    run_id: str, limit: Annotated[int, typer.Option(min=1, max=100_000)] = 100, as_json: JsonFlag = False
) -> None:
    """The rows a run rejected, with the reason for each."""
    from accord.sources import cli as import_cli

    import_cli.show_rejects(run_id, limit=limit, as_json=as_json, console=console)


@imports_app.command("resume")
def imports_resume(run_id: str, as_json: JsonFlag = False) -> None:
    """Carry an interrupted run on from its checkpoint (a file, an upload or a replay)."""
    from accord.sources import cli as import_cli

    import_cli.resume(run_id, as_json=as_json, console=console)


@imports_app.command("replay")
def imports_replay(
    run_id: str,
    mapping: Annotated[Path | None, typer.Option("--mapping", help="A fixed mapping (default: the run's own)")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Import a run's rejected rows again, through a fixed mapping or the same one (a new run)."""
    from accord.sources import cli as import_cli

    import_cli.replay(run_id, mapping, as_json=as_json, console=console)


def _read_password() -> str:
    """From a prompt (typed twice, not echoed) on a terminal; else the first line of standard input."""
    if sys.stdin.isatty():
        return str(typer.prompt("Password", hide_input=True, confirmation_prompt=True))
    return sys.stdin.readline(users.MAX_PASSWORD + 2).rstrip("\r\n")


@user_app.command("create")
def user_create(
    email: str,
    role: Annotated[str, typer.Option(help="admin, analyst, agent or auditor")],
    as_json: JsonFlag = False,
) -> None:
    """Create a console user; the password is prompted for, or read from standard input's first line."""
    password = _read_password()
    try:
        with _session() as session:
            user = users.create_user(session, email=email, role=role, password=password, now=utcnow())
            data = {"id": user.id, "email": user.email, "role": user.role}
            _audit(session, "user.create", "user", user.id, role=user.role)
    except users.UserError as error:
        _fail(str(error))
    _print(data, as_json)


@user_app.command("list")
def user_list(as_json: JsonFlag = False) -> None:
    """List console users (never their password hashes)."""
    with _session(write=False) as session:
        rows = [
            {
                "id": u.id,
                "email": u.email,
                "role": u.role,
                "disabled": u.disabled_at is not None,
                "locked_until": u.locked_until.isoformat() if u.locked_until else None,
                "last_login_at": u.last_login_at.isoformat() if u.last_login_at else None,
                "single_sign_on": u.oidc_subject is not None,
            }
            for u in users.list_users(session)
        ]
    if as_json:
        typer.echo(json.dumps(rows))
        return
    table = Table("id", "email", "role", "disabled", "locked_until", "last_login_at")
    for row in rows:
        table.add_row(*(str(row[k]) for k in ("id", "email", "role", "disabled", "locked_until", "last_login_at")))
    console.print(table)


def _change_user(action: str, change: Callable[[Session], Any]) -> None:
    try:
        with _session() as session:
            user = change(session)
            _audit(session, action, "user", user.id, role=user.role)
    except users.UserError as error:
        _fail(str(error))


@user_app.command("disable")
def user_disable(email: str) -> None:
    """Stop a user from logging in; their open console sessions end at once."""
    _change_user("user.disable", lambda session: users.set_disabled(session, email=email, disabled=True, now=utcnow()))
    console.print("user disabled")


@user_app.command("enable")
def user_enable(email: str) -> None:
    """Let a disabled user log in again (and lift a lockout)."""
    _change_user("user.enable", lambda session: users.set_disabled(session, email=email, disabled=False, now=utcnow()))
    console.print("user enabled")


@user_app.command("set-password")
def user_set_password(email: str) -> None:
    """Give a user a new password (prompted, or standard input's first line); their sessions end."""
    password = _read_password()
    _change_user("user.set_password", lambda session: users.set_password(session, email=email, password=password))
    console.print("password changed")


@user_app.command("set-role")
def user_set_role(email: str, role: Annotated[str, typer.Option(help="admin, analyst, agent or auditor")]) -> None:
    """Change a user's role; it applies to their next request."""
    _change_user("user.set_role", lambda session: users.set_role(session, email=email, role=role))
    console.print(f"role set to {role}")


@user_app.command("link-oidc")
def user_link_oidc(
    email: str,
    subject: Annotated[str, typer.Option(help="The person's `sub` at the provider")],
    issuer: Annotated[str | None, typer.Option(help="The provider's issuer; default: ACCORD_OIDC_ISSUER")] = None,
) -> None:
    """Make an existing user the account of a single sign-on identity (issuer and `sub`), so signing in
    through the provider logs in as them; their role then follows the provider's role map."""
    provider = issuer or _settings().oidc_issuer
    if not provider:
        _fail("give --issuer, or set ACCORD_OIDC_ISSUER")
        return
    _change_user(
        "user.link_oidc", lambda session: users.link_oidc(session, email=email, issuer=provider, subject=subject)
    )
    console.print("linked")


@identity_app.command("train")
def identity_train(as_json: JsonFlag = False) -> None:
    """Train a new version of the probabilistic matching model on the live profiles' traits (no labels)."""
    from accord.identity import linkage
    from accord.identity.training import TrainingError

    try:
        with _session() as session:
            done = linkage.train_model(session, actor="cli", now=utcnow())
            _audit(
                session,
                "identity.model.train",
                "identity_match_model",
                str(done.version),
                version=done.version,
                profiles=done.profiles,
            )
    except TrainingError as error:
        _fail(str(error))
    _print(
        {
            "version": done.version,
            "profiles": done.profiles,
            "index_keys": done.index_keys,
            "seconds": round(done.seconds, 2),
        },
        as_json,
    )


@identity_app.command("dedupe")
def identity_dedupe(as_json: JsonFlag = False) -> None:
    """Match every live profile against the others: merge above the automatic threshold, queue for review
    between the thresholds, ignore below."""
    from accord.identity import linkage

    with _db(_settings()) as db:
        try:
            done = linkage.dedupe(db, actor="cli", now=utcnow())
        except linkage.LinkageError as error:
            _fail(str(error))
        with db.unit_of_work() as session:
            _audit(
                session,
                "identity.dedupe",
                "identity_match_model",
                str(done.model_version),
                pairs=done.pairs,
                merged=done.merged,
                blocked=done.blocked,
                queued=done.queued,
            )
    _print(
        {
            "model_version": done.model_version,
            "profiles": done.profiles,
            "pairs": done.pairs,
            "known": done.known,
            "merged": done.merged,
            "blocked": done.blocked,
            "queued": done.queued,
            "seconds": round(done.seconds, 2),
        },
        as_json,
    )


@erasure_app.command("list")
def erasure_list(
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 100,
    as_json: JsonFlag = False,
) -> None:
    """Erasures, newest first: who was erased when, by whom, and what their identifiers still suppress."""
    from accord.rights import service as rights

    with _session(write=False) as session:
        rows = [
            {
                "erasure_id": stone.erasure_id,
                "profile_id": stone.person_id,
                "erased_at": stone.erased_at.isoformat(),
                "actor": stone.actor,
                "suppressed_events": stone.suppressed_events,
                "suppressing_identifiers": identifiers,
            }
            for stone, identifiers in rights.erasures(session, limit=limit)
        ]
    if as_json:
        typer.echo(json.dumps(rows))
        return
    table = Table("erasure", "profile", "erased_at", "by", "suppressed events", "identifiers")
    for row in rows:
        keys = ("erasure_id", "profile_id", "erased_at", "actor", "suppressed_events", "suppressing_identifiers")
        table.add_row(*(str(row[k]) for k in keys))
    console.print(table)


@erasure_app.command("lift")
def erasure_lift(erasure_id: str, as_json: JsonFlag = False) -> None:
    """Stop suppressing an erased person's identifiers (they came back): later events make a new profile."""
    from accord.rights import service as rights

    try:
        with _session() as session:
            removed = rights.lift_suppression(session, erasure_id=erasure_id[:60])
            _audit(session, "erasure.lift", "erasure", erasure_id[:60], identifiers=removed)
    except rights.ErasureNotFound as error:
        _fail(str(error))
    _print({"erasure_id": erasure_id, "identifiers": removed}, as_json)


@keys_app.command("rotate")
def keys_rotate(
    grace: Annotated[float, typer.Option(min=0, max=600, help="Seconds to wait before the last sweep.")] = 2.5,
    as_json: JsonFlag = False,
) -> None:
    """Rewrap every data key under a new key-encryption key, while Accord keeps running; resumable."""
    from accord.security import datakeys

    try:
        with _db(_settings()) as db:
            done = datakeys.rotate(db, grace_seconds=grace)
            with db.unit_of_work() as session:
                _audit(session, "keys.rotate", "kek", done.kek_id, rewrapped=done.rewrapped, retired=done.retired)
    except KeyringError as error:
        _fail(str(error))
    _print(
        {"kek_id": done.kek_id, "rewrapped": done.rewrapped, "retired": done.retired, "remaining": done.remaining},
        as_json,
    )
