"""The timeline index holds each event's type and name (migration 0030), so that counting a profile's events
of a name in a window, as a segment's backfill does, reads no event row: the databases' plans say so."""

from __future__ import annotations

from datetime import UTC, datetime

from alembic import command
from sqlalchemy import inspect, select, text

from accord.db import migrate
from accord.runtime import Runtime
from accord.segments import conditions, pushdown
from accord.segments.evaluate import PROFILES

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
COVERING = ["profile_id", "timestamp", "id", "type", "event"]


def timeline_index(rt: Runtime) -> list[str | None]:
    with rt.db.engine.connect() as connection:
        (index,) = [i for i in inspect(connection).get_indexes("events") if i["name"] == "ix_events_timeline"]
    return list(index["column_names"])


def test_the_timeline_index_holds_type_and_event_and_the_migration_goes_both_ways(rt: Runtime) -> None:
    assert timeline_index(rt) == COVERING
    config = migrate._config()
    with rt.db.engine.begin() as connection:
        config.attributes["connection"] = connection
        config.attributes["keyring"] = rt.db.keyring
        command.downgrade(config, "0029")
    assert timeline_index(rt) == ["profile_id", "timestamp", "id"]
    migrate.upgrade(rt.db)
    assert timeline_index(rt) == COVERING


def test_a_count_of_named_events_in_a_window_reads_the_index_alone(rt: Runtime) -> None:
    big = {"property": "total", "op": "gte", "value": 50}
    node = conditions.parse({"event": "Bought", "where": [big], "count": {"gte": 2}, "within": "30d"})
    p = PROFILES.c
    narrowed = pushdown.candidates(node, p.traits, rt.db.dialect, profile_id=p.id, now=NOW)
    assert narrowed is not None
    query = select(p.id).where(narrowed).compile(rt.db.engine, compile_kwargs={"literal_binds": True})
    with rt.db.engine.begin() as connection:
        if rt.db.dialect == "sqlite":
            plan = " / ".join(row[-1] for row in connection.execute(text(f"EXPLAIN QUERY PLAN {query}")))
            assert "COVERING INDEX ix_events_timeline" in plan, plan
        else:
            # With every other way to the events switched off, an index-only scan is left only if the
            # index holds every column the count reads.
            for setting in ("enable_seqscan", "enable_indexscan", "enable_bitmapscan"):
                connection.execute(text(f"SET LOCAL {setting} = off"))
            plan = " / ".join(row[0] for row in connection.execute(text(f"EXPLAIN {query}")))
            assert "Index Only Scan using ix_events_timeline on events" in plan, plan
