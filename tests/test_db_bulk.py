"""`insert_rows` writes what SQLAlchemy's own insert writes, on SQLite and PostgreSQL: the same values read
back through the ORM, and on SQLite the same stored text (timestamps compare as strings there). So does
`upsert_rows`, inserting and updating."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any, cast

import pytest
from sqlalchemy import Table, event, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError

from accord.db.bulk import insert_rows, upsert_rows
from accord.db.engine import duplicate_key
from accord.identity.models import Merge
from accord.journeys.models import JourneyPosition
from accord.profiles.models import Profile
from accord.runtime import Runtime

POSITIONS = cast(Table, JourneyPosition.__table__)
MERGES = cast(Table, Merge.__table__)
PROFILES = cast(Table, Profile.__table__)

AWARE = datetime(2026, 11, 30, 2, 7, 59, 123456, tzinfo=UTC)
WHOLE_SECOND = datetime(2026, 11, 30, 2, 8, 0, tzinfo=UTC)  # microsecond 0: still written with .000000
ELSEWHERE = datetime(2026, 11, 30, 4, 8, 0, 5, tzinfo=timezone(timedelta(hours=2)))  # stored as UTC


def position(profile_id: str, **changes: Any) -> dict[str, Any]:
    row = {
        "journey_key": "onboarding",
        "profile_id": profile_id,
        "stage": "trial",
        "stage_entered_at": AWARE,
        "entered_at": WHOLE_SECOND,
        "state": "active",
        "ended_at": None,
        "reason": None,
        "path": {"trial": AWARE.isoformat(), "naïve ünïcode": ["ß", 1, 2.5, None, {"nested": True}]},
    }
    return {**row, **changes}


def stored(rt: Runtime, profile_id: str) -> tuple[Any, ...]:
    with rt.db.read() as session:
        row = session.scalars(select(JourneyPosition).where(JourneyPosition.profile_id == profile_id)).one()
        return (row.stage, row.stage_entered_at, row.entered_at, row.state, row.ended_at, row.reason, row.path)


@pytest.mark.parametrize(
    "changes",
    [{}, {"ended_at": ELSEWHERE, "reason": "goal", "state": "completed"}, {"path": {}}],
    ids=["active", "ended-elsewhere", "empty-path"],
)
def test_rows_read_back_as_sqlalchemy_wrote_them(rt: Runtime, changes: dict[str, Any]) -> None:
    with rt.db.unit_of_work() as session:
        session.execute(POSITIONS.insert(), [position("by-sqlalchemy", **changes)])
        insert_rows(session, POSITIONS, [position("by-bulk", **changes)])
    assert stored(rt, "by-bulk") == stored(rt, "by-sqlalchemy")
    assert stored(rt, "by-bulk")[2] == WHOLE_SECOND
    if rt.db.dialect == "sqlite":
        query = text("SELECT stage_entered_at, entered_at, ended_at, path FROM journey_positions WHERE profile_id = :p")
        with rt.db.read() as session:
            raw = {p: session.execute(query, {"p": p}).one() for p in ("by-bulk", "by-sqlalchemy")}
        assert raw["by-bulk"][:3] == raw["by-sqlalchemy"][:3]


def test_timestamps_compare_in_time_order_with_bound_values(rt: Runtime) -> None:
    with rt.db.unit_of_work() as session:
        insert_rows(session, POSITIONS, [position("p1", entered_at=WHOLE_SECOND)])
    with rt.db.read() as session:
        later = session.scalars(
            select(JourneyPosition.profile_id).where(JourneyPosition.entered_at >= WHOLE_SECOND)
        ).all()
        earlier = session.scalars(
            select(JourneyPosition.profile_id).where(JourneyPosition.entered_at < WHOLE_SECOND)
        ).all()
    assert later == ["p1"]
    assert earlier == []


def test_many_rows_in_one_call(rt: Runtime) -> None:
    rows = [position(f"p{i:04d}", stage_entered_at=AWARE + timedelta(seconds=i)) for i in range(1200)]
    with rt.db.unit_of_work() as session:
        insert_rows(session, POSITIONS, rows)
    with rt.db.read() as session:
        found = session.execute(
            select(JourneyPosition.profile_id, JourneyPosition.stage_entered_at).order_by(JourneyPosition.profile_id)
        ).all()
    assert [(pid, at) for pid, at in found] == [(r["profile_id"], r["stage_entered_at"]) for r in rows]


def test_a_naive_timestamp_is_refused_and_nothing_is_written(rt: Runtime) -> None:
    with pytest.raises(ValueError, match="naive datetime"), rt.db.unit_of_work() as session:
        insert_rows(session, POSITIONS, [position("ok"), position("naive", entered_at=datetime(2026, 1, 1))])
    with rt.db.read() as session:
        assert session.scalars(select(JourneyPosition.profile_id)).all() == []


def test_unknown_columns_and_missing_python_defaults_are_refused(rt: Runtime) -> None:
    with rt.db.unit_of_work() as session:
        with pytest.raises(ValueError, match="has no column colour"):
            insert_rows(session, POSITIONS, [{**position("p"), "colour": "red"}])
        with pytest.raises(ValueError, match=r"needs .*merged_at"):
            insert_rows(session, MERGES, [{"survivor_id": "a", "absorbed_id": "b"}])
        insert_rows(session, POSITIONS, [])  # nothing to do


def test_a_duplicate_key_fails_the_transaction(rt: Runtime) -> None:
    with pytest.raises(IntegrityError), rt.db.unit_of_work() as session:
        insert_rows(session, POSITIONS, [position("twice"), position("twice")])
    with rt.db.read() as session:
        assert session.scalars(select(JourneyPosition.profile_id)).all() == []


def test_a_duplicate_key_is_an_integrity_error_as_sqlalchemy_raises_it(rt: Runtime) -> None:
    """The worker tells a conflict with another worker (IntegrityError: retry) from a fault by the type."""
    with rt.db.unit_of_work() as session:
        insert_rows(session, POSITIONS, [position("first")])
    with pytest.raises(IntegrityError) as raised, rt.db.unit_of_work() as session:
        insert_rows(session, POSITIONS, [position("first")])
    assert duplicate_key(raised.value)  # the API answers it 503, as a race with another writer (COPY on PostgreSQL)


def profile_row(profile_id: str, **changes: Any) -> dict[str, Any]:
    row = {
        "id": profile_id,
        "merged_into": None,
        "traits": {"plan": "gold", "naïve": ["ß", 1, 2.5, None]},
        "traits_enc": None,
        "trait_versions": {"plan": AWARE.isoformat()},
        "counts": {},
        "first_seen": AWARE,
        "last_seen": WHOLE_SECOND,
        "identity_counts": {"user_id": 1},
        "cluster_id": None,
        "updated_at": AWARE,
        "created_at": AWARE,
    }
    return {**row, **changes}


def stored_profile(rt: Runtime, profile_id: str) -> tuple[Any, ...]:
    with rt.db.read() as session:
        row = session.scalars(select(Profile).where(Profile.id == profile_id)).one()
        return (
            row.merged_into,
            row.traits,
            row.traits_enc,
            row.trait_versions,
            row.counts,
            row.first_seen,
            row.last_seen,
            row.identity_counts,
            row.cluster_id,
            row.updated_at,
            row.created_at,
        )


def test_upserted_rows_read_back_as_sqlalchemy_wrote_them(rt: Runtime) -> None:
    insert = (pg_insert if rt.db.dialect == "postgresql" else sqlite_insert)(PROFILES)
    by_sqlalchemy = insert.on_conflict_do_update(
        index_elements=[PROFILES.c.id],
        set_={c.name: insert.excluded[c.name] for c in PROFILES.c if c.name not in ("id", "created_at")},
    )
    changed = {
        "traits": {"plan": "silver"},
        "traits_enc": "sealed",
        "cluster_id": "c1",
        "last_seen": ELSEWHERE,
        "updated_at": ELSEWHERE,
        "created_at": ELSEWHERE,  # kept: the stored row's stays
    }
    for changes in ({}, changed):  # inserted, then updated
        with rt.db.unit_of_work() as session:
            session.execute(by_sqlalchemy, [profile_row("by-sqlalchemy", **changes)])
            upsert_rows(session, PROFILES, [profile_row("by-bulk", **changes)], key="id", keep=("created_at",))
        assert stored_profile(rt, "by-bulk") == stored_profile(rt, "by-sqlalchemy")
    assert stored_profile(rt, "by-bulk")[1] == {"plan": "silver"}
    assert stored_profile(rt, "by-bulk")[-1] == AWARE
    if rt.db.dialect == "sqlite":
        query = text("SELECT first_seen, last_seen, created_at, updated_at FROM profiles WHERE id = :p")
        with rt.db.read() as session:
            raw = {p: session.execute(query, {"p": p}).one() for p in ("by-bulk", "by-sqlalchemy")}
        assert raw["by-bulk"] == raw["by-sqlalchemy"]


def test_many_rows_upserted_at_once_read_back_as_sqlalchemy_wrote_them(rt: Runtime) -> None:
    """On PostgreSQL the rows of one call go as one statement, a column per array: each row lands in its own
    columns, NULLs and JSON values included, new and stored rows alike; rows sharing a key are upserted
    one after another, the later winning."""
    insert = (pg_insert if rt.db.dialect == "postgresql" else sqlite_insert)(PROFILES)
    by_sqlalchemy = insert.on_conflict_do_update(
        index_elements=[PROFILES.c.id],
        set_={c.name: insert.excluded[c.name] for c in PROFILES.c if c.name not in ("id", "created_at")},
    )

    def rows(prefix: str, n: int) -> list[dict[str, Any]]:
        return [
            profile_row(
                f"{prefix}-{i}",
                merged_into=None if i % 2 else "elsewhere",
                traits={"n": i, "null": None, "list": [i, "x"]} if i % 3 else {},
                traits_enc=None if i % 2 else f"sealed-{i}",
                cluster_id=f"c{i}" if i % 4 == 0 else None,
                last_seen=AWARE + timedelta(seconds=i),
                created_at=ELSEWHERE if i >= 5 else AWARE,  # for stored rows, the stored value stays
            )
            for i in range(n)
        ]

    for prefix in ("bulk", "orm"):
        with rt.db.unit_of_work() as session:
            upsert_rows(session, PROFILES, rows(prefix, 5), key="id", keep=("created_at",))
    statements: list[bool] = []  # each statement the driver ran: whether once per row (executemany)

    def ran(*args: Any) -> None:
        statements.append(args[-1])

    with rt.db.unit_of_work() as session:  # 5 stored and 4 new rows, in one call
        event.listen(rt.db.engine, "before_cursor_execute", ran)
        try:
            upsert_rows(session, PROFILES, rows("bulk", 9), key="id", keep=("created_at",))
        finally:
            event.remove(rt.db.engine, "before_cursor_execute", ran)
        session.execute(by_sqlalchemy, rows("orm", 9))
    assert statements == ([False] if rt.db.dialect == "postgresql" else [True])
    for i in range(9):
        assert stored_profile(rt, f"bulk-{i}") == stored_profile(rt, f"orm-{i}")
    assert stored_profile(rt, "bulk-4")[1] == {"n": 4, "null": None, "list": [4, "x"]}
    assert stored_profile(rt, "bulk-4")[2] == "sealed-4"
    assert stored_profile(rt, "bulk-2")[-1] == AWARE  # created_at kept when updated
    assert stored_profile(rt, "bulk-7")[-1] == ELSEWHERE.astimezone(UTC)  # and as given when inserted

    with rt.db.unit_of_work() as session:  # columns of NULLs only, and no row at all
        upsert_rows(session, PROFILES, [profile_row("plain-1"), profile_row("plain-2")], key="id", keep=("created_at",))
        upsert_rows(session, PROFILES, [], key="id")
    assert stored_profile(rt, "plain-2")[0] is None
    assert stored_profile(rt, "plain-2")[2] is None

    first, later = profile_row("twice", traits={"plan": "gold"}), profile_row("twice", traits={"plan": "silver"})
    with rt.db.unit_of_work() as session:
        upsert_rows(session, PROFILES, [first, profile_row("once"), later], key="id", keep=("created_at",))
    assert stored_profile(rt, "twice")[1] == {"plan": "silver"}
    assert stored_profile(rt, "once")[1] == profile_row("once")["traits"]
