"""Computed traits: every function, filters and window boundaries (pure), and over HTTP on SQLite and
PostgreSQL: definitions, values on the profile, segments that read them, errors with paths."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from accord.segments import computed, conditions
from accord.segments.computed import compute
from conftest import LiveAccord
from segments.test_segments_api import create, ready, track

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def at(days: float) -> datetime:
    return NOW - timedelta(days=days)


EVENTS = [
    (at(40), {"total": 500, "sku": "a"}),
    (at(30), {"total": 10, "sku": "b"}),  # exactly at the 30-day boundary: inside
    (at(2), {"total": 25.5, "sku": "b"}),
    (at(1), {"total": "n/a", "sku": "c"}),
    (at(1), {"sku": "b"}),
]


@pytest.mark.parametrize(
    ("definition", "expected"),
    [
        ({"function": "count"}, 5),
        ({"function": "count", "within": "30d"}, 4),
        ({"function": "count", "within": "29d"}, 3),
        ({"function": "sum", "property": "total"}, 535.5),
        ({"function": "sum", "property": "total", "within": "30d"}, 35.5),
        ({"function": "avg", "property": "total", "within": "30d"}, 17.75),
        ({"function": "min", "property": "total"}, 10),
        ({"function": "max", "property": "total"}, 500),
        ({"function": "max", "property": "sku"}, "c"),  # no numbers: strings order
        ({"function": "first", "property": "sku"}, "a"),
        ({"function": "last", "property": "total"}, "n/a"),
        ({"function": "distinct_count", "property": "sku"}, 3),
        ({"function": "most_frequent", "property": "sku"}, "b"),
        ({"function": "sum", "property": "total", "where": [{"property": "sku", "op": "eq", "value": "b"}]}, 35.5),
        ({"function": "count", "where": [{"property": "total", "op": "exists", "value": False}]}, 1),
        ({"function": "sum", "property": "missing"}, None),
        ({"function": "distinct_count", "property": "missing"}, 0),
        ({"function": "avg", "property": "sku"}, None),
    ],
)
def test_functions(definition: dict[str, Any], expected: Any) -> None:
    parsed = computed.parse({"event": "Bought", **definition})
    assert compute(parsed, EVENTS, NOW) == expected


def test_ties_and_order_do_not_depend_on_arrival() -> None:
    parsed = computed.parse({"event": "E", "function": "most_frequent", "property": "p"})
    events = [(at(3), {"p": "x"}), (at(2), {"p": "y"}), (at(1), {"p": "y"}), (at(0), {"p": "x"})]
    assert compute(parsed, events, NOW) == compute(parsed, list(reversed(events)), NOW) == "x"
    same_time = [(at(1), {"p": 2}), (at(1), {"p": 1})]
    first = computed.parse({"event": "E", "function": "first", "property": "p"})
    assert compute(first, same_time, NOW) == compute(first, list(reversed(same_time)), NOW)


@pytest.mark.parametrize(
    ("document", "path", "words"),
    [
        ({"event": "E", "function": "sum"}, "$", "needs a property"),
        ({"event": "E", "function": "count", "property": "p"}, "$", "give no property"),
        ({"event": "E", "function": "median", "property": "p"}, "$.function", "Input should be"),
        ({"event": "", "function": "count"}, "$.event", "at least 1"),
        ({"event": "E", "function": "count", "within": "7"}, "$.within", "pattern"),
        ({"event": "E", "function": "count", "where": [{"property": "p", "op": "in"}]}, "$.where[0].value", "list"),
        ({"event": "E", "function": "count", "extra": 1}, "$.extra", "Extra inputs"),
        ([], "$", "valid dictionary"),
    ],
)
def test_bad_definitions_name_the_part(document: Any, path: str, words: str) -> None:
    with pytest.raises(conditions.ConditionError) as caught:
        computed.parse(document)
    assert caught.value.path == path
    assert words in caught.value.message


def test_a_condition_reads_a_computed_trait() -> None:
    node = conditions.parse({"computed": "spend", "op": "gte", "value": 100})
    assert conditions.evaluate(node, conditions.Facts(traits={}, computed=lambda k: 150), NOW)
    assert not conditions.evaluate(node, conditions.Facts(traits={}, computed=lambda k: None), NOW)
    negated = conditions.parse({"computed": "spend", "op": "exists", "value": False})
    assert conditions.evaluate(negated, conditions.Facts(traits={}), NOW)


SPEND = {"event": "Bought", "function": "sum", "property": "total", "within": "30d"}


def define(api: httpx.Client, key: str, definition: Any) -> httpx.Response:
    return api.post("/api/v1/computed-traits", json={"key": key, "definition": definition})


def test_computed_traits_over_http(live: LiveAccord) -> None:
    now = datetime.now(UTC)
    buys = [
        {
            "type": "track",
            "userId": "ann",
            "event": "Bought",
            "properties": {"total": t},
            "timestamp": (now - timedelta(days=d)).isoformat(),
        }
        for t, d in ((60, 1), (70, 2), (900, 45))
    ]
    track(live, buys)
    with live.api() as api:
        made = define(api, "spend", SPEND)
        assert made.status_code == 201, made.text
        assert made.json()["version"] == 1
        assert define(api, "orders", {"event": "Bought", "function": "count"}).status_code == 201
        shown = api.get("/api/v1/profiles/user_id:ann/computed-traits").json()
        assert shown["traits"] == {"orders": 3, "spend": 130}
        assert [c["key"] for c in api.get("/api/v1/computed-traits").json()["data"]] == ["orders", "spend"]

        assert create(api, "spenders", {"computed": "spend", "op": "gte", "value": 100}).status_code == 201
        ready(api, "spenders")
        assert api.get("/api/v1/segments/spenders").json()["size"] == 1
        # A change re-backfills the segments that read it.
        changed = api.put("/api/v1/computed-traits/spend", json={"definition": {**SPEND, "within": "1d"}})
        assert changed.status_code == 200, changed.text
        assert changed.json()["version"] == 2
        assert api.get("/api/v1/segments/spenders").json()["backfill"]["status"] == "backfilling"
        assert ready(api, "spenders")["size"] == 0
        # Streaming: a new event moves the person back in.
        track(live, [{"type": "track", "userId": "ann", "event": "Bought", "properties": {"total": 150}}])
        assert [m["key"] for m in api.get("/api/v1/profiles/user_id:ann/segments").json()["data"]] == ["spenders"]

        in_use = api.delete("/api/v1/computed-traits/spend")
        assert (in_use.status_code, in_use.json()["code"]) == (409, "computed_trait_in_use")
        assert api.delete("/api/v1/segments/spenders").status_code == 204
        assert api.delete("/api/v1/computed-traits/spend").status_code == 204
        assert api.get("/api/v1/computed-traits/spend").json()["code"] == "computed_trait_not_found"


def test_computed_trait_errors(live: LiveAccord) -> None:
    with live.api() as api:
        assert define(api, "spend", SPEND).status_code == 201
        again = define(api, "spend", SPEND)
        assert (again.status_code, again.json()["code"]) == (409, "computed_trait_exists")
        bad = define(api, "bad", {"event": "E", "function": "sum"})
        assert (bad.status_code, bad.json()["code"]) == (422, "invalid_computed_trait")
        assert bad.json()["message"].startswith("$: ")
        unknown = create(api, "x", {"any": [{"computed": "nope", "op": "eq", "value": 1}]})
        assert unknown.status_code == 422
        assert unknown.json()["message"].startswith("$.any[0].computed: no computed trait")
        assert api.post("/api/v1/computed-traits", json={"key": "Bad Key", "definition": SPEND}).status_code == 422
        assert api.put("/api/v1/computed-traits/nope", json={"definition": SPEND}).status_code == 404
        assert api.delete("/api/v1/computed-traits/nope").status_code == 404
        assert api.get("/api/v1/computed-traits/nope%00").status_code == 404
        assert api.get("/api/v1/profiles/user_id:nobody/computed-traits").status_code == 404
