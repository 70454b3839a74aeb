"""Computed traits: SQL over the analytical view becomes traits through the event log, on SQLite and
PostgreSQL; the query runs sandboxed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from accord.cli import app
from accord.config import Settings
from accord.profiles import service as profiles
from accord.profiles.computed import ComputedTraitError, preview_computed_trait, run_computed_trait
from accord.profiles.private import profile_traits
from accord.runtime import Runtime
from pipeline.helpers import process, send
from sources.importing import run_import, write

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
        return profile_traits(session, profile).get(name), profile.trait_versions.get(name)


def test_a_computed_trait_is_set_through_the_log(rt: Runtime, tmp_path: Path) -> None:
    seed(rt)
    tmp_path = tmp_path / "work"
    done = run_computed_trait(rt.db, rt.log, name="orders", sql=ORDERS, folder=tmp_path, now=NOW)
    assert (done.rows, done.appended, done.skipped) == (2, 2, 0)
    process(rt)
    value, version = trait(rt, "user_id:1", "orders")
    assert value == 2
    assert version[2]
    assert version[3] == done.run_id
    assert done.run_id.startswith("ctr_")
    assert trait(rt, "anonymous_id:dev-9", "orders")[0] == 1
    assert trait(rt, "user_id:2", "orders")[0] is None
    again = run_computed_trait(rt.db, rt.log, name="orders", sql=ORDERS, folder=tmp_path, now=NOW)
    assert (again.appended, again.unchanged) == (0, 2)  # nothing changed: nothing written
    process(rt)
    assert trait(rt, "user_id:1", "orders")[1][3] == done.run_id  # the run that set the value
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
        ("orders", "SELECT profile_id, 1 AS value FROM events\x00", "one SELECT"),
        ("orders", "SELECT 1 AS profile_id, 2 AS value " + "x" * 20_000, "one SELECT"),
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
    result = CliRunner().invoke(app, ["computed-trait", "orders", "--json"], env=env)  # runs the stored one
    assert result.exit_code == 0, result.output
    assert '"unchanged": 2' in result.output
    result = CliRunner().invoke(app, ["computed-trait", "never_defined"], env=env)
    assert result.exit_code == 1
    assert "no SQL computed trait" in result.output
    result = CliRunner().invoke(app, ["computed-trait", "orders", "--sql", "SELECT 1"], env=env)
    assert result.exit_code == 1
    assert "profile_id and value" in result.output


HOSTILE = [
    "COPY events TO '{out}/copy.csv'",
    "SELECT profile_id, 1 AS value FROM events) AS c; COPY events TO '{out}/copy.csv' --",
    "ATTACH '{out}/attached.db' AS other",
    "SELECT * FROM (ATTACH '{out}/attached.db')",
    "INSTALL httpfs",
    "LOAD sqlite_scanner",
    "SET enable_external_access = true",
    "SELECT profile_id, 1 AS value FROM sqlite_scan('{out}/x.db', 't'), events",
    "SELECT profile_id, content AS value FROM read_text('/etc/passwd'), events",
    "SELECT profile_id, 1 AS value FROM glob('/etc/*'), events",
    "SELECT profile_id, 1 AS value FROM read_csv('/etc/passwd'), events",
    "SELECT profile_id, 1 AS value FROM read_parquet('https://example.com/x.parquet'), events",
    "SELECT profile_id, 1 AS value FROM query('COPY events TO ''{out}/q.csv'''), events",
    "WITH gone AS (DELETE FROM events RETURNING *) SELECT profile_id, 1 AS value FROM gone",
    "SELECT profile_id, 1 AS value FROM duckdb_extensions(), events",
    "CREATE TABLE mine AS SELECT * FROM events",
    "PRAGMA enable_external_access",
]


@pytest.mark.parametrize("sql", HOSTILE)
def test_hostile_queries_write_attach_read_and_load_nothing(rt: Runtime, tmp_path: Path, sql: str) -> None:
    seed(rt)
    out = tmp_path / "out"
    out.mkdir()
    work = tmp_path / "work"
    with pytest.raises(ComputedTraitError):
        run_computed_trait(rt.db, rt.log, name="x", sql=sql.format(out=out), folder=work, now=NOW)
    with pytest.raises(ComputedTraitError):
        preview_computed_trait(rt.db, sql=sql.format(out=out), folder=work, masked=True)
    assert list(out.iterdir()) == []
    assert not work.exists() or list(work.iterdir()) == []  # the snapshots are removed whatever happened


def test_a_query_that_runs_too_long_is_stopped(rt: Runtime, tmp_path: Path) -> None:
    from accord.profiles import computed

    endless = "SELECT 'p' AS profile_id, count(*) AS value FROM range(1000000000000) a"
    with pytest.raises(ComputedTraitError, match="longer than"):
        computed.evaluate(rt.db, sql=endless, folder=tmp_path, masked=True, seconds=0.3)


def test_a_value_that_comes_back_is_set_again(rt: Runtime, tmp_path: Path) -> None:
    """A, then B, then A again: the third run's value wins (a new event, not the first one again)."""
    seed(rt)
    for hour, tier in enumerate(("gold", "silver", "gold")):
        sql = f"SELECT profile_id, '{tier}' AS value FROM events WHERE event = 'Order Completed' GROUP BY 1"
        later = NOW + timedelta(hours=hour)
        done = run_computed_trait(rt.db, rt.log, name="tier", sql=sql, folder=tmp_path, now=later)
        assert done.appended == 2
        process(rt)
        assert trait(rt, "user_id:1", "tier")[0] == tier


# -- personal data in the analytical view ------------------------------------------------------------------
PEOPLE = [
    {
        "type": "identify",
        "userId": "1",
        "traits": {
            "email": "ann@example.com",
            "firstName": "Ann",
            "address": {"street": "1 Main St", "city": "Leeds"},
            "plan": "gold",
        },
    },
    {"type": "identify", "userId": "2", "traits": {"email": "bob@example.com", "plan": "silver"}},
    {
        "type": "track",
        "userId": "1",
        "event": "Order Completed",
        "properties": {"total": 10, "phone": "+44 7700 900123", "shipping": {"name": "Ann Smith"}},
    },
]
EVERYTHING = (
    "SELECT p.profile_id, p.traits || ' ' || coalesce(string_agg(e.properties, ' '), '') AS value "
    "FROM profiles p LEFT JOIN events e USING (profile_id) GROUP BY p.profile_id, p.traits"
)
ORIGINALS = ("ann@example.com", "bob@example.com", "Ann", "1 Main St", "L-77", "7700", "Ann Smith")
LOYALTY_NO = (  # a mapping that flags loyalty_no as PII, a name no default list knows
    "mapping: 1\nname: cards\nidentifiers: [{field: id, type: user_id}]\ntraits: [{field: loyalty_no, pii: true}]"
)


def people(rt: Runtime, tmp_path: Path) -> None:
    send(rt, PEOPLE)
    process(rt)
    run_import(rt, write(tmp_path, "cards.csv", "id,loyalty_no\n1,L-77\n"), LOYALTY_NO)
    process(rt)


def test_the_view_masks_personal_data_unless_the_trait_reads_it(rt: Runtime, tmp_path: Path) -> None:
    people(rt, tmp_path)
    work = tmp_path / "work"
    masked = preview_computed_trait(rt.db, sql=EVERYTHING, folder=work, masked=True)
    text = " ".join(str(v) for _, v in masked)
    assert len(masked) == 2
    for original in ORIGINALS:
        assert original not in text, original
    assert "gold" in text
    assert "silver" in text
    assert "Leeds" not in text
    assert '"total":10' in text  # what is not personal data stays as it is
    shown = " ".join(str(v) for _, v in preview_computed_trait(rt.db, sql=EVERYTHING, folder=work, masked=False))
    for original in ORIGINALS:
        assert original in shown, original
    # Equal values mask alike within one snapshot: distinct counts and joins still work.
    distinct = (
        "SELECT 'all' AS profile_id, count(DISTINCT json_extract_string(traits, '$.email')) AS value FROM profiles"
    )
    assert preview_computed_trait(rt.db, sql=distinct, folder=work, masked=True) == [("all", 2)]
    assert list(work.iterdir()) == []  # the snapshots are removed


def test_a_trait_copying_personal_data_needs_pii_and_is_flagged(rt: Runtime, tmp_path: Path) -> None:
    people(rt, tmp_path)
    copy = "SELECT profile_id, upper(json_extract_string(traits, '$.email')) AS value FROM profiles"
    with pytest.raises(ComputedTraitError, match="pii: true"):
        run_computed_trait(rt.db, rt.log, name="shout", sql=copy, folder=tmp_path, now=NOW)
    # Computing over personal data is fine masked, when the result is not personal data.
    has_mail = "SELECT profile_id, length(json_extract_string(traits, '$.email')) > 0 AS value FROM profiles"
    assert run_computed_trait(rt.db, rt.log, name="has_mail", sql=has_mail, folder=tmp_path, now=NOW).appended == 2
    done = run_computed_trait(rt.db, rt.log, name="shout", sql=copy, folder=tmp_path, now=NOW, pii=True)
    assert done.appended == 2
    process(rt)
    assert trait(rt, "user_id:1", "shout")[0] == "ANN@EXAMPLE.COM"
    assert trait(rt, "user_id:1", "has_mail")[0] is True
    # The trait is personal data from now on: a masked view masks it too.
    echo = "SELECT profile_id, json_extract_string(traits, '$.shout') AS value FROM profiles"
    values = [v for _, v in preview_computed_trait(rt.db, sql=echo, folder=tmp_path, masked=True)]
    assert values
    assert all(str(v).startswith("masked:") for v in values)


def test_the_command_previews_and_masks(rt: Runtime, settings: Settings, tmp_path: Path) -> None:
    people(rt, tmp_path)
    env = {"ACCORD_DATA_DIR": str(settings.data_dir)}
    if settings.database_url:
        env["ACCORD_DATABASE_URL"] = settings.database_url
    email = "SELECT profile_id, json_extract_string(traits, '$.email') AS value FROM profiles"
    result = CliRunner().invoke(app, ["computed-trait", "x", "--sql", email, "--preview", "--json"], env=env)
    assert result.exit_code == 0, result.output
    assert "masked:" in result.output
    assert "ann@example.com" not in result.output
    result = CliRunner().invoke(app, ["computed-trait", "x", "--sql", email, "--preview", "--pii", "--json"], env=env)
    assert "ann@example.com" in result.output
    result = CliRunner().invoke(app, ["computed-trait", "x", "--sql", email], env=env)
    assert result.exit_code == 1
    assert "pii: true" in result.output
