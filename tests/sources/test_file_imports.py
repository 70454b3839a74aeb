"""File imports through the log and the processor, on SQLite and PostgreSQL: traits, events, provenance,
idempotence, replay of rejected rows, preview."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from accord.runtime import Runtime
from accord.security.datakeys import DataKeys
from accord.sources import imports
from accord.sources.connectors import FileInput
from accord.sources.mapping import load_mapping
from sources.importing import (
    LOYALTY,
    LOYALTY_CSV,
    process,
    reconciles,
    run_import,
    source,
    stored_events,
    traits,
    versions,
    write,
)


def test_a_csv_becomes_traits_through_the_pipeline(rt: Runtime, tmp_path: Path) -> None:
    run = run_import(rt, write(tmp_path, "loyalty.csv", LOYALTY_CSV), LOYALTY)
    assert run.status == "done", run.error
    assert (run.read, run.imported, run.rejected) == (3, 2, 1)
    process(rt)
    assert traits(rt, "user_id:1") == {
        "email": "ann@example.com",
        "name": "Ann Lee",
        "points": 120,
        "joined": "2020-02-01",
        "tier": "gold",
    }
    assert traits(rt, "email:ann@example.com")["tier"] == "gold"  # the email identifier joined the profile
    assert traits(rt, "user_id:3") == {"name": "Cy Fox", "points": 5, "joined": "2019-12-31", "tier": "bronze"}
    version = versions(rt, "user_id:1")["tier"]
    assert version[2] == source(rt)
    assert version[3] == run.id


def test_the_same_file_twice_adds_nothing(rt: Runtime, tmp_path: Path) -> None:
    path = write(tmp_path, "loyalty.csv", LOYALTY_CSV)
    first = run_import(rt, path, LOYALTY)
    process(rt)
    events = stored_events(rt)
    second = run_import(rt, path, LOYALTY)
    assert second.id != first.id
    assert (second.read, second.imported, second.rejected, second.appended) == (3, 2, 1, 0)
    process(rt)
    assert stored_events(rt) == events == 2
    # Even unprocessed, a second run's events are dropped by the processor's dedupe.
    third = run_import(rt, path, LOYALTY)
    fourth = run_import(rt, path, LOYALTY)
    assert third.appended == fourth.appended == 0
    process(rt)
    assert stored_events(rt) == 2


def test_a_changed_row_updates_and_the_newer_run_wins(rt: Runtime, tmp_path: Path) -> None:
    run_import(rt, write(tmp_path, "a.csv", LOYALTY_CSV), LOYALTY)
    process(rt)
    changed = LOYALTY_CSV.replace("120,01/02/2020,gold", "150,01/02/2020,platinum")
    second = run_import(rt, write(tmp_path, "b.csv", changed), LOYALTY)
    assert second.appended == 1  # row 1 changed; row 3 did not (the run time is not part of its id)
    process(rt)
    assert traits(rt, "user_id:1")["tier"] == "platinum"
    assert versions(rt, "user_id:1")["tier"][3] == second.id


def test_events_with_a_time_column_and_a_row_key(rt: Runtime, tmp_path: Path) -> None:
    mapping = """
mapping: 1
name: orders
fields:
  - {name: placed, from: placed_at, parse_date: "%Y-%m-%d %H:%M"}
  - {name: total, cast: number}
identifiers: [{field: customer, type: user_id}]
event:
  name: Order Completed
  time: placed
  properties: [{field: order_id}, {field: total}]
key: [order_id]
"""
    csv = "order_id,customer,placed_at,total\no1,7,2026-03-01 10:00,12.5\no2,7,2026-03-02 11:30,8\n"
    run = run_import(rt, write(tmp_path, "orders.csv", csv), mapping, source_name="shop")
    assert (run.read, run.imported) == (2, 2)
    # A corrected export with the same order ids: the row key says these are the same events.
    again = run_import(rt, write(tmp_path, "orders2.csv", csv.replace("12.5", "13")), mapping, source_name="shop")
    assert again.imported == 2
    process(rt)
    assert stored_events(rt) == 2
    from accord.profiles import service as profiles

    with rt.db.read() as session:
        profile = profiles.resolve(session, "user_id:7")
        assert profile is not None
        page = profiles.timeline(session, profile.id, limit=10)
        assert [e.payload["properties"] for e in page.events] == [
            {"order_id": "o2", "total": 8.0},
            {"order_id": "o1", "total": 12.5},
        ]
        assert page.events[1].payload["timestamp"] == "2026-03-01T10:00:00.000Z"
        assert profile.counts["events"] == {"Order Completed": 2}


def test_parquet_and_json_lines(rt: Runtime, tmp_path: Path) -> None:
    parquet = tmp_path / "people.parquet"
    rows = "SELECT i AS id, 'p' || i AS plan, i * 1.5 AS score FROM range(1, 4) t(i)"
    duckdb.connect().execute(f"COPY ({rows}) TO '{parquet}' (FORMAT parquet)")
    mapping = (
        "mapping: 1\nname: people\nidentifiers: [{field: id, type: user_id}]\n"
        "traits: [{field: plan}, {field: score, type: number}]"
    )
    run = run_import(rt, parquet, mapping)
    assert (run.status, run.read, run.imported, run.format) == ("done", 3, 3, "parquet")
    lines = '{"id": 9, "plan": "gold", "score": "2.5", "extra": {"a": 1}}\n{"id": "10", "plan": null, "score": 3}\n'
    run = run_import(rt, write(tmp_path, "people.jsonl", lines), mapping)
    assert (run.status, run.read, run.imported) == ("done", 2, 2), run.error
    process(rt)
    assert traits(rt, "user_id:2") == {"plan": "p2", "score": 3.0}
    assert traits(rt, "user_id:9") == {"plan": "gold", "score": 2.5}
    assert traits(rt, "user_id:10") == {"score": 3.0}  # a null is no value: the trait is left alone


def test_rejected_rows_replay_through_a_fixed_mapping(rt: Runtime, tmp_path: Path) -> None:
    csv = LOYALTY_CSV + "4,dan@example.com,Dan,Ng,7,2021-06-05,gold\n"
    run = run_import(rt, write(tmp_path, "loyalty.csv", csv), LOYALTY)
    assert (run.read, run.imported, run.rejected) == (4, 2, 2)
    with rt.db.read() as session:
        keys = DataKeys.of(session)
        reasons = {r.position: imports.open_reject(keys, r).reason for r in imports.rejects(session, run.id)}
    assert reasons == {2: "field points: 'abc' is not an integer", 4: "field joined: '2021-06-05' is not a date"}
    either = "coalesce(try_strptime(joined, '%d/%m/%Y'), try_cast(joined AS DATE))"
    fixed = LOYALTY.replace('parse_date: "%d/%m/%Y"', f'sql: "{either}"')
    points = "try_cast(nullif(points, 'abc') AS BIGINT)"
    fixed = fixed.replace("{name: points, cast: integer}", f'{{name: points, sql: "{points}"}}')
    with rt.db.unit_of_work() as session:
        replay, rows = imports.start_replay(session, run_id=run.id, mapping=load_mapping(fixed))
        replay_id = replay.id
    done = imports.Runner(rt.db, rt.log).execute(replay_id, rows)
    with rt.db.unit_of_work() as session:
        imports.mark_replayed(session, done)
    assert (done.kind, done.parent_id, done.read, done.imported, done.rejected) == ("replay", run.id, 2, 2, 0)
    process(rt)
    assert traits(rt, "user_id:4")["joined"] == "2021-06-05"
    assert "points" not in traits(rt, "user_id:2")
    with rt.db.read() as session:
        assert {r.replayed_by for r in imports.rejects(session, run.id)} == {replay_id}
        with pytest.raises(imports.ImportFailed) as caught:
            imports.start_replay(session, run_id=run.id, mapping=None)
        assert caught.value.code == "nothing_to_replay"


def test_preview_shows_rows_errors_and_matching_profiles_and_writes_nothing(rt: Runtime, tmp_path: Path) -> None:
    path = write(tmp_path, "loyalty.csv", LOYALTY_CSV)
    header, ann = LOYALTY_CSV.splitlines()[:2]
    run_import(rt, write(tmp_path, "first.csv", f"{header}\n{ann}\n"), LOYALTY)
    process(rt)
    events = stored_events(rt)
    mapping = load_mapping(LOYALTY)
    found = FileInput.at(path, declared=None, csv=mapping.csv)
    with rt.db.read() as session:
        shown = imports.preview(session, source_id=source(rt), mapping=mapping, source=found, limit=2)
        profile = imports.find_source(session, "loyalty")
    assert profile is not None
    assert [r.position for r in shown.rows] == [1, 2]
    first, second = shown.rows
    assert first.error is None
    assert first.event is not None
    assert first.event["traits"]["tier"] == "gold"
    assert len(first.profiles) == 1  # Ann exists already
    assert second.error == "field points: 'abc' is not an integer"
    assert second.values["points"] is None
    assert second.input["points"] == "abc"
    assert stored_events(rt) == events
    assert reconciles(run_import(rt, path, LOYALTY))


def test_rejected_rows_are_purged_after_their_retention(rt: Runtime, tmp_path: Path) -> None:
    from datetime import timedelta

    from accord.db.base import utcnow
    from accord.sources.models import ImportRun

    run = run_import(rt, write(tmp_path, "loyalty.csv", LOYALTY_CSV), LOYALTY)
    with rt.db.unit_of_work() as session:
        assert imports.purge_rejects(session, finished_before=utcnow() - timedelta(days=30)) == 0
        stored = session.get(ImportRun, run.id)
        assert stored is not None
        stored.finished_at = utcnow() - timedelta(days=31)
    with rt.db.unit_of_work() as session:
        assert imports.purge_rejects(session, finished_before=utcnow() - timedelta(days=30)) == 1
    with rt.db.read() as session:
        assert imports.rejects(session, run.id) == []
        kept = session.get(ImportRun, run.id)
        assert kept is not None
        assert (kept.read, kept.rejected) == (3, 1)  # the run keeps its counts
