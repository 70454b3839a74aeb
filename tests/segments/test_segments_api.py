"""Segments over HTTP against a live Accord (SQLite and PostgreSQL): definitions, versions, errors that
point at the offending part, memberships, members, exports through the consent policy."""

from __future__ import annotations

import csv
import io
import time
from typing import Any

import httpx
import orjson
import pytest

from conftest import LiveAccord
from consent.world import setup_catalogue

GOLD = {"trait": "plan", "op": "eq", "value": "gold"}


def track(live: LiveAccord, events: list[dict[str, Any]]) -> None:
    with live.client(auth=(live.write_key, "")) as client:
        answer = client.post("/v1/batch", json={"batch": events})
    assert answer.status_code == 200, answer.text
    live.wait_processed()


def people(live: LiveAccord) -> None:
    events: list[dict[str, Any]] = []
    for i, plan in enumerate(["gold", "gold", "silver", '=HYPERLINK("x")']):
        events.append({"type": "identify", "userId": f"u{i}", "traits": {"plan": plan, "email": f"p{i}@example.com"}})
    events += [{"type": "track", "userId": "u0", "event": "Bought", "properties": {"total": t}} for t in (60, 70)]
    events.append({"type": "track", "userId": "u2", "event": "Bought", "properties": {"total": 10}})
    track(live, events)


def ready(api: httpx.Client, key: str, timeout: float = 30.0) -> dict[str, Any]:
    """The segment once the worker has backfilled it."""
    deadline = time.monotonic() + timeout
    while True:
        body = api.get(f"/api/v1/segments/{key}").json()
        if body["backfill"]["status"] == "ready":
            return dict(body)
        assert time.monotonic() < deadline, body
        time.sleep(0.05)


def create(api: httpx.Client, key: str, condition: Any, **extra: Any) -> httpx.Response:
    return api.post("/api/v1/segments", json={"key": key, "condition": condition, **extra})


def test_create_backfill_change_delete(live: LiveAccord) -> None:
    people(live)
    with live.api() as api:
        created = create(api, "gold", GOLD, name="Gold customers")
        assert created.status_code == 201, created.text
        assert created.json()["version"] == 1
        assert created.json()["backfill"]["status"] == "backfilling"
        body = ready(api, "gold")
        assert body["size"] == 2
        assert body["backfill"]["done"] == body["backfill"]["total"] == 4
        assert [s["key"] for s in api.get("/api/v1/segments").json()["data"]] == ["gold"]

        changed = api.put(
            "/api/v1/segments/gold", json={"condition": {"trait": "plan", "op": "in", "value": ["gold", "silver"]}}
        )
        assert changed.status_code == 200, changed.text
        assert changed.json()["version"] == 2
        assert ready(api, "gold")["size"] == 3
        renamed = api.put("/api/v1/segments/gold", json={"name": "Metal"}).json()
        assert (renamed["version"], renamed["name"], renamed["backfill"]["status"]) == (3, "Metal", "ready")

        versions = api.get("/api/v1/segments/gold/versions").json()["data"]
        assert [v["version"] for v in versions] == [3, 2, 1]
        assert versions[2]["condition"] == GOLD

        assert api.delete("/api/v1/segments/gold").status_code == 204
        assert api.get("/api/v1/segments/gold").json()["code"] == "segment_not_found"
        assert api.get("/api/v1/profiles/user_id:u0/segments").json()["data"] == []
        assert next(v["condition"] for v in api.get("/api/v1/segments/gold/versions").json()["data"]) is None
        again = create(api, "gold", GOLD)
        assert again.json()["version"] == 5  # versions are never reused


def test_memberships_members_and_history(live: LiveAccord) -> None:
    people(live)
    with live.api() as api:
        assert create(api, "gold", GOLD).status_code == 201
        buyers = {"event": "Bought", "where": [{"property": "total", "op": "gte", "value": 50}], "count": {"gte": 2}}
        assert create(api, "big-buyers", {"all": [buyers, {"segment": "gold"}]}).status_code == 201
        ready(api, "gold")
        ready(api, "big-buyers")
        mine = api.get("/api/v1/profiles/user_id:u0/segments").json()
        assert [m["key"] for m in mine["data"]] == ["big-buyers", "gold"]
        assert all(m["entered_at"] for m in mine["data"])
        assert api.get("/api/v1/profiles/user_id:u2/segments").json()["data"] == []
        history = api.get("/api/v1/profiles/user_id:u0/segments/history").json()["data"]
        assert sorted((h["segment"], h["kind"]) for h in history) == [("big-buyers", "entered"), ("gold", "entered")]

        first = api.get("/api/v1/segments/gold/members?limit=1").json()
        assert first["size"] == 2
        assert len(first["data"]) == 1
        assert first["next_cursor"]
        second = api.get(f"/api/v1/segments/gold/members?limit=1&after={first['next_cursor']}").json()
        assert second["next_cursor"] is None
        ids = {first["data"][0]["profile_id"], second["data"][0]["profile_id"]}
        assert ids == {api.get(f"/api/v1/profiles/user_id:u{i}").json()["id"] for i in (0, 1)}

        in_use = api.delete("/api/v1/segments/gold")
        assert (in_use.status_code, in_use.json()["code"]) == (409, "segment_in_use")


@pytest.mark.parametrize(
    ("condition", "path"),
    [
        ({"all": [GOLD, {"trait": "plan", "op": "nope"}]}, "$.all[1].op"),
        (
            {"all": [GOLD, {"event": "E", "where": [{"property": "p", "op": "regex", "value": "("}]}]},
            "$.all[1].where[0].value",
        ),
        ({"all": [GOLD, {"trait": "plan", "op": "regex", "value": "(a|aa)+$"}]}, "$.all[1].value"),
        ({"any": [GOLD, {"segment": "nowhere"}]}, "$.any[1].segment"),
        ({"not": {"segment": "loop"}}, "$.not.segment"),
        ({"consent": {"purpose": "no.such.purpose", "channel": "email"}}, "$.consent.purpose"),
        ({"gold": 1}, "$"),
    ],
)
def test_invalid_conditions_are_refused_with_a_path(live: LiveAccord, condition: Any, path: str) -> None:
    with live.api() as api:
        answer = create(api, "loop", condition)
        assert answer.status_code == 422, answer.text
        assert answer.json()["code"] == "invalid_condition"
        assert answer.json()["message"].startswith(f"{path}: ")
        assert api.get("/api/v1/segments/loop").status_code == 404


def test_cycles_are_refused(live: LiveAccord) -> None:
    with live.api() as api:
        assert create(api, "a", GOLD).status_code == 201
        assert create(api, "b", {"segment": "a"}).status_code == 201
        answer = api.put("/api/v1/segments/a", json={"condition": {"all": [GOLD, {"segment": "b"}]}})
        assert answer.status_code == 422
        assert answer.json()["message"].startswith("$.all[1].segment: ")
        assert "cycle" in answer.json()["message"]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"key": "Bad Key", "condition": GOLD}, 422, "invalid_request"),
        ({"key": "k" * 101, "condition": GOLD}, 422, "invalid_request"),
        ({"key": "ok", "condition": GOLD, "owner": "me"}, 422, "invalid_request"),
        ({"key": "ok"}, 422, "invalid_request"),
        ({"key": "ok", "condition": [GOLD]}, 422, "invalid_request"),
        ({"key": "ok", "condition": GOLD, "name": "n" * 201}, 422, "invalid_request"),
        ({"key": "ok\x00", "condition": GOLD}, 422, "invalid_request"),
    ],
)
def test_malformed_bodies(live: LiveAccord, body: dict[str, Any], status: int, code: str) -> None:
    with live.api() as api:
        answer = api.post("/api/v1/segments", json=body)
        assert (answer.status_code, answer.json()["code"]) == (status, code), answer.text


def test_duplicates_oversized_and_unknown(live: LiveAccord) -> None:
    with live.api() as api:
        assert create(api, "dup", GOLD).status_code == 201
        again = create(api, "dup", GOLD)
        assert (again.status_code, again.json()["code"]) == (409, "segment_exists")
        huge = {"any": [GOLD] * 10_000}
        assert create(api, "huge", huge).status_code == 422
        enormous = api.post("/api/v1/segments", content=b'{"key":"x","condition":' + b" " * 2_000_000 + b"1}")
        assert enormous.status_code == 413
        for path in ("/api/v1/segments/nope", "/api/v1/segments/nope/members", "/api/v1/segments/nope/versions"):
            assert api.get(path).json()["code"] == "segment_not_found", path
        assert api.get("/api/v1/segments/" + "x" * 101).status_code == 422
        assert api.put("/api/v1/segments/nope", json={"name": "x"}).status_code == 404
        assert api.delete("/api/v1/segments/nope").status_code == 404
        assert api.get("/api/v1/segments/%C3%A9%00").status_code == 404
        assert api.get("/api/v1/segments/dup/members?after=a%00").json()["code"] == "invalid_cursor"
        assert api.get("/api/v1/segments/dup/export?purpose=a%00").json()["code"] == "unknown_purpose"
        assert api.get("/api/v1/segments/dup/export?purpose=service.billing&channel=a%00").status_code == 404
        assert api.get("/api/v1/segments/dup/members?limit=0").status_code == 422
        assert api.get("/api/v1/segments/dup/members?after=" + "z" * 41).status_code == 422
        assert api.get("/api/v1/profiles/user_id:nobody/segments").status_code == 404


def test_the_schema_is_published(live: LiveAccord) -> None:
    with live.api() as api:
        schema = api.get("/api/v1/segments/schema").json()
    assert schema["title"] == "Accord segment condition"
    assert "EventCondition" in schema["$defs"]


def test_exports_pass_the_consent_policy(live: LiveAccord) -> None:
    people(live)
    with live.api() as api:
        setup_catalogue(api)
        for user in ("u0", "u3"):
            given = api.post(
                f"/api/v1/profiles/user_id:{user}/consents",
                json={
                    "purpose": "marketing.email",
                    "channel": "email",
                    "status": "given",
                    "method": "form",
                    "notice": {"key": "privacy", "version": 1, "language": "en"},
                },
            )
            assert given.status_code == 201, given.text
        assert create(api, "everyone", {"trait": "plan", "op": "exists"}).status_code == 201
        ready(api, "everyone")
        ids = {api.get(f"/api/v1/profiles/user_id:{u}").json()["id"]: u for u in ("u0", "u1", "u2", "u3")}

        lines = api.get(
            "/api/v1/segments/everyone/export?purpose=marketing.email&channel=email&traits=plan&traits=email"
        )
        assert lines.status_code == 200, lines.text
        assert lines.headers["content-type"].startswith("application/x-ndjson")
        rows = [orjson.loads(line) for line in lines.content.splitlines()]
        assert sorted(ids[r["profile_id"]] for r in rows) == ["u0", "u3"]
        assert {r["traits"]["email"] for r in rows} == {"p0@example.com", "p3@example.com"}

        table = api.get("/api/v1/segments/everyone/export?purpose=marketing.email&channel=email&format=csv&traits=plan")
        assert table.headers["content-type"].startswith("text/csv")
        parsed = list(csv.reader(io.StringIO(table.text)))
        assert parsed[0] == ["profile_id", "entered_at", "plan"]
        assert sorted(r[2] for r in parsed[1:]) == ['\'=HYPERLINK("x")', "gold"]  # formulas neutralised

        nobody = api.get("/api/v1/segments/everyone/export?purpose=marketing.email&channel=sms")
        assert nobody.status_code == 200
        assert nobody.content == b""
        contract = api.get("/api/v1/segments/everyone/export?purpose=service.billing")
        assert len(contract.content.splitlines()) == 4  # a contract is a legal basis for everyone
        for query, code in (
            ("purpose=nope", "unknown_purpose"),
            ("purpose=marketing&channel=pigeon", "unknown_channel"),
            ("purpose=marketing&format=xml", "invalid_request"),
            ("channel=email", "invalid_request"),
        ):
            assert api.get(f"/api/v1/segments/everyone/export?{query}").json()["code"] == code, query


def test_memberships_follow_events_and_consent_as_they_happen(live: LiveAccord) -> None:
    with live.api() as api:
        setup_catalogue(api)
        assert create(api, "gold", GOLD).status_code == 201
        assert (
            create(api, "reachable", {"consent": {"purpose": "marketing.email", "channel": "email"}}).status_code == 201
        )
        ready(api, "gold")
        ready(api, "reachable")
        track(live, [{"type": "identify", "userId": "new", "traits": {"plan": "gold"}}])
        assert [m["key"] for m in api.get("/api/v1/profiles/user_id:new/segments").json()["data"]] == ["gold"]
        given = api.post(
            "/api/v1/profiles/user_id:new/consents",
            json={
                "purpose": "marketing.email",
                "channel": "email",
                "status": "given",
                "method": "form",
                "notice": {"key": "privacy", "version": 1, "language": "en"},
            },
        )
        assert given.status_code == 201, given.text
        assert [m["key"] for m in api.get("/api/v1/profiles/user_id:new/segments").json()["data"]] == [
            "gold",
            "reachable",
        ]
        track(live, [{"type": "identify", "userId": "new", "traits": {"plan": "free"}}])
        assert [m["key"] for m in api.get("/api/v1/profiles/user_id:new/segments").json()["data"]] == ["reachable"]
        history = api.get("/api/v1/profiles/user_id:new/segments/history").json()["data"]
        assert [(h["segment"], h["kind"]) for h in history] == [
            ("gold", "exited"),
            ("reachable", "entered"),
            ("gold", "entered"),
        ]


def test_erasure_removes_memberships_and_transitions(live: LiveAccord) -> None:
    people(live)
    with live.api() as api:
        assert create(api, "gold", GOLD).status_code == 201
        ready(api, "gold")
        erased_id = api.get("/api/v1/profiles/user_id:u0").json()["id"]
        assert api.delete("/api/v1/profiles/user_id:u0").status_code < 300
        ids = {m["profile_id"] for m in api.get("/api/v1/segments/gold/members").json()["data"]}
        assert erased_id not in ids
        assert len(ids) == 1
    from sqlalchemy import select

    from accord.segments.models import SegmentTransition

    with live.rt.db.read() as session:
        assert not session.scalars(select(SegmentTransition).where(SegmentTransition.profile_id == erased_id)).all()


def test_sizes_over_time(live: LiveAccord) -> None:
    people(live)
    with live.api() as api:
        assert create(api, "gold", GOLD).status_code == 201
        ready(api, "gold")
        track(live, [{"type": "identify", "userId": "u1", "traits": {"plan": "free"}}])
        sizes = api.get("/api/v1/segments/gold/sizes?days=3").json()["data"]
        assert [s["size"] for s in sizes] == [0, 0, 1]  # created today: 2 entered, 1 exited
        assert sizes[-1]["date"] == api.get("/api/v1/segments/gold").json()["updated_at"][:10]
        assert len(api.get("/api/v1/segments/gold/sizes").json()["data"]) == 30
        assert api.get("/api/v1/segments/gold/sizes?days=0").status_code == 422
        assert api.get("/api/v1/segments/gold/sizes?days=367").status_code == 422
        assert api.get("/api/v1/segments/nope/sizes").json()["code"] == "segment_not_found"
