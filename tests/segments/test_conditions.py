"""The condition language, pure: every operator, every window boundary, the schema, errors with paths."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from accord.segments import conditions
from accord.segments.conditions import Facts, evaluate, parse

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def holds(document: dict[str, Any], traits: dict[str, Any] | None = None, **facts: Any) -> bool:
    return evaluate(parse(document), Facts(traits=traits or {}, **facts), NOW)


TRAITS = {
    "plan": "gold",
    "age": 30,
    "score": 2.5,
    "vip": True,
    "tags": ["a", "b"],
    "email": "ann@example.com",
    "address": {"city": "Leeds"},
    "none": None,
    "joined": "2026-01-15",
}


@pytest.mark.parametrize(
    ("op", "value", "trait", "expected"),
    [
        ("eq", "gold", "plan", True),
        ("eq", "Gold", "plan", False),
        ("eq", 30.0, "age", True),  # 30 == 30.0
        ("eq", 1, "vip", False),  # true is not 1
        ("eq", True, "vip", True),
        ("eq", ["a", "b"], "tags", True),
        ("eq", "gold", "missing", False),
        ("eq", None, "none", True),
        ("ne", "silver", "plan", True),
        ("ne", "gold", "plan", False),
        ("ne", "gold", "missing", True),
        ("gt", 29, "age", True),
        ("gt", 30, "age", False),
        ("gte", 30, "age", True),
        ("gte", 31, "age", False),
        ("lt", 31, "age", True),
        ("lt", 30, "age", False),
        ("lte", 30, "age", True),
        ("lte", 29, "age", False),
        ("gt", "29", "age", False),  # a string never orders against a number
        ("gt", 0, "vip", False),  # nor a boolean
        ("gte", "2026-01-15", "joined", True),  # ISO dates order as strings
        ("lt", "2026-01-15", "joined", False),
        ("gt", 1, "missing", False),
        ("between", [30, 40], "age", True),  # both ends inclusive
        ("between", [20, 30], "age", True),
        ("between", [31, 40], "age", False),
        ("between", [2.5, 2.5], "score", True),
        ("between", ["2026-01-01", "2026-01-31"], "joined", True),
        ("between", ["a", "z"], "age", False),
        ("in", ["silver", "gold"], "plan", True),
        ("in", ["silver"], "plan", False),
        ("in", [30], "age", True),
        ("in", ["gold"], "missing", False),
        ("contains", "example", "email", True),
        ("contains", "EXAMPLE", "email", False),
        ("contains", "a", "tags", True),
        ("contains", "c", "tags", False),
        ("contains", 3, "age", False),
        ("starts_with", "ann@", "email", True),
        ("starts_with", "bob", "email", False),
        ("starts_with", "3", "age", False),
        ("exists", None, "plan", True),
        ("exists", True, "plan", True),
        ("exists", True, "missing", False),
        ("exists", True, "none", False),  # null counts as absent
        ("exists", False, "missing", True),
        ("exists", False, "plan", False),
        ("regex", r"@example\.com$", "email", True),
        ("regex", r"^bob", "email", False),
        ("regex", r"3", "age", False),  # only strings match
        ("eq", "Leeds", "address.city", True),
        ("exists", True, "address.town", False),
        ("eq", "Leeds", "plan.city", False),
    ],
)
def test_trait_operators(op: str, value: Any, trait: str, expected: bool) -> None:
    document: dict[str, Any] = {"trait": trait, "op": op}
    if value is not None:
        document["value"] = value
    assert holds(document, TRAITS) is expected


def test_all_any_not() -> None:
    gold = {"trait": "plan", "op": "eq", "value": "gold"}
    young = {"trait": "age", "op": "lt", "value": 18}
    assert holds({"all": [gold]}, TRAITS)
    assert not holds({"all": [gold, young]}, TRAITS)
    assert holds({"any": [gold, young]}, TRAITS)
    assert not holds({"any": [young]}, TRAITS)
    assert holds({"not": young}, TRAITS)
    assert not holds({"not": {"not": young}}, TRAITS)


def at(days: float) -> datetime:
    return NOW - timedelta(days=days)


def events(*moments: datetime, **properties: Any) -> dict[str, list[tuple[datetime, dict[str, Any]]]]:
    return {"Bought": [(m, dict(properties)) for m in moments]}


@pytest.mark.parametrize(
    ("moment", "expected"),
    [(at(30), True), (at(30) + timedelta(microseconds=1), True), (at(30) - timedelta(microseconds=1), False)],
)
def test_within_includes_its_start(moment: datetime, expected: bool) -> None:
    assert holds({"event": "Bought", "within": "30d"}, events=events(moment)) is expected


@pytest.mark.parametrize(
    ("moment", "expected"),
    [(at(30), False), (at(30) - timedelta(microseconds=1), True), (at(31), True), (at(1), False)],
)
def test_older_than_excludes_its_end(moment: datetime, expected: bool) -> None:
    assert holds({"event": "Bought", "older_than": "30d"}, events=events(moment)) is expected


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (datetime(2026, 1, 1, tzinfo=UTC), True),  # from is inclusive
        (datetime(2026, 2, 1, tzinfo=UTC), False),  # to is exclusive
        (datetime(2026, 2, 1, tzinfo=UTC) - timedelta(microseconds=1), True),
        (datetime(2025, 12, 31, 23, 59, 59, tzinfo=UTC), False),
    ],
)
def test_between_dates_is_half_open(moment: datetime, expected: bool) -> None:
    document = {"event": "Bought", "between": {"from": "2026-01-01T00:00:00Z", "to": "2026-02-01T01:00:00+01:00"}}
    assert holds(document, events=events(moment)) is expected


@pytest.mark.parametrize(
    ("count", "n", "expected"),
    [
        ({"gte": 2}, 1, False),
        ({"gte": 2}, 2, True),
        ({"lte": 2}, 2, True),
        ({"lte": 2}, 3, False),
        ({"lte": 2}, 0, True),  # at most: never counts
        ({"eq": 0}, 0, True),
        ({"eq": 2}, 2, True),
        ({"eq": 2}, 3, False),
        ({"gte": 1, "lte": 2}, 3, False),
        (None, 0, False),  # default: at least once
        (None, 1, True),
    ],
)
def test_counts(count: dict[str, int] | None, n: int, expected: bool) -> None:
    document: dict[str, Any] = {"event": "Bought"}
    if count is not None:
        document["count"] = count
    assert holds(document, events=events(*[at(i) for i in range(n)])) is expected


def test_counts_only_inside_the_window_and_matching_the_filters() -> None:
    found = {
        "Bought": [(at(1), {"total": 60}), (at(2), {"total": 40}), (at(40), {"total": 90}), (at(3), {"total": 50})]
    }
    document = {"event": "Bought", "where": [{"property": "total", "op": "gte", "value": 50}], "within": "30d"}
    assert holds({**document, "count": {"eq": 2}}, events=found)
    assert not holds({**document, "count": {"gte": 3}}, events=found)
    assert holds(
        {
            **document,
            "where": [
                {"property": "total", "op": "gte", "value": 50},
                {"property": "x", "op": "exists", "value": False},
            ],
            "count": {"eq": 2},
        },
        events=found,
    )
    assert not holds({"event": "Sold"}, events=found)


def test_first_and_last_occurrence() -> None:
    found = events(at(40), at(10), at(2))
    assert not holds({"event": "Bought", "occurrence": "first", "within": "30d"}, events=found)
    assert holds({"event": "Bought", "occurrence": "last", "within": "30d"}, events=found)
    assert holds({"event": "Bought", "occurrence": "first", "older_than": "30d"}, events=found)
    assert not holds({"event": "Bought", "occurrence": "last", "older_than": "3d"}, events=found)
    assert holds({"event": "Bought", "occurrence": "last", "older_than": "1d"}, events=found)
    assert not holds({"event": "Bought", "occurrence": "first"}, events={})
    assert holds({"event": "Bought", "occurrence": "first"}, events=found)


def test_segment_and_consent_leaves() -> None:
    assert holds({"segment": "vip"}, segments={"vip"})
    assert not holds({"segment": "vip"}, segments=set())
    allow = Facts(traits={}, allowed=lambda purpose, channel: (purpose, channel) == ("marketing", "email"))
    assert evaluate(parse({"consent": {"purpose": "marketing", "channel": "email"}}), allow, NOW)
    assert not evaluate(parse({"consent": {"purpose": "marketing", "channel": "sms"}}), allow, NOW)
    assert not evaluate(parse({"consent": {"purpose": "marketing"}}), Facts(traits={}), NOW)  # deny by default


@pytest.mark.parametrize(
    ("document", "path", "words"),
    [
        (
            {"all": [{"trait": "plan", "op": "eq", "value": 1}, {"trait": "x", "op": "bad"}]},
            "$.all[1].op",
            "Input should be",
        ),
        ({"all": [{"trait": "x", "op": "between", "value": [3, 1]}]}, "$.all[0].value", "low <= high"),
        ({"all": [{"trait": "x", "op": "between", "value": [1, "z"]}]}, "$.all[0].value", "two numbers or two strings"),
        ({"trait": "x", "op": "in"}, "$.value", "list"),
        ({"trait": "x", "op": "in", "value": []}, "$.value", "list"),
        ({"trait": "x", "op": "gt", "value": True}, "$.value", "number or a string"),
        ({"trait": "x", "op": "gt", "value": float("nan")}, "$.value", "number or a string"),
        ({"trait": "x", "op": "starts_with", "value": ""}, "$.value", "non-empty"),
        ({"trait": "x", "op": "exists", "value": "yes"}, "$.value", "true, false"),
        ({"trait": "x", "op": "regex", "value": "("}, "$.value", "does not compile"),
        ({"trait": "x", "op": "regex", "value": "a" * 201}, "$.value", "pattern of 1 to 200"),
        ({"trait": "", "op": "eq", "value": 1}, "$.trait", "pattern"),
        ({"trait": "a..b", "op": "eq", "value": 1}, "$.trait", "pattern"),
        (
            {"any": [{"event": "E", "where": [{"property": "p", "op": "regex", "value": "["}]}]},
            "$.any[0].where[0].value",
            "compile",
        ),
        ({"not": {"foo": 1}}, "$.not", "exactly one of"),
        ({"trait": "a", "event": "b", "op": "eq"}, "$", "exactly one of"),
        ([1], "$", "exactly one of"),
        ("gold", "$", "exactly one of"),
        ({"all": []}, "$.all", "at least 1"),
        ({"event": "E", "within": "3d", "older_than": "2d"}, "$", "at most one of"),
        ({"event": "E", "within": "30"}, "$.within", "pattern"),
        ({"event": "E", "within": "99999d"}, "$", "at most 36600d"),
        ({"event": "E", "count": {}}, "$.count", "needs gte"),
        ({"event": "E", "count": {"gte": 3, "lte": 2}}, "$.count", "gte <= lte"),
        ({"event": "E", "count": {"eq": 1, "gte": 1}}, "$.count", "eq alone"),
        ({"event": "E", "count": {"gte": -1}}, "$.count.gte", "greater than or equal"),
        ({"event": "E", "occurrence": "first", "count": {"gte": 1}}, "$", "count does not go"),
        (
            {"event": "E", "between": {"from": "2026-02-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}},
            "$.between",
            "from < to",
        ),
        (
            {"event": "E", "between": {"from": "2026-01-01T00:00:00", "to": "2026-02-01T00:00:00Z"}},
            "$.between.from",
            "timezone",
        ),
        ({"event": ""}, "$.event", "at least 1"),
        ({"segment": "Bad Key"}, "$.segment", "pattern"),
        ({"consent": {"channel": "email"}}, "$.consent.purpose", "Field required"),
        ({"trait": "a", "op": "eq", "value": 1, "extra": 2}, "$.extra", "Extra inputs"),
        ({"all": [{"any": [{"not": {"trait": "a", "op": "nope"}}]}]}, "$.all[0].any[0].not.op", "Input should be"),
    ],
)
def test_invalid_conditions_name_the_offending_part(document: Any, path: str, words: str) -> None:
    with pytest.raises(conditions.ConditionError) as caught:
        parse(document)
    assert caught.value.path == path, caught.value
    assert words in caught.value.message


def test_conditions_are_bounded_in_size() -> None:
    leaf = {"trait": "a", "op": "eq", "value": 1}
    with pytest.raises(conditions.ConditionError, match="at most 200 parts"):
        parse({"any": [{"all": [leaf] * 99}, {"all": [leaf] * 99}, {"all": [leaf] * 5}]})
    deep: dict[str, Any] = leaf
    for _ in range(150):
        deep = {"not": deep}
    parse(deep)  # deep but small is fine


def test_the_schema_describes_the_language() -> None:
    schema = conditions.json_schema()
    assert schema["$schema"].endswith("2020-12/schema")
    names = set(schema["$defs"])
    assert {"AllOf", "AnyOf", "NotCondition", "TraitCondition", "EventCondition", "SegmentCondition"} <= names
    assert "not" in schema["$defs"]["NotCondition"]["properties"]
    assert set(schema["$defs"]["TraitCondition"]["properties"]["op"]["enum"]) == set(conditions.TRAIT_OPS)


def test_the_schema_accepts_what_the_models_accept() -> None:
    import jsonschema_rs  # schemathesis's validator

    validator = jsonschema_rs.Draft202012Validator(conditions.json_schema())
    good = {
        "all": [
            {"trait": "plan", "op": "eq", "value": "gold"},
            {
                "event": "Order Completed",
                "where": [{"property": "total", "op": "gte", "value": 50}],
                "count": {"gte": 2},
                "within": "30d",
            },
            {"not": {"segment": "churn_risk"}},
            {"consent": {"purpose": "marketing.email", "channel": "email"}},
        ]
    }
    parse(good)
    assert not list(validator.iter_errors(good))
    assert list(validator.iter_errors({"trait": "plan", "op": "nope"}))


def test_stored_form_round_trips() -> None:
    document = {
        "all": [
            {"not": {"trait": "plan", "op": "in", "value": ["a"]}},
            {
                "event": "E",
                "between": {"from": "2026-01-01T00:00:00Z", "to": "2026-02-01T00:00:00Z"},
                "occurrence": "last",
            },
        ]
    }
    stored = conditions.dump(parse(document))
    assert conditions.dump(parse(stored)) == stored
    assert stored["all"][0] == {"not": {"trait": "plan", "op": "in", "value": ["a"]}}


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@given(op=st.sampled_from(conditions.TRAIT_OPS), value=JSONISH, actual=JSONISH)
def test_any_accepted_comparison_evaluates_without_error(op: str, value: Any, actual: Any) -> None:
    try:
        node = parse({"trait": "t", "op": op, "value": value})
    except conditions.ConditionError:
        return
    negated = parse({"not": {"trait": "t", "op": op, "value": value}})
    facts = Facts(traits={"t": actual})
    assert evaluate(node, facts, NOW) is not evaluate(negated, facts, NOW)


@given(document=JSONISH)
def test_hostile_documents_are_refused_cleanly(document: Any) -> None:
    path = "$"
    try:
        parse(document)
    except conditions.ConditionError as error:
        path = error.path
    assert path.startswith("$")


TEXTS = st.sampled_from(["gold", "Gold", "", "1", "true"])
# Values that JSON equality tells apart and Python's == does not, often; anything, sometimes.
TRICKY = st.sampled_from([None, True, False, 1, 1.0, 0, "1", "true", "gold", "", [], {}, ["gold"], [1]])
VALUES = TRICKY | TEXTS | st.lists(TEXTS, min_size=1, max_size=3) | JSONISH


@settings(max_examples=1_000)
@given(op=st.sampled_from(conditions.TRAIT_OPS), value=VALUES, actual=VALUES, present=st.booleans())
def test_compiled_trait_tests_answer_as_compare_does(op: str, value: Any, actual: Any, present: bool) -> None:
    """The compiled test of a top-level trait (with its shortcuts for texts and presence) and `compare`, the
    operators' definition, agree on every value: true is not "true", 1 is not "1", null is absent."""
    try:
        node = parse({"trait": "t", "op": op, "value": value})
    except conditions.ConditionError:
        return
    traits = {"t": actual} if present else {"u": actual}
    expected = conditions.compare(op, conditions.lookup(traits, "t"), node.value)  # type: ignore[union-attr]
    assert evaluate(node, Facts(traits=traits), NOW) is expected
