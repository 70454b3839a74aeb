"""The official Segment and RudderStack Python SDKs, unmodified, pointed at a live Accord.

Each SDK sends every call type for one person, first anonymous and then identified, and Accord must
stitch them into one profile. Clients are instances (never the modules' global default client), and
their background threads are shut down before each test ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

import pytest
import rudderstack.analytics
import rudderstack.analytics.request
import segment.analytics
import segment.analytics.request

from conftest import LiveAccord

ANONYMOUS_ID = "device-7f3a"
USER_ID = "user-1042"
TRAITS = {"email": "Ann.Lee@Example.com", "name": "Ann Lee", "plan": "pro"}


@contextmanager
def segment_client(live: LiveAccord, **options: Any) -> Iterator[segment.analytics.Client]:
    errors: list[Exception] = []
    client = segment.analytics.Client(
        live.write_key,
        host=live.base_url,
        max_retries=1,
        on_error=lambda error, _batch: errors.append(error),
        **options,
    )
    try:
        yield client
    finally:
        if client.consumers:
            client.shutdown()  # flush the queue, then stop and join the consumer thread
    assert not any(consumer.is_alive() for consumer in client.consumers or ())
    assert errors == []


@contextmanager
def rudderstack_client(live: LiveAccord, **options: Any) -> Iterator[rudderstack.analytics.Client]:
    errors: list[Exception] = []
    # dataPlaneUrl is the module-level name; a Client instance takes it as host.
    client = rudderstack.analytics.Client(
        live.write_key,
        host=live.base_url,
        max_retries=1,
        on_error=lambda error, _batch: errors.append(error),
        **options,
    )
    try:
        yield client
    finally:
        if client.consumers:
            client.shutdown()
    assert not any(consumer.is_alive() for consumer in client.consumers or ())
    assert errors == []


def send_journey(client: Any) -> None:
    """One person's visit: anonymous browsing, sign-up, then calls as the known user."""
    client.page(anonymous_id=ANONYMOUS_ID, category="Marketing", name="Pricing", properties={"path": "/pricing"})
    client.track(anonymous_id=ANONYMOUS_ID, event="Signup Started", properties={"plan": "pro"})
    client.identify(user_id=USER_ID, anonymous_id=ANONYMOUS_ID, traits=TRAITS)
    client.screen(user_id=USER_ID, name="Dashboard", properties={"tab": "overview"})
    client.group(user_id=USER_ID, group_id="acme", traits={"name": "Acme Ltd"})
    client.alias(previous_id=ANONYMOUS_ID, user_id=USER_ID)


def get(live: LiveAccord, path: str, **params: Any) -> Any:
    with live.api() as api:
        response = api.get(path, params=params)
    assert response.status_code == 200, response.text
    return response.json()


def assert_one_stitched_profile(live: LiveAccord) -> None:
    live.wait_processed()
    found = get(live, f"/api/v1/profiles/user_id:{USER_ID}")
    identities = {(identity["type"], identity["value"]) for identity in found["identities"]}
    assert {("user_id", USER_ID), ("anonymous_id", ANONYMOUS_ID), ("email", "ann.lee@example.com")} <= identities
    assert found["traits"] == TRAITS
    assert found["counts"] == {
        "types": {"page": 1, "track": 1, "identify": 1, "screen": 1, "group": 1, "alias": 1},
        "events": {"Signup Started": 1},
    }
    for ref in (f"anonymous_id:{ANONYMOUS_ID}", "email:ann.lee@example.com"):
        assert get(live, f"/api/v1/profiles/{quote(ref, safe=':@')}")["id"] == found["id"]

    events = get(live, f"/api/v1/profiles/user_id:{USER_ID}/events")["data"]
    assert sorted(event["type"] for event in events) == sorted(found["counts"]["types"])
    assert len({event["message_id"] for event in events}) == len(events)
    by_type = {event["type"]: event for event in events}
    assert by_type["track"]["event"] == "Signup Started"
    assert by_type["track"]["properties"] == {"plan": "pro"}
    assert by_type["page"]["event"] == "Pricing"
    assert by_type["screen"]["event"] == "Dashboard"
    assert all(event["context"]["library"]["name"] == "analytics-python" for event in events)
    assert all(event["context"]["ip"] == "127.0.0.1" for event in events)


# -- Segment: segment-analytics-python ------------------------------------------------------------


def test_segment_sdk_in_sync_mode(live: LiveAccord) -> None:
    with segment_client(live, sync_mode=True) as client:
        send_journey(client)
    assert_one_stitched_profile(live)


def test_segment_sdk_batching_in_the_background_with_gzip(live: LiveAccord) -> None:
    with segment_client(live, gzip=True, upload_interval=0.1) as client:
        send_journey(client)
        client.flush()
    assert_one_stitched_profile(live)


def test_segment_sdk_sees_accords_error_body(live: LiveAccord) -> None:
    client = segment.analytics.Client("wk_nobody", host=live.base_url, sync_mode=True)
    with pytest.raises(segment.analytics.request.APIError) as caught:
        client.track(user_id=USER_ID, event="Signup Started")
    assert (caught.value.status, caught.value.code) == (401, "unauthorized")
    assert "write key" in caught.value.message


# -- RudderStack: rudder-sdk-python ---------------------------------------------------------------


def test_rudderstack_sdk_batching_in_the_background(live: LiveAccord) -> None:
    with rudderstack_client(live, upload_interval=0.1) as client:
        assert client.gzip  # the SDK's default
        send_journey(client)
        client.flush()
    assert_one_stitched_profile(live)


def test_rudderstack_sdk_in_sync_mode(live: LiveAccord) -> None:
    with rudderstack_client(live, sync_mode=True) as client:
        send_journey(client)
    assert_one_stitched_profile(live)


def test_rudderstack_sdk_sees_accords_error_body(live: LiveAccord) -> None:
    client = rudderstack.analytics.Client("wk_nobody", host=live.base_url, sync_mode=True)
    with pytest.raises(rudderstack.analytics.request.APIError) as caught:
        client.track(user_id=USER_ID, event="Signup Started")
    assert (caught.value.status, caught.value.code) == (401, "unauthorized")
    assert "write key" in caught.value.message
