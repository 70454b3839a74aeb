"""The SQL form of trait conditions (accord.segments.pushdown) against the Python evaluator, on SQLite and
PostgreSQL: for random traits and random conditions, the profiles the database selects are exactly the
ones `conditions.evaluate` says are inside."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Connection, select

from accord.runtime import Runtime
from accord.segments import conditions, pushdown
from accord.segments.evaluate import EVENTS, PROFILES

NOW = datetime(2026, 6, 1, tzinfo=UTC)
NAMES = ["a", "b", "0"]
PATHS = ["a", "b", "a.b", "a.0", "0", "b.a.b"]

# Strings: ASCII, accents, an astral character, case; no NUL (PostgreSQL's jsonb refuses \u0000).
TEXT = st.text(alphabet="aAbé😀 -", max_size=3)
NUMBER = st.integers(-3, 3) | st.sampled_from([0.5, 1.0, -0.0, 2.5, 10**15, -(10**15)])
SCALAR = st.none() | st.booleans() | NUMBER | TEXT
JSON = st.recursive(
    SCALAR,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(NAMES), inner, max_size=3),
    max_leaves=6,
)
TRAITS = st.dictionaries(st.sampled_from(NAMES), JSON, max_size=3)
OPERANDS = {
    "eq": SCALAR | st.lists(SCALAR, max_size=2),
    "ne": SCALAR,
    "in": st.lists(SCALAR, min_size=1, max_size=3),
    "gt": NUMBER | TEXT,
    "gte": NUMBER | TEXT,
    "lt": NUMBER | TEXT,
    "lte": NUMBER | TEXT,
    "between": st.tuples(NUMBER, NUMBER).map(sorted) | st.tuples(TEXT, TEXT).map(sorted),
    "contains": SCALAR.filter(lambda v: v is not None),
    "starts_with": TEXT.filter(bool),
    "exists": st.sampled_from([None, True, False]),
    "regex": st.sampled_from(["^a", "b$"]),
}
LEAF = st.sampled_from(sorted(OPERANDS)).flatmap(
    lambda op: st.builds(
        lambda path, value: {"trait": path, "op": op, "value": list(value) if isinstance(value, tuple) else value},
        st.sampled_from(PATHS),
        OPERANDS[op],
    )
)
CONDITION = st.recursive(
    LEAF,
    lambda inner: (
        st.lists(inner, min_size=1, max_size=3).map(lambda c: {"all": c})
        | st.lists(inner, min_size=1, max_size=3).map(lambda c: {"any": c})
        | inner.map(lambda c: {"not": c})
    ),
    max_leaves=5,
)


# Events: two names and a type that is not a track; times on, just before and just after the windows'
# edges (whole days from NOW, and the `between` dates), so that every boundary is tried.
EDGES = [NOW - timedelta(days=d) + timedelta(microseconds=u) for d in (0, 1, 3, 10) for u in (-1, 0, 1)]
EVENT = st.tuples(
    st.sampled_from(["track", "track", "page"]), st.sampled_from(["Seen", "Paid"]), st.sampled_from(EDGES)
)
COUNT = st.sampled_from(
    [None, {"gte": 1}, {"gte": 2}, {"lte": 0}, {"lte": 1}, {"eq": 0}, {"eq": 2}, {"gte": 1, "lte": 2}]
)
WINDOW = st.sampled_from(
    [
        {},
        {"within": "1d"},
        {"within": "3d"},
        {"older_than": "1d"},
        {"older_than": "10d"},
        {"between": {"from": EDGES[7].isoformat(), "to": EDGES[4].isoformat()}},
    ]
)
EVENT_LEAF = st.builds(
    lambda name, count, window, occurrence: (
        {"event": name, **window, **({"count": count} if count and occurrence == "any" else {})}
        | ({} if occurrence == "any" else {"occurrence": occurrence})
    ),
    st.sampled_from(["Seen", "Paid"]),
    COUNT,
    WINDOW,
    st.sampled_from(["any", "any", "first", "last"]),
)
WITH_EVENTS = st.recursive(
    EVENT_LEAF | LEAF,
    lambda inner: (
        st.lists(inner, min_size=1, max_size=3).map(lambda c: {"all": c})
        | st.lists(inner, min_size=1, max_size=3).map(lambda c: {"any": c})
        | inner.map(lambda c: {"not": c})
    ),
    max_leaves=4,
)


def _profile(pid: str, traits: dict[str, Any]) -> dict[str, Any]:
    return {"id": pid, "traits": traits, "trait_versions": {}, "counts": {}, "identity_counts": {}} | dict.fromkeys(
        ("first_seen", "last_seen", "created_at", "updated_at"), NOW
    )


def _event(pid: str, n: int, kind: str, name: str, at: datetime) -> dict[str, Any]:
    return {
        "profile_id": pid,
        "source_id": "src",
        "message_id": f"{pid}-{n}",
        "type": kind,
        "event": name,
        "timestamp": at,
        "received_at": NOW,
        "payload": {},
    }


def _store(connection: Connection, ids: list[str], people: Sequence[tuple[dict[str, Any], Sequence[Any]]]) -> None:
    """Profiles with these traits, and their events (kind, name, time, and maybe more), uncommitted."""
    connection.execute(PROFILES.insert(), [_profile(pid, traits) for pid, (traits, _) in zip(ids, people, strict=True)])
    rows = [
        _event(pid, n, kind, event, at)
        for pid, (_, events) in zip(ids, people, strict=True)
        for n, (kind, event, at, *_) in enumerate(events)
    ]
    if rows:
        connection.execute(EVENTS.insert(), rows)


def _agree(
    connection: Connection,
    dialect: str,
    ids: list[str],
    facts: list[conditions.Facts],
    documents: list[dict[str, Any]],
    **timeline: Any,
) -> None:
    """For each valid condition the database can evaluate, it selects exactly the profiles (`ids`, stored)
    whose `facts` the evaluator admits."""
    for document in documents:
        node = _parsed(document)
        if node is None:
            continue
        expected = {pid for pid, found in zip(ids, facts, strict=True) if conditions.evaluate(node, found, NOW)}
        where = pushdown.predicate(node, PROFILES.c.traits, dialect, **timeline)
        if where is None:
            continue
        selected = set(connection.scalars(select(PROFILES.c.id).where(PROFILES.c.id.in_(ids), where)))
        assert selected == expected, (document, facts)


def _parsed(document: dict[str, Any]) -> conditions.Node | None:
    try:
        return conditions.parse(document)
    except conditions.ConditionError:
        return None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(people=st.lists(TRAITS, min_size=1, max_size=8), documents=st.lists(CONDITION, min_size=1, max_size=4))
def test_the_database_selects_exactly_whom_the_evaluator_admits(
    rt: Runtime, people: list[dict[str, Any]], documents: list[dict[str, Any]]
) -> None:
    dialect = rt.db.engine.dialect.name
    ids = [str(uuid.UUID(int=n)) for n in range(len(people))]
    with rt.db.engine.connect() as connection:
        transaction = connection.begin()
        try:
            connection.execute(
                PROFILES.insert(), [_profile(pid, traits) for pid, traits in zip(ids, people, strict=True)]
            )
            _agree(connection, dialect, ids, [conditions.Facts(traits=traits) for traits in people], documents)
        finally:
            transaction.rollback()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    people=st.lists(st.tuples(TRAITS, st.lists(EVENT, max_size=5)), min_size=1, max_size=6),
    documents=st.lists(WITH_EVENTS, min_size=1, max_size=4),
)
def test_event_counts_and_occurrences_select_exactly_whom_the_evaluator_admits(
    rt: Runtime, people: list[tuple[dict[str, Any], list[tuple[str, str, datetime]]]], documents: list[dict[str, Any]]
) -> None:
    dialect = rt.db.engine.dialect.name
    ids = [str(uuid.UUID(int=n)) for n in range(len(people))]
    timelines = [
        {
            name: [(at, {}) for kind, event, at in events if kind == "track" and event == name]
            for name in ("Seen", "Paid")
        }
        for _, events in people
    ]
    with rt.db.engine.connect() as connection:
        transaction = connection.begin()
        try:
            _store(connection, ids, people)
            facts = [
                conditions.Facts(traits=traits, events=events)
                for (traits, _), events in zip(people, timelines, strict=True)
            ]
            _agree(connection, dialect, ids, facts, documents, profile_id=PROFILES.c.id, now=NOW)
        finally:
            transaction.rollback()


@pytest.mark.parametrize(
    ("document", "at", "admitted"),
    [
        ({"event": "Seen", "within": "1d"}, NOW - timedelta(days=1), True),  # the start is in
        ({"event": "Seen", "within": "1d"}, NOW - timedelta(days=1, microseconds=1), False),
        ({"event": "Seen", "older_than": "1d"}, NOW - timedelta(days=1), False),  # the end is out
        ({"event": "Seen", "older_than": "1d"}, NOW - timedelta(days=1, microseconds=1), True),
        ({"event": "Seen", "between": {"from": EDGES[7].isoformat(), "to": EDGES[4].isoformat()}}, EDGES[7], True),
        ({"event": "Seen", "between": {"from": EDGES[7].isoformat(), "to": EDGES[4].isoformat()}}, EDGES[4], False),
        ({"event": "Seen", "occurrence": "last", "within": "1d"}, NOW - timedelta(days=1), True),
        ({"event": "Seen", "occurrence": "first", "older_than": "1d"}, NOW - timedelta(days=1), False),
        ({"event": "Seen", "count": {"eq": 0}, "within": "1d"}, NOW - timedelta(days=1), False),
        ({"event": "Seen", "count": {"lte": 0}, "within": "1d"}, NOW - timedelta(days=2), True),
    ],
)
def test_window_edges(rt: Runtime, document: dict[str, Any], at: datetime, admitted: bool) -> None:
    """One event at a window's edge: the database and the evaluator agree, and say what the docs say."""
    node = conditions.parse(document)
    assert conditions.evaluate(node, conditions.Facts(traits={}, events={"Seen": [(at, {})]}), NOW) is admitted
    pid = str(uuid.UUID(int=1))
    with rt.db.engine.connect() as connection:
        transaction = connection.begin()
        try:
            connection.execute(PROFILES.insert(), _profile(pid, {}))
            connection.execute(EVENTS.insert(), _event(pid, 0, "track", "Seen", at))
            where = pushdown.predicate(node, PROFILES.c.traits, rt.db.dialect, profile_id=PROFILES.c.id, now=NOW)
            assert where is not None
            found = connection.scalars(select(PROFILES.c.id).where(where)).all()
            assert found == ([pid] if admitted else [])
        finally:
            transaction.rollback()


@pytest.mark.parametrize(
    ("document", "pushed"),
    [
        ({"trait": "plan", "op": "eq", "value": "gold"}, True),
        ({"all": [{"trait": "plan", "op": "in", "value": ["pro", 1]}, {"not": {"trait": "x", "op": "exists"}}]}, True),
        ({"trait": "email", "op": "regex", "value": "@example"}, False),
        ({"trait": "tags", "op": "eq", "value": ["a"]}, False),
        ({"any": [{"trait": "plan", "op": "eq", "value": "gold"}, {"segment": "vip"}]}, False),
        ({"event": "Order Completed"}, True),
        ({"event": "Order Completed", "count": {"lte": 2}, "within": "7d"}, True),
        ({"event": "Order Completed", "occurrence": "last", "older_than": "3d"}, True),
        ({"event": "Order Completed", "where": [{"property": "total", "op": "gte", "value": 50}]}, False),
        ({"all": [{"trait": "plan", "op": "eq", "value": "gold"}, {"event": "Paid", "where": []}]}, True),
        ({"trait": "n", "op": "gt", "value": 2**60}, False),
    ],
)
def test_what_is_left_to_python(document: dict[str, Any], pushed: bool) -> None:
    node = conditions.parse(document)
    for dialect in ("sqlite", "postgresql"):
        found = pushdown.predicate(node, PROFILES.c.traits, dialect, profile_id=PROFILES.c.id, now=NOW)
        assert (found is not None) is pushed


def test_events_need_the_profile_and_the_time() -> None:
    node = conditions.parse({"event": "Order Completed", "within": "7d"})
    assert pushdown.predicate(node, PROFILES.c.traits, "sqlite") is None
    assert pushdown.predicate(node, PROFILES.c.traits, "sqlite", profile_id=PROFILES.c.id) is None


def test_an_unreadable_trait_is_left_to_python() -> None:
    node = conditions.parse({"all": [{"trait": "email", "op": "exists"}, {"trait": "plan", "op": "eq", "value": 1}]})
    assert pushdown.predicate(node, PROFILES.c.traits, "sqlite", readable=lambda trait: trait != "email") is None


# Events with a price, and event leaves that may filter on it: what `candidates` narrows to in the
# database must hold every profile the evaluator admits (it may hold more).
PRICED = st.tuples(
    st.sampled_from(["track", "track", "page"]),
    st.sampled_from(["Seen", "Paid"]),
    st.sampled_from(EDGES),
    st.sampled_from([5, 50, 500]),
)
FILTERED_LEAF = st.builds(
    lambda leaf, least: leaf | ({"where": [{"property": "price", "op": "gte", "value": least}]} if least else {}),
    EVENT_LEAF,
    st.sampled_from([None, 50, 500]),
)
NARROWABLE = st.recursive(
    FILTERED_LEAF | LEAF,
    lambda inner: (
        st.lists(inner, min_size=1, max_size=3).map(lambda c: {"all": c})
        | st.lists(inner, min_size=1, max_size=3).map(lambda c: {"any": c})
        | inner.map(lambda c: {"not": c})
    ),
    max_leaves=4,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    people=st.lists(st.tuples(TRAITS, st.lists(PRICED, max_size=5)), min_size=1, max_size=6),
    documents=st.lists(NARROWABLE, min_size=1, max_size=4),
)
def test_the_candidates_hold_everyone_the_evaluator_admits(
    rt: Runtime,
    people: list[tuple[dict[str, Any], list[tuple[str, str, datetime, int]]]],
    documents: list[dict[str, Any]],
) -> None:
    dialect = rt.db.engine.dialect.name
    ids = [str(uuid.UUID(int=n)) for n in range(len(people))]
    facts = [
        conditions.Facts(
            traits=traits,
            events={
                name: [(at, {"price": price}) for kind, event, at, price in events if kind == "track" and event == name]
                for name in ("Seen", "Paid")
            },
        )
        for traits, events in people
    ]
    with rt.db.engine.connect() as connection:
        transaction = connection.begin()
        try:
            _store(connection, ids, people)
            for document in documents:
                node = _parsed(document)
                if node is None:
                    continue
                narrowed = pushdown.candidates(
                    node,
                    PROFILES.c.traits,
                    dialect,
                    readable=lambda trait: trait != "b",  # as a personal trait: left to Python
                    profile_id=PROFILES.c.id,
                    now=NOW,
                )
                if narrowed is None:
                    continue
                admitted = {pid for pid, found in zip(ids, facts, strict=True) if conditions.evaluate(node, found, NOW)}
                selected = set(connection.scalars(select(PROFILES.c.id).where(PROFILES.c.id.in_(ids), narrowed)))
                assert admitted <= selected, (document, facts)
        finally:
            transaction.rollback()


FILTER = [{"property": "total", "op": "gte", "value": 50}]


@pytest.mark.parametrize(
    ("document", "narrows"),
    [
        ({"event": "Paid", "where": FILTER}, True),  # at least one Paid, whatever its total
        ({"event": "Paid", "where": FILTER, "count": {"gte": 2, "lte": 5}, "within": "7d"}, True),
        ({"event": "Paid", "where": FILTER, "count": {"eq": 2}}, True),
        ({"event": "Paid", "where": FILTER, "occurrence": "first", "within": "7d"}, True),
        ({"event": "Paid", "where": FILTER, "count": {"eq": 0}}, False),  # fewer filtered events: no bound
        ({"event": "Paid", "where": FILTER, "count": {"lte": 1}}, False),
        ({"event": "Paid", "where": FILTER, "count": {"gte": 0}}, False),
        ({"not": {"event": "Paid", "where": FILTER}}, False),
        ({"all": [{"event": "Paid", "where": FILTER}, {"trait": "e", "op": "regex", "value": "x"}]}, True),
        ({"any": [{"event": "Paid", "where": FILTER}, {"trait": "e", "op": "regex", "value": "x"}]}, False),
        ({"any": [{"event": "Paid", "where": FILTER}, {"trait": "plan", "op": "eq", "value": "gold"}]}, True),
        ({"all": [{"segment": "vip"}, {"trait": "email", "op": "exists"}]}, False),  # email: a personal trait
        ({"trait": "plan", "op": "eq", "value": "gold"}, True),  # exact: the predicate itself
    ],
)
def test_what_narrows_a_backfill_left_to_python(document: dict[str, Any], narrows: bool) -> None:
    node = conditions.parse(document)
    for dialect in ("sqlite", "postgresql"):
        found = pushdown.candidates(
            node,
            PROFILES.c.traits,
            dialect,
            readable=lambda trait: trait != "email",
            profile_id=PROFILES.c.id,
            now=NOW,
        )
        assert (found is not None) is narrows
