"""The SQL form of trait conditions (accord.segments.pushdown) against the Python evaluator, on SQLite and
PostgreSQL: for random traits and random conditions, the profiles the database selects are exactly the
ones `conditions.evaluate` says are inside."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from accord.runtime import Runtime
from accord.segments import conditions, pushdown
from accord.segments.evaluate import PROFILES

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
                PROFILES.insert(),
                [
                    {"id": pid, "traits": traits, "trait_versions": {}, "counts": {}, "identity_counts": {}}
                    | dict.fromkeys(("first_seen", "last_seen", "created_at", "updated_at"), NOW)
                    for pid, traits in zip(ids, people, strict=True)
                ],
            )
            for document in documents:
                node = _parsed(document)
                if node is None:
                    continue
                expected = {
                    pid
                    for pid, traits in zip(ids, people, strict=True)
                    if conditions.evaluate(node, conditions.Facts(traits=traits), NOW)
                }
                where = pushdown.predicate(node, PROFILES.c.traits, dialect)
                if where is None:
                    continue
                found = set(connection.scalars(select(PROFILES.c.id).where(PROFILES.c.id.in_(ids), where)))
                assert found == expected, (document, people)
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
        ({"event": "Order Completed"}, False),
        ({"trait": "n", "op": "gt", "value": 2**60}, False),
    ],
)
def test_what_is_left_to_python(document: dict[str, Any], pushed: bool) -> None:
    node = conditions.parse(document)
    for dialect in ("sqlite", "postgresql"):
        assert (pushdown.predicate(node, PROFILES.c.traits, dialect) is not None) is pushed


def test_an_unreadable_trait_is_left_to_python() -> None:
    node = conditions.parse({"all": [{"trait": "email", "op": "exists"}, {"trait": "plan", "op": "eq", "value": 1}]})
    assert pushdown.predicate(node, PROFILES.c.traits, "sqlite", readable=lambda trait: trait != "email") is None
