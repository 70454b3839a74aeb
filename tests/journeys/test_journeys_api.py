"""Journeys over HTTP against a live Accord (SQLite and PostgreSQL): definitions, versions, errors that
point at the offending part, positions, history, funnels, live streams; malformed, hostile, oversized and
duplicate input to every route."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import select

from accord.journeys.models import JourneyPosition
from conftest import LiveAccord

SHOP: dict[str, Any] = {
    "stages": [
        {"key": "viewed", "name": "Viewed", "condition": {"event": "Viewed"}},
        {"key": "carted", "condition": {"event": "Carted"}, "time_limit": "2d"},
        {"key": "checkout", "condition": {"event": "Checkout"}},
    ],
    "goal": {"event": "Bought"},
    "exit": {"trait": "optout", "op": "eq", "value": True},
    "time_limit": "30d",
}


def track(live: LiveAccord, events: list[dict[str, Any]]) -> None:
    with live.client(auth=(live.write_key, "")) as client:
        answer = client.post("/v1/batch", json={"batch": events})
    assert answer.status_code == 200, answer.text
    live.wait_processed()


def ready(api: httpx.Client, key: str, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body = api.get(f"/api/v1/journeys/{key}").json()
        if body["backfill"]["status"] == "ready":
            return dict(body)
        assert time.monotonic() < deadline, body
        time.sleep(0.05)


def create(api: httpx.Client, key: str, definition: dict[str, Any], **extra: Any) -> httpx.Response:
    return api.post("/api/v1/journeys", json={"key": key, **definition, **extra})


def ev(user: str, name: str) -> dict[str, Any]:
    return {"type": "track", "userId": user, "event": name}


def test_create_backfill_change_delete(live: LiveAccord) -> None:
    track(live, [ev("u1", "Viewed"), ev("u2", "Carted"), ev("u3", "Other")])
    with live.api() as api:
        created = create(api, "shop", SHOP, name="Shop")
        assert created.status_code == 201, created.text
        assert (created.json()["version"], created.json()["backfill"]["status"]) == (1, "backfilling")
        body = ready(api, "shop")
        assert body["positions"] == {"active": 2, "completed": 0, "exited": 0}
        assert body["definition"]["stages"][1]["time_limit"] == "2d"
        assert [j["key"] for j in api.get("/api/v1/journeys").json()["data"]] == ["shop"]

        renamed = api.put("/api/v1/journeys/shop", json={"name": "Webshop"}).json()
        assert (renamed["version"], renamed["name"], renamed["backfill"]["status"]) == (2, "Webshop", "ready")
        assert renamed["definition"] == body["definition"]
        changed = api.put("/api/v1/journeys/shop", json={"stages": SHOP["stages"][:2]})
        assert changed.status_code == 200, changed.text
        assert "goal" not in changed.json()["definition"]  # replaced whole
        assert changed.json()["backfill"]["status"] == "backfilling"
        assert ready(api, "shop")["positions"] == {"active": 1, "completed": 1, "exited": 0}  # u2: last stage

        versions = api.get("/api/v1/journeys/shop/versions").json()["data"]
        assert [v["version"] for v in versions] == [3, 2, 1]
        assert api.delete("/api/v1/journeys/shop").status_code == 204
        assert api.get("/api/v1/journeys/shop").json()["code"] == "journey_not_found"
        assert api.get("/api/v1/profiles/user_id:u1/journeys").json()["data"] == []
        assert next(v["definition"] for v in api.get("/api/v1/journeys/shop/versions").json()["data"]) is None
        # The key can be used again; versions go on.
        assert create(api, "shop", SHOP).json()["version"] == 5


def test_positions_history_and_streams(live: LiveAccord) -> None:
    with live.api() as api:
        assert create(api, "shop", SHOP).status_code == 201
        ready(api, "shop")
        track(live, [ev("ann", "Viewed")])
        track(live, [ev("ann", "Checkout")])
        found = api.get("/api/v1/profiles/user_id:ann/journeys").json()
        [position] = found["data"]
        assert (position["key"], position["stage"], position["stage_index"], position["state"]) == (
            "shop",
            "checkout",
            2,
            "active",
        )
        assert position["stage_entered_at"] >= position["entered_at"]
        history = api.get("/api/v1/profiles/user_id:ann/journeys/history").json()["data"]
        assert [(h["kind"], h["stage"], h["from_stage"]) for h in history] == [
            ("advanced", "checkout", "viewed"),
            ("entered", "viewed", None),
        ]
        older = api.get(f"/api/v1/profiles/user_id:ann/journeys/history?limit=1&before={history[0]['id']}").json()
        assert [h["kind"] for h in older["data"]] == ["entered"]
        track(live, [ev("ann", "Bought")])
        assert api.get("/api/v1/profiles/user_id:ann/journeys").json()["data"][0]["reason"] == "goal"

        messages = sse(api, "/api/v1/stream?journey=shop", 3)
        assert [(kind, data["kind"]) for _, kind, data in messages] == [
            ("journey", "entered"),
            ("journey", "advanced"),
            ("journey", "completed"),
        ]
        last = messages[1][0]
        assert last is not None
        again = sse(api, f"/api/v1/stream?journey=shop&after={last}", 1)
        assert again[0][2]["kind"] == "completed"
        mine = sse(api, "/api/v1/profiles/user_id:ann/stream", 6)
        assert {kind for _, kind, _ in mine} == {"journey", "event"}
        resumed = sse(api, "/api/v1/profiles/user_id:ann/stream", 1, headers={"Last-Event-ID": "0.999999.1"})
        assert [(k, d["kind"]) for _, k, d in resumed] == [("journey", "advanced")]
        assert api.get("/api/v1/stream?journey=nope").json()["code"] == "journey_not_found"
        assert api.get("/api/v1/stream?after=1.2.3").json()["code"] == "invalid_cursor"
        assert api.get("/api/v1/profiles/user_id:ann/stream?after=1.2.3.4").json()["code"] == "invalid_cursor"


def sse(
    api: httpx.Client, url: str, count: int, headers: dict[str, str] | None = None
) -> list[tuple[str | None, str, dict[str, Any]]]:
    found: list[tuple[str | None, str, dict[str, Any]]] = []
    with api.stream("GET", url, headers=headers, timeout=30) as response:
        assert response.status_code == 200
        event_id, kind, data = None, "message", b""
        for line in response.iter_lines():
            if line.startswith("id: "):
                event_id = line[4:]
            elif line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                data = line[6:].encode()
            elif line == "" and data:
                found.append((event_id, kind, orjson.loads(data)))
                event_id, kind, data = None, "message", b""
                if len(found) >= count:
                    break
    return found


def test_funnel_arithmetic_with_known_data(live: LiveAccord) -> None:
    """Positions written with known times: the funnel's counts, conversions and medians follow."""
    with live.api() as api:
        assert create(api, "shop", SHOP).status_code == 201
        ready(api, "shop")
    start = datetime(2026, 3, 1, tzinfo=UTC)

    def at(minutes: float) -> str:
        return (start + timedelta(minutes=minutes)).isoformat()

    # (profile, stage, state, {stage: minutes after start}, entered minute)
    rows = [
        ("p1", "viewed", "active", {"viewed": 0}, 0),
        ("p2", "carted", "active", {"viewed": 0, "carted": 10}, 0),
        ("p3", "checkout", "completed", {"viewed": 0, "carted": 20, "checkout": 50}, 0),
        ("p4", "checkout", "exited", {"viewed": 0, "checkout": 5}, 0),  # skipped carted
        ("p5", "carted", "active", {"carted": 0}, 0),  # entered at carted
        ("p6", "viewed", "active", {"viewed": 0}, 60 * 24 * 40),  # outside the window
    ]
    with live.rt.db.unit_of_work() as session:
        for pid, stage, state, path, entered in rows:
            session.add(
                JourneyPosition(
                    journey_key="shop",
                    profile_id=pid,
                    stage=stage,
                    stage_entered_at=datetime.fromisoformat(at(max(path.values()) + entered)),
                    entered_at=datetime.fromisoformat(at(entered)),
                    state=state,
                    ended_at=None,
                    reason=None,
                    path={k: at(v + entered) for k, v in path.items()},
                )
            )
    window = {"from": start.isoformat(), "to": (start + timedelta(days=30)).isoformat()}
    with live.api() as api:
        funnel = api.get("/api/v1/journeys/shop/funnel", params=window).json()
    assert (funnel["entered"], funnel["active"], funnel["completed"], funnel["exited"]) == (5, 3, 1, 1)
    assert funnel["from"] == "2026-03-01T00:00:00Z"
    viewed, carted, checkout = funnel["stages"]
    assert (viewed["reached"], carted["reached"], checkout["reached"]) == (5, 4, 2)
    assert (viewed["entered"], carted["entered"], checkout["entered"]) == (4, 3, 2)
    assert viewed["conversion"] == 0.8
    assert carted["conversion"] == 0.5
    assert checkout["conversion"] is None
    assert (viewed["median_seconds_to_next"], viewed["timed"]) == (15 * 60, 2)  # p2 10 min, p3 20 min
    assert (carted["median_seconds_to_next"], carted["timed"]) == (30 * 60, 1)  # p3 only (p4 skipped)
    assert checkout["median_seconds_to_next"] is None
    with live.rt.db.read() as session:
        assert len(session.scalars(select(JourneyPosition)).all()) == 6


BAD_DEFINITIONS = [
    ({"stages": []}, "$.stages"),
    ({"stages": [{"key": "a", "condition": {"trait": "x", "op": "nope"}}]}, "$.stages[0].condition.op"),
    (
        {"stages": [{"key": "a", "condition": {"all": [{"event": "E", "within": "x"}]}}]},
        "$.stages[0].condition.all[0].within",
    ),
    ({"stages": [{"key": "a", "condition": {"event": "E"}}] * 2}, "$.stages[1].key"),
    ({"stages": [{"key": "A!", "condition": {"event": "E"}}]}, "$.stages[0].key"),
    ({"stages": [{"key": "a", "condition": {"segment": "nowhere"}}]}, "$.stages[0].condition.segment"),
    (
        {"stages": [{"key": "a", "condition": {"event": "E"}}], "goal": {"computed": "nope", "op": "exists"}},
        "$.goal.computed",
    ),
    (
        {"stages": [{"key": "a", "condition": {"event": "E"}}], "exit": {"consent": {"purpose": "x"}}},
        "$.exit.consent.purpose",
    ),
    ({"stages": [{"key": "a", "condition": {"event": "E"}, "time_limit": "0d"}]}, "$.stages[0]"),
    ({"stages": [{"key": "a", "condition": {"event": "E"}}], "time_limit": "99999999d"}, "$"),
    ({"stages": [{"key": "a", "condition": {"event": "E"}}], "time_limit": "3w"}, "$.time_limit"),
    ({"stages": [{"key": "a", "condition": {"event": "E"}, "extra": 1}]}, "$.stages[0].extra"),
    ({"stages": [{"key": f"s{i}", "condition": {"event": "E"}} for i in range(21)]}, "$.stages"),
    ({"stages": [{"key": "a", "condition": {"any": [{"event": "E"}] * 100, "all": []}}]}, "$.stages[0].condition"),
]


@pytest.mark.parametrize(("definition", "path"), BAD_DEFINITIONS)
def test_invalid_definitions_are_refused_with_a_path(live: LiveAccord, definition: dict[str, Any], path: str) -> None:
    with live.api() as api:
        answer = create(api, "bad", definition)
        assert answer.status_code == 422, answer.text
        assert answer.json()["code"] == "invalid_journey"
        assert answer.json()["message"].split(": ")[0] == path, answer.json()["message"]
        assert api.get("/api/v1/journeys/bad").status_code == 404


def test_a_condition_with_too_many_parts_is_refused(live: LiveAccord) -> None:
    big = {"all": [{"all": [{"event": "E"}] * 100}, {"all": [{"event": "E"}] * 100}]}
    with live.api() as api:
        answer = create(api, "big", {"stages": [{"key": "a", "condition": {"event": "E"}}], "exit": big})
        assert answer.status_code == 422
        assert answer.json()["message"].startswith("$.exit: a condition has at most 200 parts")


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"key": "Bad Key", "stages": SHOP["stages"]}, 422, "invalid_request"),
        ({"key": "ok\x00", "stages": SHOP["stages"]}, 422, "invalid_request"),
        ({"key": "ok"}, 422, "invalid_request"),
        ({"key": "ok", "stages": "x"}, 422, "invalid_request"),
        ({"key": "ok", "stages": SHOP["stages"], "unknown": 1}, 422, "invalid_request"),
        ({"key": "ok", "stages": [None]}, 422, "invalid_journey"),
        ({"key": "ok", "stages": [{"key": "a\x00", "condition": {"event": "E"}}]}, 422, "invalid_journey"),
        ({"key": "ok", "stages": [{"key": "a", "condition": {"event": "E\x00" * 300}}]}, 422, "invalid_journey"),
        ({"key": "ok", "stages": SHOP["stages"], "time_limit": "<script>"}, 422, "invalid_journey"),
    ],
)
def test_malformed_bodies(live: LiveAccord, body: dict[str, Any], status: int, code: str) -> None:
    with live.api() as api:
        answer = api.post("/api/v1/journeys", json=body)
        assert (answer.status_code, answer.json()["code"]) == (status, code), answer.text


def test_duplicates_oversized_hostile_and_unknown(live: LiveAccord) -> None:
    with live.api() as api:
        assert create(api, "shop", SHOP).status_code == 201
        again = create(api, "shop", SHOP)
        assert (again.status_code, again.json()["code"]) == (409, "journey_exists")
        assert (
            api.post("/api/v1/journeys", content=b"{not json", headers={"content-type": "application/json"}).status_code
            == 422
        )
        huge = {"key": "huge", "stages": [{"key": "a", "condition": {"event": "x" * 2_000_000}}]}
        assert api.post("/api/v1/journeys", json=huge).status_code in (413, 422)
        for path in ("nope", "x" * 101, "%00", "..%2F..", "'; DROP TABLE journeys; --"):
            for url in (
                f"/api/v1/journeys/{path}",
                f"/api/v1/journeys/{path}/versions",
                f"/api/v1/journeys/{path}/funnel",
            ):
                answer = api.get(url)
                assert answer.status_code in (404, 422), (url, answer.text)
                assert set(answer.json()) == {"code", "message"}
            assert api.delete(f"/api/v1/journeys/{path}").status_code in (404, 422)
            assert api.put(f"/api/v1/journeys/{path}", json={"name": "x"}).status_code in (404, 422)
        lonely_goal = api.put("/api/v1/journeys/shop", json={"goal": {"event": "E"}})
        assert (lonely_goal.status_code, lonely_goal.json()["code"]) == (422, "invalid_journey")
        bad_change = api.put("/api/v1/journeys/shop", json={"stages": [{"key": "a", "condition": {"op": 1}}]})
        assert bad_change.json()["message"].startswith("$.stages[0].condition")
        assert api.get("/api/v1/journeys/shop").json()["version"] == 1  # nothing saved
        for params, code in (
            ({"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "invalid_window"),
            ({"from": "2026-01-01T00:00:00"}, "invalid_request"),  # no zone
            ({"from": "yesterday"}, "invalid_request"),
            ({"to": "9" * 100}, "invalid_request"),
        ):
            answer = api.get("/api/v1/journeys/shop/funnel", params=params)
            assert (answer.status_code, answer.json()["code"]) == (422, code), (params, answer.text)
        assert api.get("/api/v1/profiles/user_id:nobody/journeys").json()["code"] == "profile_not_found"
        assert api.get("/api/v1/profiles/user_id:x/journeys/history?limit=0").status_code == 422
        assert api.get("/api/v1/profiles/user_id:x/journeys/history?before=-1").status_code == 422


def test_the_schema_is_published(live: LiveAccord) -> None:
    with live.api() as api:
        schema = api.get("/api/v1/journeys/schema").json()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["title"] == "Accord journey definition"
    assert {"stages", "goal", "exit", "time_limit"} <= set(schema["properties"])


def test_changes_are_audited(live: LiveAccord) -> None:
    with live.api() as api:
        create(api, "shop", SHOP)
        api.put("/api/v1/journeys/shop", json={"name": "x"})
        api.delete("/api/v1/journeys/shop")
        found = api.get("/api/v1/audit", params={"action": "journey.", "limit": 50}).json()["records"]
        actions = [r["action"] for r in found]
    assert {"journey.create", "journey.update", "journey.delete"} <= set(actions)
