"""Computed traits: SQL over the analytical view becomes traits through the event log, on SQLite and
PostgreSQL; the query runs sandboxed."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from accord.cli import app
from accord.config import Settings
from accord.profiles import service as profiles
from accord.profiles.computed import ComputedTraitError, run_computed_trait
from accord.runtime import Runtime
from pipeline.helpers import process, send

NOW = datetime(2026, 6, 2, 12, 0, tzinfo=UTC)
ORDERS = """
SELECT profile_id, count(*) AS value FROM events
WHERE type = 'track' AND event = 'Order Completed' GROUP BY profile_id
"""


def seed(rt: Runtime) -> None:
    send(
        rt,
        [
            {"type": "identify", "userId": "1", "traits": {"email": "ann@example.com", "plan": "gold"}},
            {"type": "track", "userId": "1", "event": "Order Completed", "properties": {"total": 10}},
            {"type": "track", "userId": "1", "event": "Order Completed", "properties": {"total": 25.5}},
            {"type": "track", "anonymousId": "dev-9", "event": "Order Completed", "properties": {"total": 3}},
            {"type": "track", "userId": "2", "event": "Page Viewed"},
        ],
    )
    process(rt)


def trait(rt: Runtime, ref: str, name: str) -> object:
    with rt.db.read() as session:
        profile = profiles.resolve(session, ref)
        assert profile is not None
        return profile.traits.get(name), profile.trait_versions.get(name)


def test_a_computed_trait_is_set_through_the_log(rt: Runtime, tmp_path: Path) -> None:
    seed(rt)
    tmp_path = tmp_path / "work"
    done = run_computed_trait(rt.db, rt.log, name="orders", sql=ORDERS, folder=tmp_path, now=NOW)
    assert (done.rows, done.appended, done.skipped) == (2, 2, 0)
    process(rt)
    value, version = trait(rt, "user_id:1", "orders")
    assert value == 2
    assert version[3] == "computed:orders"
    assert trait(rt, "anonymous_id:dev-9", "orders")[0] == 1
    assert trait(rt, "user_id:2", "orders")[0] is None
    again = run_computed_trait(rt.db, rt.log, name="orders", sql=ORDERS, folder=tmp_path, now=NOW)
    assert again.appended == 0  # nothing changed: the same events
    spend = (
        "SELECT profile_id, sum(CAST(json_extract(properties, '$.total') AS DOUBLE)) AS value FROM events GROUP BY 1"
    )
    run_computed_trait(rt.db, rt.log, name="spend", sql=spend, folder=tmp_path, now=NOW)
    plan = "SELECT profile_id, upper(json_extract_string(traits, '$.plan')) AS value FROM profiles WHERE traits <> '{}'"
    run_computed_trait(rt.db, rt.log, name="plan_code", sql=plan, folder=tmp_path, now=NOW)
    process(rt)
    assert trait(rt, "user_id:1", "spend")[0] == 35.5
    assert trait(rt, "user_id:1", "plan_code")[0] == "GOLD"
    assert list(tmp_path.iterdir()) == []  # the snapshots are removed


@pytest.mark.parametrize(
    ("name", "sql", "message"),
    [
        ("orders", "SELECT 1 AS x", "profile_id and value"),
        ("orders", "SELECT * FROM nowhere", "query failed"),
        ("orders", "SELECT profile_id, 1 AS value FROM events; DROP TABLE events", "one SELECT"),
        ("orders", "", "one SELECT"),
        ("9lives", ORDERS, "trait name"),
        ("orders", "SELECT profile_id, content AS value FROM read_text('/etc/hostname'), profiles", "query failed"),
    ],
)
def test_bad_queries_are_refused(rt: Runtime, tmp_path: Path, name: str, sql: str, message: str) -> None:
    with pytest.raises(ComputedTraitError, match=message):
        run_computed_trait(rt.db, rt.log, name=name, sql=sql, folder=tmp_path, now=NOW)


def test_the_command(rt: Runtime, settings: Settings, tmp_path: Path) -> None:
    seed(rt)
    env = {"ACCORD_DATA_DIR": str(settings.data_dir)}
    if settings.database_url:
        env["ACCORD_DATABASE_URL"] = settings.database_url
    result = CliRunner().invoke(app, ["computed-trait", "orders", "--sql", ORDERS, "--json"], env=env)
    assert result.exit_code == 0, result.output
    assert '"appended": 2' in result.output
    process(rt)
    query = tmp_path / "q.sql"
    query.write_text(ORDERS)
    result = CliRunner().invoke(app, ["computed-trait", "orders", "--sql-file", str(query), "--json"], env=env)
    assert '"appended": 0' in result.output
    result = CliRunner().invoke(app, ["computed-trait", "orders"], env=env)
    assert result.exit_code == 1
    result = CliRunner().invoke(app, ["computed-trait", "orders", "--sql", "SELECT 1"], env=env)
    assert result.exit_code == 1
    assert "profile_id and value" in result.output
