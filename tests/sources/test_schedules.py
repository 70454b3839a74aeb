"""Schedules: recurring computed traits and table imports, claimed once, run by the API processes."""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import create_engine, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from accord.cli import app
from accord.config import Settings
from accord.db import migrate
from accord.runtime import Runtime
from accord.sources import schedules, sql_traits
from accord.sources.mapping import load_mapping
from accord.sources.models import Schedule
from conftest import make_settings, running_accord
from pipeline.helpers import process, send
from sources.importing import source, traits, versions

NOW = datetime(2026, 6, 2, 12, 0, tzinfo=UTC)
ORDERS = "SELECT profile_id, count(*) AS value FROM events WHERE event = 'Order Completed' GROUP BY 1"


def define(session: Session, key: str, sql: str = ORDERS) -> None:
    sql_traits.save(session, key=key, sql=sql, pii=False, description=None, actor="test", now=NOW, create=None)


def seed(rt: Runtime) -> None:
    send(rt, [{"type": "track", "userId": "1", "event": "Order Completed"}])
    process(rt)


def test_a_due_schedule_runs_once_and_comes_back(rt: Runtime, tmp_path: Path) -> None:
    seed(rt)
    with rt.db.unit_of_work() as session:
        define(session, "orders")
        schedules.add_computed(session, name="orders", every_seconds=3600, trait="orders", now=NOW)
    done = schedules.run_due(rt.db, rt.log, data_dir=tmp_path, now=NOW)
    assert [(o.name, o.status) for o in done] == [("orders", "done")]
    assert schedules.run_due(rt.db, rt.log, data_dir=tmp_path, now=NOW) == []  # claimed: next_at moved on
    process(rt)
    assert traits(rt, "user_id:1")["orders"] == 1
    with rt.db.read() as session:
        row = session.get(Schedule, "orders")
        assert row is not None
        assert row.next_at == NOW + timedelta(hours=1)
        assert row.last_status == "done"
        assert re.fullmatch(r"run ctr_\w+: rows 1, appended 1, unchanged 0, skipped 0", str(row.last_result))
        run_id = str(row.last_result).split(":")[0].removeprefix("run ")
    assert versions(rt, "user_id:1")["orders"][3] == run_id  # the trait remembers the schedule's run
    later = schedules.run_due(rt.db, rt.log, data_dir=tmp_path, now=NOW + timedelta(hours=1))
    assert [o.name for o in later] == ["orders"]


def test_a_table_schedule_reads_its_url_from_the_environment(
    rt: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    crm = tmp_path / "crm.db"
    engine = create_engine(f"sqlite:///{crm}")
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE people (id INTEGER, plan TEXT, n INTEGER)"))
        connection.execute(text("INSERT INTO people VALUES (5, 'gold', 1)"))
    engine.dispose()
    mapping = load_mapping(
        "mapping: 1\nname: people\nidentifiers: [{field: id, type: user_id}]\ntraits: [{field: plan}]"
    )
    with rt.db.unit_of_work() as session:
        schedules.add_table(
            session,
            name="crm",
            every_seconds=600,
            url_env="CRM_URL",
            table="people",
            query=None,
            cursor="n",
            mapping=mapping,
            source_id=source(rt, "crm"),
            now=NOW,
        )
        stored = session.get(Schedule, "crm")
        assert stored is not None
        assert "crm.db" not in json.dumps(stored.spec)  # the URL is never stored
    monkeypatch.delenv("CRM_URL", raising=False)
    failed = schedules.run_due(rt.db, rt.log, data_dir=tmp_path, now=NOW)
    assert failed[0].status == "failed"
    assert "CRM_URL" in failed[0].result
    monkeypatch.setenv("CRM_URL", f"sqlite:///{crm}")
    done = schedules.run_due(rt.db, rt.log, data_dir=tmp_path, now=NOW + timedelta(minutes=10))
    assert done[0].status == "done", done[0].result
    process(rt)
    assert traits(rt, "user_id:5") == {"plan": "gold"}
    run_id = done[0].result.split(":")[0].removeprefix("run ")
    assert run_id.startswith("imp_")
    assert versions(rt, "user_id:5")["plan"][2:] == [source(rt, "crm"), run_id]  # the source and the run


def test_bad_schedules_are_refused(rt: Runtime) -> None:
    with rt.db.unit_of_work() as session:
        define(session, "t")
        schedules.add_computed(session, name="a", every_seconds=60, trait="t", now=NOW)
    for kwargs, message in [
        ({"name": "a", "every_seconds": 60}, "exists already"),
        ({"name": "b c", "every_seconds": 60}, "name"),
        ({"name": "b", "every_seconds": 10}, "every"),
    ]:
        with pytest.raises(schedules.ScheduleError, match=message), rt.db.unit_of_work() as session:
            schedules.add_computed(session, trait="t", now=NOW, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(schedules.ScheduleError, match="no SQL computed trait"), rt.db.unit_of_work() as session:
        schedules.add_computed(session, name="c", every_seconds=60, trait="undefined", now=NOW)


def test_the_schedule_commands(settings: Settings, rt: Runtime) -> None:
    env = {"ACCORD_DATA_DIR": str(settings.data_dir)}
    if settings.database_url:
        env["ACCORD_DATABASE_URL"] = settings.database_url
    seed(rt)

    def run(*args: str) -> tuple[int, str]:
        result = CliRunner().invoke(app, list(args), env=env)
        return result.exit_code, result.output

    code, output = run("schedule", "add-computed", "orders", "--every", "60", "--trait", "orders", "--sql", ORDERS)
    assert code == 0, output
    code, output = run("schedule", "add-computed", "orders", "--every", "60", "--trait", "orders", "--sql", ORDERS)
    assert code == 1
    assert "exists already" in output
    code, output = run("schedule", "run-due", "--json")
    assert json.loads(output)[0]["status"] == "done"
    code, output = run("schedule", "list", "--json")
    assert json.loads(output)[0]["last_status"] == "done"
    assert run("schedule", "remove", "orders")[0] == 0
    assert run("schedule", "remove", "orders")[0] == 1
    assert run("schedule", "add-table", "x", "--every", "5", "--url-env", "lower", "--mapping", "nowhere.yaml")[0] == 1


def test_the_api_process_runs_due_schedules(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    rt = Runtime.create(make_settings(backend, tmp_path, request, schedule_poll_seconds=0.2))
    migrate.upgrade(rt.db)
    try:
        seed(rt)
        with rt.db.unit_of_work() as session:
            define(session, "orders")
            schedules.add_computed(session, name="orders", every_seconds=3600, trait="orders", now=datetime.now(UTC))
        with running_accord(rt) as accord:
            deadline = time.monotonic() + 60
            while True:
                with rt.db.read() as session:
                    row = session.get(Schedule, "orders")
                    assert row is not None
                    if row.last_status is not None:
                        break
                assert time.monotonic() < deadline, "the schedule did not run"
                time.sleep(0.1)
            accord.wait_processed()
        assert row.last_status == "done", row.last_result
        assert traits(rt, "user_id:1")["orders"] == 1
    finally:
        rt.close()


@pytest.fixture
def empty_database(backend: str, tmp_path: Path) -> Iterator[str]:
    """A database with no schema yet: a file, or a PostgreSQL database made for this test."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'old.db'}"
        return
    from conftest import POSTGRES_ADMIN_URL

    name = f"accord_migration_{uuid.uuid4().hex[:8]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin.url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_schedules_with_an_inline_query_become_sql_traits(empty_database: str, tmp_path: Path) -> None:
    """Before 0016 a computed schedule kept its query; the migration makes it the SQL trait it names."""
    rt = Runtime.create(Settings(data_dir=tmp_path / "data", database_url=empty_database))
    try:
        migrate.upgrade(rt.db, "0015")
        old = sa.table(
            "schedules",
            *(sa.column(c) for c in ("name", "kind", "every_seconds", "next_at", "enabled", "created_at")),
            sa.column("spec", sa.JSON().with_variant(postgresql.JSONB(), "postgresql")),
        )
        row = {"name": "hourly", "kind": "computed", "every_seconds": 3600, "enabled": True}
        row |= {"spec": {"trait": "orders", "sql": ORDERS, "pii": True}, "next_at": NOW, "created_at": NOW}
        with rt.db.engine.begin() as connection:
            connection.execute(old.insert().values(**row))
        migrate.upgrade(rt.db)
        with rt.db.read() as session:
            row = session.get(Schedule, "hourly")
            assert row is not None
            assert (row.spec, row.version) == ({"trait": "orders"}, 1)
            trait = sql_traits.get(session, "orders")
            assert (trait.sql, trait.pii, trait.version) == (ORDERS, True, 1)
    finally:
        rt.close()


def test_a_schedule_that_breaks_keeps_no_quoted_part_of_an_unexpected_error(rt: Runtime, tmp_path: Path) -> None:
    """An error Accord did not expect (here a stored spec that lacks a part) is kept in the schedule's
    last_result without its quoted parts, which could be a value the run read; Accord's own errors (the
    trait a schedule runs is gone) keep theirs."""
    with rt.db.unit_of_work() as session:
        for name, kind, spec in (
            ("broken", "table", {"url_env": "CRM_URL", "mapping": {}}),
            ("orphan", "computed", {"trait": "gone_trait"}),
        ):
            session.add(Schedule(name=name, kind=kind, spec=spec, every_seconds=600, next_at=NOW, created_at=NOW))
    os.environ["CRM_URL"] = "sqlite:///nowhere.db"
    try:
        outcomes = {o.name: o for o in schedules.run_due(rt.db, rt.log, data_dir=tmp_path, now=NOW)}
    finally:
        del os.environ["CRM_URL"]
    assert (outcomes["broken"].status, outcomes["broken"].result) == ("failed", "KeyError: '...'")
    assert outcomes["orphan"].status == "failed"
    assert "gone_trait" in outcomes["orphan"].result
    with rt.db.read() as session:
        stored = session.get(Schedule, "broken")
        assert stored is not None
        assert stored.last_result == "KeyError: '...'"
