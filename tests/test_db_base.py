"""The statements built once with values bound on execution (`one_of_bound`, `pair_of_bound`) select exactly
the rows given, on SQLite and PostgreSQL, whatever the number of values; on SQLite the pairs are found
through the primary key, not by scanning the table as `IN (VALUES ...)` does."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import cast

from sqlalchemy import Table, delete, select

from accord.db.base import listed, listed_pairs, one_of_bound, pair_of_bound
from accord.db.bulk import insert_rows
from accord.runtime import Runtime
from accord.segments.models import SegmentMembership

MEMBERSHIPS = cast(Table, SegmentMembership.__table__)
AT = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


def test_bound_values_select_and_delete_exactly_the_rows_given(rt: Runtime) -> None:
    m = MEMBERSHIPS.c
    rows = [{"segment_key": key, "profile_id": f"p{n}", "entered_at": AT} for key in ("a", "b") for n in range(4)]
    with rt.db.unit_of_work() as session:
        insert_rows(session, MEMBERSHIPS, rows)
        connection = session.connection()
        dialect = connection.dialect.name
        of_profiles = select(m.segment_key, m.profile_id).where(one_of_bound(m.profile_id, "ids", dialect))
        for ids in ([], ["p1"], ["p0", "p3", "nobody"]):
            found = {tuple(row) for row in connection.execute(of_profiles, {"ids": listed(ids, dialect)})}
            assert found == {(key, pid) for key in ("a", "b") for pid in ids if pid != "nobody"}
        leave = delete(MEMBERSHIPS).where(pair_of_bound(m.segment_key, m.profile_id, "pairs", dialect))
        connection.execute(leave, {"pairs": listed_pairs([("a", "p1"), ("b", "p2"), ("b", "nobody")])})
        connection.execute(leave, {"pairs": listed_pairs([("a", "p3")])})
        left = {tuple(row) for row in connection.execute(select(m.segment_key, m.profile_id))}
        assert left == {(r["segment_key"], r["profile_id"]) for r in rows} - {("a", "p1"), ("b", "p2"), ("a", "p3")}
        if dialect == "sqlite":
            compiled = leave.compile(dialect=connection.dialect)
            plan = " ".join(
                str(row[-1]) for row in connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}", ('[["a", "p0"]]',))
            )
            assert "SEARCH segment_memberships USING INDEX" in plan, plan
            assert "SCAN segment_memberships" not in plan, plan
