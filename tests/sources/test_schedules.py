"""Schedules: recurring computed traits and table imports, claimed once, run by the API processes."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from accord.cli import app
from accord.config import Settings
from accord.db import migrate
from accord.runtime import Runtime
from accord.sources import schedules
from accord.sources.mapping import load_mapping
from accord.sources.models import Schedule
from conftest import make_settings, running_accord
from pipeline.helpers import process, send
from sources.importing import source, traits, versions

NOW = datetime(2026, 6, 2, 12, 0, tzinfo=UTC)
ORDERS = "SELECT profile_id, count(*) AS value FROM events WHERE event = 'Order Completed' GROUP BY 1"


def seed(rt: Runtime) -> None:
    send(rt, [{"type": "track", "userId": "1", "event": "Order Completed"}])
    process(rt)


def test_a_due_schedule_runs_once_and_comes_back(rt: Runtime, tmp_path: Path) -> None:
    seed(rt)
    with rt.db.unit_of_work() as session:
        schedules.add_computed(session, name="orders", every_seconds=3600, trait="orders", sql=ORDERS, now=NOW)
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


def test_bad_schedules_are_refused(rt: Runtime) -> None:
    with rt.db.unit_of_work() as session:
        schedules.add_computed(session, name="a", every_seconds=60, trait="t", sql=ORDERS, now=NOW)
    for kwargs, message in [
        ({"name": "a", "every_seconds": 60}, "exists already"),
        ({"name": "b c", "every_seconds": 60}, "name"),
        ({"name": "b", "every_seconds": 10}, "every"),
    ]:
        with pytest.raises(schedules.ScheduleError, match=message), rt.db.unit_of_work() as session:
            schedules.add_computed(session, trait="t", sql=ORDERS, now=NOW, **kwargs)  # type: ignore[arg-type]


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
            schedules.add_computed(
                session, name="orders", every_seconds=3600, trait="orders", sql=ORDERS, now=datetime.now(UTC)
            )
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
