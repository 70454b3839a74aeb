"""The Segment spec's pure functions: validation, normalisation, clock skew, batch rules."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from accord.ingest.spec import (
    MAX_BATCH_EVENTS,
    MAX_EVENT_BYTES,
    MAX_ID_LENGTH,
    SpecError,
    encode_events,
    iso,
    normalise_and_encode,
    normalise_event,
    normalise_request,
    parse_time,
)

RECEIVED = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
ID_FIELDS = ("userId", "anonymousId")

# Moments at millisecond precision, which is what Accord keeps.
moments = st.datetimes(
    min_value=datetime(1970, 1, 1),
    max_value=datetime(2200, 1, 1),
    timezones=st.just(UTC),
).map(lambda moment: moment.replace(microsecond=moment.microsecond // 1000 * 1000))
offsets = st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
skews = st.timedeltas(min_value=timedelta(days=-30), max_value=timedelta(days=30)).map(
    lambda gap: timedelta(milliseconds=gap // timedelta(milliseconds=1))
)
json_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
json_objects = st.dictionaries(st.text(max_size=10), json_values, max_size=5)
ids = st.text(min_size=1, max_size=MAX_ID_LENGTH).filter(lambda text: text.strip() != "")


def normalise(raw: Any, call_type: str | None = "track", **kwargs: Any) -> dict[str, Any]:
    return normalise_event(raw, call_type=call_type, where=call_type or "batch[0]", received_at=RECEIVED, **kwargs)


def refusal(raw: Any, call_type: str | None = "track", **kwargs: Any) -> SpecError:
    with pytest.raises(SpecError) as caught:
        normalise(raw, call_type, **kwargs)
    return caught.value


def request_refusal(body: Any, endpoint: str = "batch") -> SpecError:
    with pytest.raises(SpecError) as caught:
        normalise_request(body, endpoint=endpoint, received_at=RECEIVED, client_ip=None)
    return caught.value


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"a": value}
    return value


# -- timestamps ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-05-01T10:00:00Z", datetime(2026, 5, 1, 10, tzinfo=UTC)),
        ("2026-05-01T10:00:00.123z", datetime(2026, 5, 1, 10, 0, 0, 123000, tzinfo=UTC)),
        ("2026-05-01T12:00:00+02:00", datetime(2026, 5, 1, 10, tzinfo=UTC)),
        ("2026-05-01T10:00:00", datetime(2026, 5, 1, 10, tzinfo=UTC)),
        (" 2026-05-01T10:00:00Z ", datetime(2026, 5, 1, 10, tzinfo=UTC)),
    ],
)
def test_parse_time_reads_iso_8601_as_utc(text: str, expected: datetime) -> None:
    parsed = parse_time(text, "timestamp")
    assert parsed == expected
    assert parsed.tzinfo == UTC


@pytest.mark.parametrize("value", ["yesterday", "2026-13-45T00:00:00Z", "", 1767225600, None, ["2026-05-01"]])
def test_parse_time_refuses_what_is_not_a_timestamp(value: Any) -> None:
    with pytest.raises(SpecError) as caught:
        parse_time(value, "batch[3].timestamp")
    assert caught.value.code == "invalid_field"
    assert caught.value.status == 400
    assert "batch[3].timestamp" in caught.value.message


def test_parse_time_refuses_a_timestamp_out_of_range() -> None:
    with pytest.raises(SpecError) as caught:
        parse_time("0001-01-01T00:00:00+01:00", "timestamp")
    assert "timestamp" in caught.value.message


def test_iso_writes_milliseconds_in_utc_with_z() -> None:
    moment = datetime(2026, 5, 1, 12, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    assert iso(moment) == "2026-05-01T10:00:00.123Z"


@given(moment=moments, zone=offsets)
def test_iso_and_parse_time_round_trip(moment: datetime, zone: timezone) -> None:
    assert parse_time(iso(moment.astimezone(zone)), "timestamp") == moment


# -- one event -----------------------------------------------------------------------------------


def test_a_minimal_track_is_completed() -> None:
    event = normalise({"userId": "u-1", "event": "Signed Up"})
    assert event["type"] == "track"
    assert uuid.UUID(event["messageId"])
    assert event["receivedAt"] == "2026-06-01T12:00:00.000Z"
    assert event["timestamp"] == event["receivedAt"]
    assert event["context"] == {}
    assert "originalTimestamp" not in event


def test_the_endpoint_decides_the_type() -> None:
    assert normalise({"type": "identify", "userId": "u-1", "event": "X"}, "track")["type"] == "track"


def test_the_write_key_is_not_kept_in_the_event() -> None:
    assert "writeKey" not in normalise({"userId": "u-1", "event": "X", "writeKey": "wk_secret"})


def test_the_input_is_not_changed() -> None:
    raw = {"userId": "u-1", "event": "X", "writeKey": "wk_secret"}
    normalise(raw)
    assert raw == {"userId": "u-1", "event": "X", "writeKey": "wk_secret"}


@pytest.mark.parametrize("message_id", [None, ""])
def test_a_missing_message_id_is_assigned(message_id: str | None) -> None:
    raw = {"userId": "u-1", "event": "X", "messageId": message_id}
    first, second = normalise(raw), normalise(raw)
    assert uuid.UUID(first["messageId"])
    assert first["messageId"] != second["messageId"]


def test_a_given_message_id_is_kept() -> None:
    assert normalise({"userId": "u-1", "event": "X", "messageId": "m-1"})["messageId"] == "m-1"


@pytest.mark.parametrize(
    ("call_type", "raw", "code", "field"),
    [
        ("track", {"event": "X"}, "missing_field", "userId"),
        ("track", {"event": "X", "userId": "  ", "anonymousId": ""}, "missing_field", "anonymousId"),
        ("track", {"userId": "u-1"}, "missing_field", "track.event"),
        ("track", {"userId": "u-1", "event": "   "}, "missing_field", "track.event"),
        ("track", {"userId": "u-1", "event": 5}, "missing_field", "track.event"),
        ("track", {"userId": "u-1", "event": "x" * 201}, "invalid_field", "track.event"),
        ("alias", {"userId": "u-1"}, "missing_field", "alias.previousId"),
        ("alias", {"previousId": "anon-1", "anonymousId": "anon-1"}, "missing_field", "alias.userId"),
        ("group", {"userId": "u-1"}, "missing_field", "group.groupId"),
        ("group", {"userId": "u-1", "groupId": {"id": 1}}, "invalid_field", "group.groupId"),
        ("track", {"userId": "u-1", "event": "X", "properties": [1]}, "invalid_field", "track.properties"),
        ("identify", {"userId": "u-1", "traits": "vip"}, "invalid_field", "identify.traits"),
        ("page", {"userId": "u-1", "context": 1}, "invalid_field", "page.context"),
        ("screen", {"userId": "u-1", "integrations": []}, "invalid_field", "screen.integrations"),
        ("identify", {"userId": {"id": 1}}, "invalid_field", "identify.userId"),
        ("identify", {"userId": True}, "invalid_field", "identify.userId"),
        ("identify", {"anonymousId": 1.5}, "invalid_field", "identify.anonymousId"),
        ("page", {"userId": "u-1", "name": ["Home"]}, "invalid_field", "page.name"),
        ("page", {"userId": "u-1", "category": 3}, "invalid_field", "page.category"),
        ("track", {"userId": "u-1", "event": "X", "messageId": 7}, "invalid_field", "track.messageId"),
        ("track", {"userId": "u-1", "event": "X", "timestamp": "soon"}, "invalid_field", "track.timestamp"),
        ("track", {"userId": "u-1", "event": "X", "sentAt": 1}, "invalid_field", "track.sentAt"),
    ],
)
def test_a_call_that_breaks_the_spec_is_refused_naming_the_field(
    call_type: str, raw: dict[str, Any], code: str, field: str
) -> None:
    error = refusal(raw, call_type)
    assert (error.status, error.code) == (400, code)
    assert field in error.message


@pytest.mark.parametrize("kind", [None, "purchase", 3])
def test_a_batch_item_needs_a_known_type(kind: Any) -> None:
    error = refusal({"type": kind, "userId": "u-1"}, None)
    assert (error.status, error.code) == (400, "invalid_type")
    assert "batch[0].type" in error.message


def test_a_call_must_be_an_object() -> None:
    error = refusal(["userId", "u-1"], None)
    assert (error.code, error.status) == ("invalid_event", 400)
    assert "batch[0]" in error.message


def test_numeric_ids_become_strings() -> None:
    event = normalise({"userId": 42, "anonymousId": 7, "event": "X"})
    assert (event["userId"], event["anonymousId"]) == ("42", "7")


@given(user_id=ids)
def test_any_id_up_to_the_limit_is_accepted_unchanged(user_id: str) -> None:
    assert normalise({"userId": user_id, "event": "X"})["userId"] == user_id


@given(field=st.sampled_from(("userId", "anonymousId", "messageId")), length=st.integers(MAX_ID_LENGTH + 1, 5000))
def test_an_id_over_the_limit_is_refused(field: str, length: int) -> None:
    raw = {"userId": "u-1", "event": "X", field: "x" * length}
    error = refusal(raw)
    assert (error.status, error.code) == (400, "invalid_field")
    assert f"track.{field}" in error.message


def test_an_event_over_32_kb_is_refused() -> None:
    error = refusal({"userId": "u-1", "event": "X", "properties": {"blob": "x" * MAX_EVENT_BYTES}})
    assert (error.status, error.code) == (413, "event_too_large")
    assert "track" in error.message


def test_nested_properties_are_kept() -> None:
    assert normalise({"userId": "u-1", "event": "X", "properties": nested(100)})["properties"] == nested(100)


def test_properties_nested_past_the_serialiser_limit_are_refused_clearly() -> None:
    # 300 levels are about 1.8 KB, far under the 32 KB limit, but past orjson's depth bound.
    with pytest.raises(SpecError) as caught:
        normalise({"userId": "u-1", "event": "X", "properties": nested(300)})
    assert (caught.value.code, caught.value.status) == ("too_deep", 400)
    assert "nested too deeply" in caught.value.message


def test_every_accepted_request_can_be_written_to_the_log() -> None:
    body = {"userId": "u-1", "event": "X", "properties": nested(252)}
    events = normalise_request(body, endpoint="track", received_at=RECEIVED, client_ip=None)
    assert orjson.loads(encode_events(events)) == events


# -- context, IP and clock skew ------------------------------------------------------------------


def test_the_client_ip_fills_context_ip_when_absent() -> None:
    assert normalise({"userId": "u-1", "event": "X"}, client_ip="198.51.100.4")["context"] == {"ip": "198.51.100.4"}


def test_a_sent_context_ip_is_kept() -> None:
    event = normalise({"userId": "u-1", "event": "X", "context": {"ip": "203.0.113.7"}}, client_ip="198.51.100.4")
    assert event["context"]["ip"] == "203.0.113.7"


@given(batch_context=json_objects, event_context=json_objects)
def test_batch_context_is_merged_and_event_keys_win(
    batch_context: dict[str, Any], event_context: dict[str, Any]
) -> None:
    raw = {"type": "track", "userId": "u-1", "event": "X", "context": event_context}
    event = normalise(raw, None, batch_context=batch_context)
    assert event["context"] == {**batch_context, **event_context}


@given(batch_integrations=json_objects, event_integrations=json_objects)
def test_batch_integrations_are_merged_and_event_keys_win(
    batch_integrations: dict[str, Any], event_integrations: dict[str, Any]
) -> None:
    raw = {"type": "track", "userId": "u-1", "event": "X", "integrations": event_integrations}
    event = normalise(raw, None, batch_integrations=batch_integrations)
    assert event["integrations"] == {**batch_integrations, **event_integrations}


@given(original=moments, gap=skews, device_error=skews)
def test_clock_skew_is_corrected_from_the_gap_between_timestamp_and_sent_at(
    original: datetime, gap: timedelta, device_error: timedelta
) -> None:
    # The device's clock is off by device_error; the gap between its two readings is not.
    wrong_original = original + device_error
    wrong_sent = wrong_original + gap
    raw = {"userId": "u-1", "event": "X", "timestamp": iso(wrong_original), "sentAt": iso(wrong_sent)}
    event = normalise(raw)
    assert parse_time(event["timestamp"], "timestamp") == RECEIVED - gap
    assert event["originalTimestamp"] == iso(wrong_original)
    assert event["sentAt"] == iso(wrong_sent)


def test_a_skew_too_large_to_correct_is_refused() -> None:
    error = refusal(
        {"userId": "u-1", "event": "X", "timestamp": "0001-01-01T00:00:00Z", "sentAt": "9999-12-31T23:59:59Z"}
    )
    assert (error.status, error.code) == (400, "invalid_field")
    assert "track.timestamp" in error.message


def test_without_sent_at_the_timestamp_is_trusted() -> None:
    event = normalise({"userId": "u-1", "event": "X", "timestamp": "2026-05-01T10:00:00+02:00"})
    assert event["timestamp"] == event["originalTimestamp"] == "2026-05-01T08:00:00.000Z"


def test_original_timestamp_is_preferred_over_timestamp() -> None:
    raw = {
        "userId": "u-1",
        "event": "X",
        "originalTimestamp": "2026-06-01T13:00:00Z",
        "timestamp": "2020-01-01T00:00:00Z",
        "sentAt": "2026-06-01T13:00:05Z",
    }
    assert normalise(raw)["timestamp"] == "2026-06-01T11:59:55.000Z"


def test_the_batch_sent_at_applies_to_events_without_their_own() -> None:
    raw = {"type": "track", "userId": "u-1", "event": "X", "timestamp": "2026-06-01T14:00:00Z"}
    event = normalise(raw, None, batch_sent_at=datetime(2026, 6, 1, 14, 0, 10, tzinfo=UTC))
    assert event["timestamp"] == "2026-06-01T11:59:50.000Z"


@given(
    raw=st.fixed_dictionaries(
        {"userId": ids, "event": st.text(min_size=1, max_size=50).filter(str.strip), "timestamp": moments.map(iso)},
        optional={
            "properties": json_objects,
            "context": json_objects,
            "integrations": json_objects,
            "sentAt": moments.map(iso),
            "messageId": ids,
        },
    ),
    client_ip=st.none() | st.just("198.51.100.4"),
)
def test_normalising_twice_changes_nothing(raw: dict[str, Any], client_ip: str | None) -> None:
    once = normalise(raw, client_ip=client_ip)
    assert normalise(once, client_ip=client_ip) == once


# -- whole requests ------------------------------------------------------------------------------


def test_a_single_call_becomes_one_event() -> None:
    events = normalise_request({"userId": "u-1"}, endpoint="identify", received_at=RECEIVED, client_ip="127.0.0.1")
    assert [event["type"] for event in events] == ["identify"]
    assert events[0]["context"] == {"ip": "127.0.0.1"}


@pytest.mark.parametrize("endpoint", ["batch", "import"])
def test_a_batch_becomes_its_events_in_order(endpoint: str) -> None:
    body = {
        "batch": [
            {"type": "identify", "userId": "u-1"},
            {"type": "track", "userId": "u-1", "event": "X"},
            {"type": "alias", "previousId": "anon-1", "userId": "u-1"},
        ],
        "writeKey": "wk_secret",
    }
    events = normalise_request(body, endpoint=endpoint, received_at=RECEIVED, client_ip=None)
    assert [event["type"] for event in events] == ["identify", "track", "alias"]
    assert all("writeKey" not in event for event in events)


@pytest.mark.parametrize("body", [[{"userId": "u-1"}], "text", 42, None])
def test_a_body_must_be_an_object(body: Any) -> None:
    error = request_refusal(body, "track")
    assert (error.status, error.code) == (400, "invalid_body")
    assert "object" in error.message


@pytest.mark.parametrize("batch", [None, {"type": "track"}, "[]"])
def test_a_batch_must_be_an_array(batch: Any) -> None:
    error = request_refusal({"batch": batch})
    assert (error.status, error.code) == (400, "missing_field")
    assert "batch" in error.message


def test_an_empty_batch_is_refused() -> None:
    error = request_refusal({"batch": []})
    assert (error.status, error.code) == (400, "invalid_field")
    assert "batch" in error.message


def test_a_batch_may_hold_2500_events_and_no_more() -> None:
    item = {"type": "track", "userId": "u-1", "event": "X"}
    accepted = normalise_request(
        {"batch": [item] * MAX_BATCH_EVENTS}, endpoint="batch", received_at=RECEIVED, client_ip=None
    )
    assert len(accepted) == MAX_BATCH_EVENTS
    error = request_refusal({"batch": [item] * (MAX_BATCH_EVENTS + 1)})
    assert (error.status, error.code) == (413, "batch_too_large")
    assert str(MAX_BATCH_EVENTS) in error.message


@pytest.mark.parametrize(("field", "value"), [("context", []), ("integrations", "all"), ("sentAt", "later")])
def test_batch_level_fields_are_checked(field: str, value: Any) -> None:
    error = request_refusal({"batch": [{"type": "track", "userId": "u-1", "event": "X"}], field: value})
    assert (error.status, error.code) == (400, "invalid_field")
    assert field in error.message


@given(
    size=st.integers(min_value=1, max_value=20),
    data=st.data(),
    bad=st.sampled_from(
        [
            {"type": "track", "userId": "u-1"},
            {"type": "identify"},
            {"type": "alias", "userId": "u-1"},
            {"type": "track", "userId": "u-1", "event": "X", "properties": "p"},
            {"type": "page", "userId": "x" * (MAX_ID_LENGTH + 1)},
            "not an object",
        ]
    ),
)
def test_one_bad_event_refuses_the_batch_naming_its_index(size: int, data: st.DataObject, bad: Any) -> None:
    index = data.draw(st.integers(min_value=0, max_value=size - 1))
    batch: list[Any] = [{"type": "track", "userId": f"u-{n}", "event": "X"} for n in range(size)]
    batch[index] = bad
    error = request_refusal({"batch": batch})
    assert error.status == 400
    assert error.message.startswith(f"batch[{index}]")


def test_the_log_payload_is_the_normalised_events_encoded_once() -> None:
    body = {
        "batch": [
            {"type": "track", "userId": "u-1", "event": "X", "messageId": "m-1"},
            {"type": "page", "anonymousId": "a-1", "messageId": "m-2"},
        ]
    }
    events, payload = normalise_and_encode(body, endpoint="batch", received_at=RECEIVED, client_ip="198.51.100.4")
    assert orjson.loads(payload) == events
    assert payload == encode_events(events)
    assert events == normalise_request(body, endpoint="batch", received_at=RECEIVED, client_ip="198.51.100.4")
