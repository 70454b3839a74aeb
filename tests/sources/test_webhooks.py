"""Mappings kept with a source, and inbound webhooks mapped by them, against a live Accord."""

from __future__ import annotations

import gzip

import orjson

from conftest import LiveAccord
from sources.importing import HOOK, source

SURVEY = {
    "mapping": 1,
    "name": "survey",
    "fields": [
        {"name": "email", "from": "respondent", "trim": True, "lower": True},
        {"name": "score", "from": "nps", "cast": "integer"},
        {"name": "answered", "from": "submitted_at", "cast": "timestamp"},
    ],
    "identifiers": [{"field": "email", "type": "email"}],
    "event": {"name": "Survey Answered", "time": "answered", "properties": [{"field": "score"}]},
}


def test_mappings_are_kept_versioned(live: LiveAccord) -> None:
    with live.api() as api:
        first = api.put(f"/api/v1/sources/{live.source_id}/mappings/survey", json=SURVEY)
        assert first.status_code == 200, first.text
        assert first.json()["version"] == 1
        second = api.put(f"/api/v1/sources/{live.source_id}/mappings/survey", json={**SURVEY, "version": 2})
        assert second.json()["version"] == 2
        latest = api.get(f"/api/v1/sources/{live.source_id}/mappings/survey").json()
        assert (latest["version"], latest["mapping"]["version"]) == (2, 2)
        bad = api.put(f"/api/v1/sources/{live.source_id}/mappings/survey", json={**SURVEY, "event": {"name": 5}})
        assert (bad.status_code, bad.json()["code"]) == (422, "invalid_mapping")
        assert "event.name" in bad.json()["message"]
        assert api.get(f"/api/v1/sources/{live.source_id}/mappings/nope").json()["code"] == "mapping_not_found"
        assert api.put(f"/api/v1/sources/{live.source_id}/mappings/a%20b", json=SURVEY).status_code == 422
        assert api.put("/api/v1/sources/nope/mappings/survey", json=SURVEY).json()["code"] == "source_not_found"


def test_a_webhook_maps_its_rows_into_events(live: LiveAccord) -> None:
    with live.api() as api:
        assert api.put(f"/api/v1/sources/{live.source_id}/mappings/survey", json=SURVEY).status_code == 200
    rows = [
        {"respondent": " Ann@Example.com", "nps": 9, "submitted_at": "2026-05-01T10:00:00Z", "extra": {"a": 1}},
        {"respondent": "bob@example.com", "nps": "ten", "submitted_at": "2026-05-01T11:00:00Z"},
        {"respondent": "", "nps": 3, "submitted_at": "2026-05-01T12:00:00Z"},
    ]
    with live.client(auth=(live.write_key, "")) as client:
        answer = client.post("/v1/webhooks/survey", json=rows)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {
            "accepted": 1,
            "rejected": [
                {"position": 2, "reason": "field score: 'ten' is not an integer"},
                {"position": 3, "reason": "no usable identifier: email is empty"},
            ],
        }
        # The sender retries: nothing new.
        assert client.post("/v1/webhooks/survey", json=rows[0]).json()["accepted"] == 1
        gzipped = client.post(
            "/v1/webhooks/survey",
            content=gzip.compress(orjson.dumps(rows[0])),
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )
        assert gzipped.status_code == 200, gzipped.text
    live.wait_processed()
    with live.api() as api:
        events = api.get("/api/v1/profiles/email:ann@example.com/events").json()["data"]
        assert [(e["event"], e["properties"]) for e in events] == [("Survey Answered", {"score": 9})]
        assert events[0]["timestamp"].startswith("2026-05-01T10:00:00")
    with live.client() as anonymous:  # the write key as a query parameter, for senders that set no header
        assert anonymous.post(f"/v1/webhooks/survey?writeKey={live.write_key}", json=rows[0]).status_code == 200


def test_webhook_errors(live: LiveAccord) -> None:
    source(live.rt, "other")
    with live.api() as api:
        api.put(f"/api/v1/sources/{live.source_id}/mappings/hook", json=HOOK)
    with live.client() as anonymous:
        assert anonymous.post("/v1/webhooks/hook", json={"userId": "1"}).status_code == 401
        assert anonymous.post("/v1/webhooks/hook?writeKey=wk_nope", json={"userId": "1"}).status_code == 401
    with live.client(auth=(live.write_key, "")) as client:
        cases = [
            ("/v1/webhooks/nope", {"json": {"userId": "1"}}, 404, "mapping_not_found"),
            (
                "/v1/webhooks/hook",
                {"content": b"{not json", "headers": {"Content-Type": "application/json"}},
                400,
                "invalid_json",
            ),
            ("/v1/webhooks/hook", {"json": [1, 2]}, 400, "invalid_body"),
            ("/v1/webhooks/hook", {"json": []}, 400, "invalid_body"),
            ("/v1/webhooks/hook", {"json": {}}, 400, "invalid_body"),
            ("/v1/webhooks/hook", {"json": {"userId": "a\u0000b"}}, 400, "invalid_body"),
            ("/v1/webhooks/hook", {"json": [{"userId": str(i)} for i in range(2501)]}, 413, "batch_too_large"),
            ("/v1/webhooks/hook", {"content": b"x" * 600_000}, 413, "request_too_large"),
            ("/v1/webhooks/hook", {"json": {"other": "1"}}, 422, "invalid_input"),
        ]
        for url, kwargs, status, code in cases:
            answer = client.post(url, **kwargs)
            assert (answer.status_code, answer.json()["code"]) == (status, code), (url, answer.text)
        fine = client.post("/v1/webhooks/hook", json=[{"userId": "7", "event": "Opened", "deep": {"x": [1]}}])
        assert fine.json() == {"accepted": 1, "rejected": []}
    live.wait_processed()
    with live.api() as api:
        traits = api.get("/api/v1/profiles/user_id:7/traits").json()
        assert traits["traits"] == {"last_event": "Opened"}
        assert traits["sources"]["last_event"]["source_id"] == live.source_id
        assert traits["sources"]["last_event"]["run_id"] is None
