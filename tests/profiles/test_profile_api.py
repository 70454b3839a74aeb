"""The profile API over HTTP: references, sub-resources, the timeline's pages and filters, auth."""

from __future__ import annotations

from datetime import timedelta

import pytest

from accord.security.service import create_token, revoke_token
from conftest import LiveAccord


def track(live: LiveAccord, events: list[dict[str, object]]) -> None:
    with live.client(auth=(live.write_key, "")) as client:
        answer = client.post("/v1/batch", json={"batch": events})
    assert answer.status_code == 200, answer.text
    live.wait_processed()


@pytest.fixture
def ann(live: LiveAccord) -> LiveAccord:
    events: list[dict[str, object]] = [
        {
            "type": "identify",
            "userId": "42",
            "anonymousId": "laptop",
            "messageId": "id-1",
            "traits": {"email": "ann@example.com", "phone": "+44 20 7946 0958", "plan": "gold"},
            "timestamp": "2026-05-01T09:00:00Z",
        },
    ]
    events += [
        {
            "type": "track",
            "userId": "42",
            "event": "Viewed" if i % 2 else "Bought",
            "messageId": f"t-{i:02d}",
            "properties": {"i": i},
            "timestamp": f"2026-05-02T10:{i:02d}:00Z",
        }
        for i in range(25)
    ]
    events.append(
        {
            "type": "page",
            "anonymousId": "laptop",
            "name": "Home",
            "messageId": "p-1",
            "timestamp": "2026-05-03T08:00:00Z",
        }
    )
    track(live, events)
    return live


@pytest.mark.parametrize("ref", ["user_id:42", "email:ANN@example.com", "anonymous_id:laptop", "phone:+442079460958"])
def test_profile_by_any_identifier(ann: LiveAccord, ref: str) -> None:
    with ann.api() as api:
        profile = api.get(f"/api/v1/profiles/{ref}").json()
        by_id = api.get(f"/api/v1/profiles/{profile['id']}").json()
    assert profile == by_id
    assert profile["traits"]["plan"] == "gold"
    assert {(i["type"], i["value"]) for i in profile["identities"]} == {
        ("user_id", "42"),
        ("anonymous_id", "laptop"),
        ("email", "ann@example.com"),
        ("phone", "+442079460958"),
    }
    assert profile["counts"]["events"] == {"Viewed": 12, "Bought": 13}
    assert profile["first_seen"] == "2026-05-01T09:00:00Z"
    assert profile["last_seen"] == "2026-05-03T08:00:00Z"


def test_traits_and_identities_sub_resources(ann: LiveAccord) -> None:
    with ann.api() as api:
        traits = api.get("/api/v1/profiles/user_id:42/traits").json()
        identities = api.get("/api/v1/profiles/user_id:42/identities").json()
    assert traits["traits"] == {"email": "ann@example.com", "phone": "+44 20 7946 0958", "plan": "gold"}
    assert len(identities["identities"]) == 4
    assert identities["profile_id"] == traits["profile_id"]
    assert traits["sources"]["plan"] == {
        "timestamp": "2026-05-01T09:00:00.000Z",
        "message_id": "id-1",
        "source_id": ann.source_id,
        "run_id": None,
    }
    assert set(traits["sources"]) == set(traits["traits"])


def test_a_client_cannot_claim_an_import_run(live: LiveAccord) -> None:
    """`_accord` is the importer's reserved field: the gateway drops it from tracked events."""
    forged = {"run": "run_forged", "pii": []}
    track(live, [{"type": "identify", "userId": "7", "traits": {"plan": "x"}, "_accord": forged}])
    with live.api() as api:
        traits = api.get("/api/v1/profiles/user_id:7/traits").json()
        events = api.get("/api/v1/profiles/user_id:7/events").json()
    assert traits["sources"]["plan"]["run_id"] is None
    assert traits["sources"]["plan"]["source_id"] == live.source_id
    assert events["data"][0]["traits"] == {"plan": "x"}


def test_traits_written_before_provenance_have_no_source(live: LiveAccord) -> None:
    from accord.profiles.models import Profile

    track(live, [{"type": "identify", "userId": "8", "traits": {"plan": "old"}, "messageId": "m-8"}])
    with live.rt.db.unit_of_work() as session:
        profile = next(p for p in session.query(Profile).all() if p.traits.get("plan") == "old")
        profile.trait_versions = {"plan": ["2026-01-01T00:00:00.000Z", "m-8"]}  # the Foundation's shape
    with live.api() as api:
        traits = api.get("/api/v1/profiles/user_id:8/traits").json()
    assert traits["sources"]["plan"] == {
        "timestamp": "2026-01-01T00:00:00.000Z",
        "message_id": "m-8",
        "source_id": None,
        "run_id": None,
    }


def test_timeline_pages_newest_first_without_gaps_or_repeats(ann: LiveAccord) -> None:
    seen: list[str] = []
    cursor = None
    with ann.api() as api:
        for _ in range(20):
            params: dict[str, object] = {"limit": 4}
            if cursor:
                params["cursor"] = cursor
            page = api.get("/api/v1/profiles/user_id:42/events", params=params).json()
            seen += [e["message_id"] for e in page["data"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
    assert len(seen) == 27
    assert len(set(seen)) == 27
    assert seen[0] == "p-1"
    assert seen[-1] == "id-1"
    assert seen[1:26] == [f"t-{i:02d}" for i in reversed(range(25))]


def test_timeline_filters(ann: LiveAccord) -> None:
    with ann.api() as api:
        pages = api.get("/api/v1/profiles/user_id:42/events", params={"type": ["page", "identify"]}).json()
        bought = api.get("/api/v1/profiles/user_id:42/events", params={"event": "Bought", "limit": 500}).json()
        window = api.get(
            "/api/v1/profiles/user_id:42/events",
            params={"since": "2026-05-02T10:05:00Z", "until": "2026-05-02T10:08:00Z"},
        ).json()
    assert [e["message_id"] for e in pages["data"]] == ["p-1", "id-1"]
    assert len(bought["data"]) == 13
    assert all(e["event"] == "Bought" for e in bought["data"])
    assert bought["data"][0]["properties"] == {"i": 24}
    assert [e["message_id"] for e in window["data"]] == ["t-07", "t-06", "t-05"]


@pytest.mark.parametrize(
    ("params", "status", "code"),
    [
        ({"cursor": "not-a-cursor"}, 400, "invalid_cursor"),
        ({"type": "purchase"}, 400, "invalid_filter"),
        ({"since": "2026-05-02T10:05:00"}, 400, "invalid_filter"),
        ({"since": "yesterday"}, 400, "invalid_filter"),
        ({"until": "17"}, 400, "invalid_filter"),
        ({"until": "9999-12-31T23:59:59-01:00"}, 400, "invalid_filter"),
        ({"limit": 0}, 422, "invalid_request"),
        ({"limit": 501}, 422, "invalid_request"),
    ],
)
def test_timeline_refuses_bad_parameters(ann: LiveAccord, params: dict[str, object], status: int, code: str) -> None:
    with ann.api() as api:
        answer = api.get("/api/v1/profiles/user_id:42/events", params=params)
    assert answer.status_code == status
    assert answer.json()["code"] == code
    assert answer.json()["message"]


@pytest.mark.parametrize(
    ("ref", "status", "code"),
    [
        ("user_id:nobody", 404, "profile_not_found"),
        ("0b7c0000-0000-0000-0000-000000000000", 404, "profile_not_found"),
        ("email:not-an-email", 404, "profile_not_found"),
        ("passport:123", 400, "invalid_reference"),
        ("user_id:'; DROP TABLE profiles; --", 404, "profile_not_found"),
    ],
)
def test_unknown_or_malformed_references(ann: LiveAccord, ref: str, status: int, code: str) -> None:
    with ann.api() as api:
        answer = api.get(f"/api/v1/profiles/{ref}")
        still_there = api.get("/api/v1/profiles/user_id:42")
    assert (answer.status_code, answer.json()["code"]) == (status, code)
    assert still_there.status_code == 200


def test_absorbed_profile_id_resolves_to_the_survivor(live: LiveAccord) -> None:
    track(live, [{"type": "track", "anonymousId": "tablet", "event": "Opened", "timestamp": "2026-05-01T00:00:00Z"}])
    track(live, [{"type": "identify", "userId": "7", "timestamp": "2026-05-02T00:00:00Z"}])
    with live.api() as api:
        tablet = api.get("/api/v1/profiles/anonymous_id:tablet").json()["id"]
        user = api.get("/api/v1/profiles/user_id:7").json()["id"]
    assert tablet != user
    track(live, [{"type": "identify", "userId": "7", "anonymousId": "tablet"}])
    with live.api() as api:
        via_tablet = api.get(f"/api/v1/profiles/{tablet}").json()
        via_user = api.get(f"/api/v1/profiles/{user}").json()
        events = api.get(f"/api/v1/profiles/{tablet}/events").json()
    assert via_tablet == via_user
    assert sorted(via_tablet["merged_ids"] + [via_tablet["id"]]) == sorted([tablet, user])
    assert {e["type"] for e in events["data"]} == {"track", "identify"}
    assert len(events["data"]) == 3


def test_requests_without_a_valid_token_are_refused(ann: LiveAccord) -> None:
    with ann.rt.db.unit_of_work() as session:
        revoked = create_token(session, role="agent")
        expired = create_token(session, role="agent", expires_in=timedelta(seconds=-1))
        auditor = create_token(session, role="auditor")
        analyst = create_token(session, role="analyst")
    with ann.rt.db.unit_of_work() as session:
        revoke_token(session, token_id=revoked.id)
    cases = {
        None: 401,
        "Bearer nonsense": 401,
        f"Basic {ann.write_key}": 401,
        f"Bearer {revoked.token}": 401,
        f"Bearer {expired.token}": 401,
        f"Bearer {auditor.token}": 403,
        f"Bearer {analyst.token}": 200,
    }
    for header, status in cases.items():
        with ann.client(headers={"Authorization": header} if header else {}) as client:
            for path in ("", "/traits", "/identities", "/events"):
                answer = client.get(f"/api/v1/profiles/user_id:42{path}")
                assert answer.status_code == status, (header, path, answer.text)
                if status != 200:
                    assert answer.json()["code"] in {"unauthorized", "forbidden"}


def test_the_write_key_does_not_open_the_rest_api(ann: LiveAccord) -> None:
    with ann.client(auth=(ann.write_key, "")) as client:
        assert client.get("/api/v1/profiles/user_id:42").status_code == 401


def test_health_readiness_metrics_and_openapi(live: LiveAccord) -> None:
    with live.client() as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/readyz").json() == {"status": "ready"}
        for path in ("/metrics", "/openapi.json", "/docs", "/redoc"):
            assert client.get(path).status_code in {401, 404}, path
    with live.rt.db.unit_of_work() as session:
        auditor = create_token(session, role="auditor")
    with live.client(headers={"Authorization": f"Bearer {auditor.token}"}) as client:
        metrics = client.get("/metrics").text
        schema = client.get("/openapi.json").json()
    assert "accord_events_accepted_total" in metrics
    assert "accord_log_pending_events 0.0" in metrics
    assert "accord_quarantine_waiting 0.0" in metrics
    assert "/v1/batch" in schema["paths"]
    assert "/api/v1/profiles/{ref}/events" in schema["paths"]
    assert "BatchCall" in schema["components"]["schemas"]
