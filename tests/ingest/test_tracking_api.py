"""The Segment-compatible tracking API over HTTP, against a live Accord on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import gzip
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest
from sqlalchemy import select

from accord.ingest.spec import MAX_BATCH_EVENTS, MAX_ID_LENGTH, MAX_REQUEST_BYTES, iso
from accord.profiles.models import ProfileEvent
from accord.profiles.sealed import opened
from accord.sources.service import create_source, set_enabled
from conftest import LiveAccord, log_rows

CALLS = {
    "track": {"userId": "u-1", "event": "Order Completed", "properties": {"total": 42}},
    "identify": {"userId": "u-1", "traits": {"plan": "pro"}},
    "page": {"userId": "u-1", "name": "Home", "properties": {"path": "/"}},
    "screen": {"userId": "u-1", "name": "Settings"},
    "group": {"userId": "u-1", "groupId": "g-1", "traits": {"name": "Acme"}},
    "alias": {"userId": "u-1", "previousId": "anon-1"},
}


# -- helpers -------------------------------------------------------------------------------------


def basic(write_key: str, *, colon: bool = True) -> dict[str, str]:
    credentials = f"{write_key}:" if colon else write_key
    return {"Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()}


def send(live: LiveAccord, endpoint: str, body: Any, **headers: str) -> httpx.Response:
    """POST a JSON body with the test source's write key as HTTP Basic user name."""
    with live.client(headers={**basic(live.write_key), **headers}) as client:
        return client.post(f"/v1/{endpoint}", json=body)


def send_raw(live: LiveAccord, endpoint: str, content: bytes | Iterator[bytes], **headers: str) -> httpx.Response:
    with live.client(headers={**basic(live.write_key), "Content-Type": "application/json", **headers}) as client:
        return client.post(f"/v1/{endpoint}", content=content)


def assert_refused(response: httpx.Response, status: int, code: str, *named: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"code", "message"}
    assert body["code"] == code
    for name in named:
        assert name in body["message"]


def profile(live: LiveAccord, ref: str) -> dict[str, Any]:
    with live.api() as api:
        response = api.get(f"/api/v1/profiles/{quote(ref, safe=':')}")
    assert response.status_code == 200, response.text
    return dict(response.json())


def timeline(live: LiveAccord, ref: str) -> list[dict[str, Any]]:
    with live.api() as api:
        response = api.get(f"/api/v1/profiles/{quote(ref, safe=':')}/events", params={"limit": 500})
    assert response.status_code == 200, response.text
    return list(response.json()["data"])


def stored_payload(live: LiveAccord, message_id: str) -> dict[str, Any]:
    """The event as stored, for fields the events API does not show."""
    with live.rt.db.read() as session:
        row = session.scalars(select(ProfileEvent).where(ProfileEvent.message_id == message_id)).first()
        assert row is not None, f"no stored event {message_id}"
        return dict(opened(session, [row])[0].payload)  # stored encrypted


def add_source(live: LiveAccord, name: str) -> str:
    with live.rt.db.unit_of_work() as session:
        return create_source(session, name=name).write_key


def settle(live: LiveAccord) -> None:
    """Let the server finish logging a 500 before the test fails and pytest formats the failure.

    Both format tracebacks with the ast module, which is not thread-safe in Python 3.11; the server's
    one event loop answers this request only after it has logged the previous one's error.
    """
    with live.client() as client:
        assert client.get("/healthz").status_code == 200


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": True}
    for _ in range(depth):
        value = {"a": value}
    return value


# -- endpoints -----------------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", list(CALLS))
def test_each_call_type_is_accepted_and_stored(live: LiveAccord, endpoint: str) -> None:
    response = send(live, endpoint, CALLS[endpoint])
    assert response.status_code == 200
    assert response.json() == {"success": True}
    live.wait_processed()
    assert [event["type"] for event in timeline(live, "user_id:u-1")] == [endpoint]


@pytest.mark.parametrize("endpoint", ["batch", "import"])
def test_a_batch_of_every_call_type_is_accepted_and_stored(live: LiveAccord, endpoint: str) -> None:
    batch = [{"type": kind, **call} for kind, call in CALLS.items()]
    response = send(live, endpoint, {"batch": batch})
    assert response.status_code == 200
    live.wait_processed()
    assert profile(live, "user_id:u-1")["counts"]["types"] == dict.fromkeys(CALLS, 1)


# -- authentication ------------------------------------------------------------------------------


@pytest.mark.parametrize("colon", [True, False], ids=["key-colon", "key-only"])
def test_the_write_key_as_basic_user_name_is_accepted(live: LiveAccord, colon: bool) -> None:
    with live.client(headers=basic(live.write_key, colon=colon)) as client:
        response = client.post("/v1/track", json=CALLS["track"])
    assert response.status_code == 200


def test_the_write_key_in_the_body_is_accepted_and_not_stored(live: LiveAccord) -> None:
    with live.client() as client:
        response = client.post("/v1/track", json={**CALLS["track"], "messageId": "m-1", "writeKey": live.write_key})
    assert response.status_code == 200
    live.wait_processed()
    assert "writeKey" not in stored_payload(live, "m-1")
    assert live.write_key not in orjson.dumps(stored_payload(live, "m-1")).decode()


def test_an_unknown_write_key_is_refused(live: LiveAccord) -> None:
    with live.client(headers=basic("wk_nobody")) as client:
        response = client.post("/v1/track", json=CALLS["track"])
    assert_refused(response, 401, "unauthorized", "write key")
    assert response.headers["WWW-Authenticate"].startswith("Basic")


def test_an_unknown_write_key_in_the_body_is_refused(live: LiveAccord) -> None:
    with live.client() as client:
        response = client.post("/v1/track", json={**CALLS["track"], "writeKey": "wk_nobody"})
    assert_refused(response, 401, "unauthorized", "write key")


@pytest.mark.parametrize("where", ["basic", "body"])
def test_a_disabled_source_is_refused(live: LiveAccord, where: str) -> None:
    write_key = add_source(live, "disabled-source")
    # Disabled before its key is first used, since the key lookup is cached for a few seconds.
    with live.rt.db.unit_of_work() as session:
        set_enabled(session, name="disabled-source", enabled=False)
    with live.client() as client:
        if where == "basic":
            response = client.post("/v1/track", json=CALLS["track"], headers=basic(write_key))
        else:
            response = client.post("/v1/track", json={**CALLS["track"], "writeKey": write_key})
    assert_refused(response, 401, "unauthorized", "disabled")
    assert log_rows(live.rt) == 0


def test_a_bearer_token_is_refused(live: LiveAccord) -> None:
    with live.client(headers={"Authorization": f"Bearer {live.write_key}"}) as client:
        response = client.post("/v1/track", json=CALLS["track"])
    assert_refused(response, 401, "unauthorized", "Basic")


@pytest.mark.parametrize(
    "authorization",
    [
        "Basic !!!not-base64!!!",
        "Basic " + base64.b64encode(b"\xff\xfe:").decode(),
        "Basic " + base64.b64encode(b":password").decode(),
        "Basic",
    ],
    ids=["bad-base64", "not-utf8", "empty-key", "no-credentials"],
)
def test_malformed_basic_credentials_are_refused(live: LiveAccord, authorization: str) -> None:
    with live.client(headers={"Authorization": authorization}) as client:
        response = client.post("/v1/track", json={**CALLS["track"], "writeKey": live.write_key})
    assert_refused(response, 401, "unauthorized", "Authorization")


def test_a_call_without_a_write_key_is_refused(live: LiveAccord) -> None:
    with live.client() as client:
        response = client.post("/v1/track", json=CALLS["track"])
    assert_refused(response, 401, "unauthorized", "writeKey")
    assert log_rows(live.rt) == 0


# -- required fields and types -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "body", "code", "field"),
    [
        ("track", {"event": "X"}, "missing_field", "anonymousId"),
        ("identify", {"traits": {"plan": "pro"}}, "missing_field", "userId"),
        ("track", {"userId": "u-1"}, "missing_field", "track.event"),
        ("track", {"userId": "u-1", "event": ""}, "missing_field", "track.event"),
        ("alias", {"userId": "u-1"}, "missing_field", "alias.previousId"),
        ("alias", {"previousId": "anon-1"}, "missing_field", "alias.userId"),
        ("group", {"userId": "u-1", "traits": {}}, "missing_field", "group.groupId"),
        ("track", {"userId": "u-1", "event": "X", "properties": [1, 2]}, "invalid_field", "track.properties"),
        ("identify", {"userId": "u-1", "traits": "vip"}, "invalid_field", "identify.traits"),
        ("identify", {"userId": {"id": "u-1"}}, "invalid_field", "identify.userId"),
        ("page", {"anonymousId": ["a"]}, "invalid_field", "page.anonymousId"),
        ("page", {"userId": "u-1", "name": 7}, "invalid_field", "page.name"),
        ("track", {"userId": "u-1", "event": "X", "timestamp": "yesterday"}, "invalid_field", "track.timestamp"),
        ("track", {"userId": "u-1", "event": "X", "timestamp": 1767225600}, "invalid_field", "track.timestamp"),
        (
            "track",
            {"userId": "u-1", "event": "X", "timestamp": "2026-13-45T10:00:00Z"},
            "invalid_field",
            "track.timestamp",
        ),
        ("track", {"userId": "u-1", "event": "X", "sentAt": "later"}, "invalid_field", "track.sentAt"),
        ("track", {"userId": "u-1", "event": "X", "messageId": 12}, "invalid_field", "track.messageId"),
        ("batch", {"batch": [{"type": "purchase", "userId": "u-1"}]}, "invalid_type", "batch[0].type"),
        ("batch", {"batch": [{"userId": "u-1"}]}, "invalid_type", "batch[0].type"),
        ("batch", {"batch": [CALLS["track"]], "sentAt": "later"}, "invalid_field", "sentAt"),
        ("batch", {"batch": [{"type": "track", **CALLS["track"]}], "context": [1]}, "invalid_field", "context"),
    ],
)
def test_a_call_that_breaks_the_spec_is_refused_naming_the_field(
    live: LiveAccord, endpoint: str, body: dict[str, Any], code: str, field: str
) -> None:
    assert_refused(send(live, endpoint, body), 400, code, field)
    assert log_rows(live.rt) == 0


@pytest.mark.parametrize("timestamp", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_a_timestamp_out_of_range_is_refused(live: LiveAccord, timestamp: str) -> None:
    response = send(live, "track", {**CALLS["track"], "timestamp": timestamp})
    settle(live)
    assert_refused(response, 400, "invalid_field", "track.timestamp")


def test_a_clock_skew_too_large_to_correct_is_refused(live: LiveAccord) -> None:
    body = {**CALLS["track"], "timestamp": "0001-01-01T00:00:00Z", "sentAt": "9999-12-31T23:59:59Z"}
    assert_refused(send(live, "track", body), 400, "invalid_field", "track.timestamp", "sentAt")


# -- limits and body encoding --------------------------------------------------------------------


def test_an_event_over_32_kb_is_refused(live: LiveAccord) -> None:
    body = {**CALLS["track"], "properties": {"blob": "x" * 33_000}}
    assert_refused(send(live, "track", body), 413, "event_too_large", "track")


def test_a_batch_with_an_event_over_32_kb_is_refused_naming_it(live: LiveAccord) -> None:
    batch = [
        {"type": "track", **CALLS["track"]},
        {"type": "track", **CALLS["track"], "properties": {"b": "x" * 33_000}},
    ]
    assert_refused(send(live, "batch", {"batch": batch}), 413, "event_too_large", "batch[1]")
    assert log_rows(live.rt) == 0


def big_batch() -> bytes:
    """Twenty events of 30 KB each: every event is within its limit, the request is not."""
    item = {"type": "track", **CALLS["track"], "properties": {"blob": "x" * 30_000}}
    body = orjson.dumps({"batch": [item] * 20})
    assert len(body) > MAX_REQUEST_BYTES
    return body


def test_a_request_over_500_kb_is_refused_by_its_content_length(live: LiveAccord) -> None:
    assert_refused(send_raw(live, "batch", big_batch()), 413, "request_too_large", str(MAX_REQUEST_BYTES))
    assert log_rows(live.rt) == 0


def test_a_streamed_request_over_500_kb_is_refused(live: LiveAccord) -> None:
    body = big_batch()
    chunks = (body[start : start + 65_536] for start in range(0, len(body), 65_536))
    response = send_raw(live, "batch", chunks)  # chunked: no Content-Length to go by
    assert_refused(response, 413, "request_too_large", str(MAX_REQUEST_BYTES))


def test_a_gzip_body_inflating_past_500_kb_is_refused(live: LiveAccord) -> None:
    body = b'{"userId": "u-1", "event": "X"' + b" " * 5_000_000 + b"}"
    bomb = gzip.compress(body)
    assert len(bomb) < 10_000
    response = send_raw(live, "track", bomb, **{"Content-Encoding": "gzip"})
    assert_refused(response, 413, "request_too_large", "uncompressed")
    assert log_rows(live.rt) == 0


def test_a_batch_over_2500_events_is_refused(live: LiveAccord) -> None:
    batch = [{"type": "track", "userId": f"u-{n}", "event": "X"} for n in range(MAX_BATCH_EVENTS + 1)]
    assert_refused(send(live, "batch", {"batch": batch}), 413, "batch_too_large", str(MAX_BATCH_EVENTS))
    assert log_rows(live.rt) == 0


def test_a_batch_of_2500_events_is_accepted(live: LiveAccord) -> None:
    batch = [{"type": "track", "userId": "u-1", "event": "X"} for _ in range(MAX_BATCH_EVENTS)]
    assert send(live, "batch", {"batch": batch}).status_code == 200
    live.wait_processed()
    assert profile(live, "user_id:u-1")["counts"]["events"] == {"X": MAX_BATCH_EVENTS}


@pytest.mark.parametrize("endpoint", ["batch", "import"])
def test_an_empty_batch_is_refused(live: LiveAccord, endpoint: str) -> None:
    assert_refused(send(live, endpoint, {"batch": []}), 400, "invalid_field", "batch")


@pytest.mark.parametrize("body", [{}, {"batch": {"type": "track"}}], ids=["missing", "object"])
def test_a_batch_must_be_an_array(live: LiveAccord, body: dict[str, Any]) -> None:
    assert_refused(send(live, "batch", body), 400, "missing_field", "batch")


@pytest.mark.parametrize("content", [b'{"userId": "u-1", "event": ', b"{'userId': 'u-1'}", b"", b"\xff\xfe"])
def test_malformed_json_is_refused(live: LiveAccord, content: bytes) -> None:
    assert_refused(send_raw(live, "track", content), 400, "invalid_json", "JSON")


@pytest.mark.parametrize("content", [b"[]", b'[{"userId": "u-1", "event": "X"}]', b'"track"', b"42", b"null"])
def test_a_body_that_is_not_an_object_is_refused(live: LiveAccord, content: bytes) -> None:
    assert_refused(send_raw(live, "track", content), 400, "invalid_body", "object")


@pytest.mark.parametrize("encoding", ["br", "deflate", "compress"])
def test_an_unsupported_content_encoding_is_refused(live: LiveAccord, encoding: str) -> None:
    response = send_raw(live, "track", orjson.dumps(CALLS["track"]), **{"Content-Encoding": encoding})
    assert_refused(response, 415, "unsupported_encoding", encoding, "gzip")


def test_a_body_that_is_not_gzip_is_refused(live: LiveAccord) -> None:
    response = send_raw(live, "track", orjson.dumps(CALLS["track"]), **{"Content-Encoding": "gzip"})
    assert_refused(response, 400, "invalid_body", "gzip")


def test_a_truncated_gzip_body_is_refused(live: LiveAccord) -> None:
    truncated = gzip.compress(orjson.dumps(CALLS["track"]))[:-12]
    response = send_raw(live, "track", truncated, **{"Content-Encoding": "gzip"})
    assert_refused(response, 400, "invalid_body", "gzip")
    assert log_rows(live.rt) == 0


@pytest.mark.parametrize("encoding", ["gzip", "GZIP"])
def test_a_gzip_body_is_accepted(live: LiveAccord, encoding: str) -> None:
    batch = [{"type": "identify", **CALLS["identify"]}, {"type": "track", **CALLS["track"]}]
    response = send_raw(live, "batch", gzip.compress(orjson.dumps({"batch": batch})), **{"Content-Encoding": encoding})
    assert response.status_code == 200, response.text
    live.wait_processed()
    found = profile(live, "user_id:u-1")
    assert found["traits"] == {"plan": "pro"}
    assert found["counts"]["types"] == {"identify": 1, "track": 1}


# -- messageId and dedupe ------------------------------------------------------------------------


def test_a_message_id_is_assigned_when_missing(live: LiveAccord) -> None:
    for _ in range(3):
        assert send(live, "track", CALLS["track"]).status_code == 200
    live.wait_processed()
    message_ids = [event["message_id"] for event in timeline(live, "user_id:u-1")]
    assert len(message_ids) == 3
    assert all(message_ids)
    assert len(set(message_ids)) == 3


def test_a_resent_message_id_is_acknowledged_and_stored_once(live: LiveAccord) -> None:
    call = {**CALLS["track"], "messageId": "m-1"}
    for _ in range(3):
        assert send(live, "track", call).status_code == 200
    assert send(live, "batch", {"batch": [{"type": "track", **call}] * 2}).status_code == 200
    live.wait_processed()
    assert [event["message_id"] for event in timeline(live, "user_id:u-1")] == ["m-1"]
    assert profile(live, "user_id:u-1")["counts"] == {"types": {"track": 1}, "events": {"Order Completed": 1}}


def test_the_same_message_id_from_another_source_is_another_event(live: LiveAccord) -> None:
    other_key = add_source(live, "other-source")
    call = {**CALLS["track"], "messageId": "m-1"}
    assert send(live, "track", call).status_code == 200
    with live.client(headers=basic(other_key)) as client:
        assert client.post("/v1/track", json=call).status_code == 200
    live.wait_processed()
    events = timeline(live, "user_id:u-1")
    assert [event["message_id"] for event in events] == ["m-1", "m-1"]
    assert len({event["source_id"] for event in events}) == 2
    assert profile(live, "user_id:u-1")["counts"]["events"] == {"Order Completed": 2}


# -- context, integrations, IP and time ----------------------------------------------------------


def test_batch_context_and_integrations_are_merged_into_each_event(live: LiveAccord) -> None:
    body = {
        "batch": [
            {
                "type": "track",
                **CALLS["track"],
                "messageId": "m-own",
                "context": {"locale": "fr-FR"},
                "integrations": {"Mixpanel": False},
            },
            {"type": "track", **CALLS["track"], "messageId": "m-inherits"},
        ],
        "context": {"locale": "en-GB", "app": {"name": "Shop", "version": "2.1"}},
        "integrations": {"All": False, "Mixpanel": True},
    }
    assert send(live, "batch", body).status_code == 200
    live.wait_processed()
    by_id = {event["message_id"]: event for event in timeline(live, "user_id:u-1")}
    assert by_id["m-own"]["context"]["locale"] == "fr-FR"
    assert by_id["m-inherits"]["context"]["locale"] == "en-GB"
    for event in by_id.values():
        assert event["context"]["app"] == {"name": "Shop", "version": "2.1"}
    assert stored_payload(live, "m-own")["integrations"] == {"All": False, "Mixpanel": False}
    assert stored_payload(live, "m-inherits")["integrations"] == {"All": False, "Mixpanel": True}


def test_context_ip_is_taken_from_the_request_when_absent(live: LiveAccord) -> None:
    assert send(live, "track", CALLS["track"]).status_code == 200
    live.wait_processed()
    assert timeline(live, "user_id:u-1")[0]["context"]["ip"] == "127.0.0.1"


def test_a_sent_context_ip_is_kept(live: LiveAccord) -> None:
    assert send(live, "track", {**CALLS["track"], "context": {"ip": "203.0.113.7"}}).status_code == 200
    live.wait_processed()
    assert timeline(live, "user_id:u-1")[0]["context"]["ip"] == "203.0.113.7"


def test_a_device_clock_an_hour_fast_is_corrected(live: LiveAccord) -> None:
    device_now = datetime.now(UTC) + timedelta(hours=1)
    happened = iso(device_now - timedelta(seconds=30))
    call = {**CALLS["track"], "messageId": "m-1", "timestamp": happened, "sentAt": iso(device_now)}
    assert send(live, "track", call).status_code == 200
    live.wait_processed()
    [event] = timeline(live, "user_id:u-1")
    timestamp = datetime.fromisoformat(event["timestamp"])
    received_at = datetime.fromisoformat(event["received_at"])
    assert timestamp == received_at - timedelta(seconds=30)
    assert abs(timestamp - datetime.now(UTC)) < timedelta(minutes=20)  # not an hour ahead
    payload = stored_payload(live, "m-1")
    assert payload["originalTimestamp"] == happened
    assert payload["sentAt"] == iso(device_now)


def test_a_batch_sent_at_corrects_the_clock_of_its_events(live: LiveAccord) -> None:
    device_now = datetime.now(UTC) + timedelta(hours=1)
    body = {
        "batch": [{"type": "track", **CALLS["track"], "timestamp": iso(device_now - timedelta(minutes=2))}],
        "sentAt": iso(device_now),
    }
    assert send(live, "batch", body).status_code == 200
    live.wait_processed()
    [event] = timeline(live, "user_id:u-1")
    gap = datetime.fromisoformat(event["received_at"]) - datetime.fromisoformat(event["timestamp"])
    assert gap == timedelta(minutes=2)


# -- a refused request stores nothing ------------------------------------------------------------


def test_one_bad_event_refuses_the_whole_batch(live: LiveAccord) -> None:
    batch = [
        {"type": "identify", **CALLS["identify"]},
        {"type": "track", **CALLS["track"]},
        {"type": "track", "userId": "u-1"},
        {"type": "page", **CALLS["page"]},
    ]
    assert_refused(send(live, "batch", {"batch": batch}), 400, "missing_field", "batch[2]", "event")
    assert log_rows(live.rt) == 0
    with live.api() as api:
        assert api.get("/api/v1/profiles/user_id:u-1").status_code == 404


# -- hostile input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "field"),
    [
        ("track", "userId"),
        ("track", "anonymousId"),
        ("track", "messageId"),
        ("alias", "previousId"),
        ("group", "groupId"),
    ],
)
def test_an_id_over_200_characters_is_refused(live: LiveAccord, endpoint: str, field: str) -> None:
    body = {**CALLS[endpoint], field: "x" * (MAX_ID_LENGTH + 1)}
    assert_refused(send(live, endpoint, body), 400, "invalid_field", f"{endpoint}.{field}", str(MAX_ID_LENGTH))


def test_an_id_of_200_characters_is_accepted(live: LiveAccord) -> None:
    user_id = "é" * MAX_ID_LENGTH
    message_id = "m" * MAX_ID_LENGTH
    assert send(live, "track", {**CALLS["track"], "userId": user_id, "messageId": message_id}).status_code == 200
    live.wait_processed()
    assert [event["message_id"] for event in timeline(live, f"user_id:{user_id}")] == [message_id]


def test_unicode_and_emoji_round_trip_unchanged(live: LiveAccord) -> None:
    user_id = "用户-😀-ünïcödé"
    traits = {
        "name": "Zoë Ångström 🚀",
        "city": "東京",
        "greeting": "مرحبا",
        "combining": "e\u0301",
        "flags": "🇬🇧🇯🇵",
        "family": "👩‍👩‍👧",
        "emoji_key_🔑": "✓",
    }
    assert send(live, "identify", {"userId": user_id, "traits": traits}).status_code == 200
    assert send(live, "track", {"userId": user_id, "event": "Café ☕ Ordered", "properties": traits}).status_code == 200
    live.wait_processed()
    assert profile(live, f"user_id:{user_id}")["traits"] == traits
    tracked = next(event for event in timeline(live, f"user_id:{user_id}") if event["type"] == "track")
    assert (tracked["event"], tracked["properties"]) == ("Café ☕ Ordered", traits)


def test_sql_looking_strings_are_stored_verbatim(live: LiveAccord) -> None:
    user_id = "1'; DROP TABLE profiles; --"
    traits = {"name": "Robert'); DROP TABLE students;--", "note": '" OR "1"="1', "path": "\\x00%' UNION SELECT *"}
    event_name = "x' OR '1'='1"
    assert send(live, "identify", {"userId": user_id, "traits": traits}).status_code == 200
    assert send(live, "track", {"userId": user_id, "event": event_name, "properties": traits}).status_code == 200
    live.wait_processed()
    found = profile(live, f"user_id:{user_id}")
    assert found["traits"] == traits
    assert ("user_id", user_id) in {(i["type"], i["value"]) for i in found["identities"]}
    assert found["counts"]["events"] == {event_name: 1}
    tracked = next(event for event in timeline(live, f"user_id:{user_id}") if event["type"] == "track")
    assert tracked["properties"] == traits


def test_deeply_nested_properties_within_the_limit_are_accepted(live: LiveAccord) -> None:
    properties = {"tree": nested(200)}
    assert send(live, "track", {**CALLS["track"], "properties": properties}).status_code == 200
    live.wait_processed()
    assert timeline(live, "user_id:u-1")[0]["properties"] == properties


def test_properties_nested_300_deep_are_refused_clearly(live: LiveAccord) -> None:
    properties = {"tree": nested(300)}  # about 2 KB, far under the 32 KB limit, but too deep to store
    response = send(live, "track", {**CALLS["track"], "properties": properties})
    assert_refused(response, 400, "too_deep", "track")
    assert log_rows(live.rt) == 0


def test_a_long_page_name_is_stored(live: LiveAccord) -> None:
    name = "A very long page title " * 40
    assert send(live, "page", {"userId": "u-1", "name": name, "messageId": "m-1"}).status_code == 200
    live.wait_processed()
    [event] = timeline(live, "user_id:u-1")
    assert name.startswith(event["event"])  # the indexed name may be cut to its column
    assert stored_payload(live, "m-1")["name"] == name


def test_a_nul_character_is_refused(live: LiveAccord) -> None:
    # PostgreSQL can store NUL neither in text nor in JSONB, so Accord refuses it up front.
    response = send(live, "identify", {"userId": "u-1", "traits": {"name": "nul\u0000byte"}})
    assert_refused(response, 400, "invalid_body", "NUL")
    assert log_rows(live.rt) == 0


def test_text_that_spells_a_nul_escape_is_stored_verbatim(live: LiveAccord) -> None:
    traits = {"note": "JSON writes NUL as \\u0000"}  # a backslash, then u0000: no NUL character
    assert send(live, "identify", {"userId": "u-1", "traits": traits}).status_code == 200
    live.wait_processed()
    assert profile(live, "user_id:u-1")["traits"] == traits
