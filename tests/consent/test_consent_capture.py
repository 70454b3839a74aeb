"""Consent through the tracking API: a `Consent Updated` event from a banner or a CMP, TCF strings, the
Global Privacy Control signal; bad consent events go to quarantine with their reason and replay once fixed."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from accord.ingest import quarantine
from accord.runtime import Runtime
from accord.security.datakeys import DataKeys
from consent.tcf import tc_string
from consent.world import ConsentWorld, consent_world

NOTICE = {"key": "privacy", "version": 1, "language": "en"}


@pytest.fixture
def world(rt: Runtime) -> Iterator[ConsentWorld]:
    with consent_world(rt) as made:
        yield made


def track(world: ConsentWorld, properties: dict[str, Any], headers: dict[str, str] | None = None, **event: Any) -> str:
    message_id = event.pop("messageId", None) or f"m-{uuid.uuid4().hex[:12]}"
    body = {
        "userId": "u-1",
        "event": "Consent Updated",
        "properties": properties,
        "messageId": message_id,
        "context": {"ip": "203.0.113.9", "userAgent": "Mozilla/5.0 (test)"},
        **event,
    }
    with world.live.client(auth=(world.live.write_key, ""), headers=headers or {}) as client:
        response = client.post("/v1/track", json=body)
    assert response.status_code == 200, response.text
    world.live.wait_processed()
    return message_id


def history(world: ConsentWorld, ref: str | None = None) -> list[dict[str, Any]]:
    response = world.api.get(f"/api/v1/profiles/{ref or world.profile_id}/consents/history")
    assert response.status_code == 200, response.text
    return list(response.json()["records"])


def decision(world: ConsentWorld, purpose: str, channel: str, ref: str | None = None) -> dict[str, Any]:
    response = world.api.get(
        f"/api/v1/profiles/{ref or world.profile_id}/contactable", params={"purpose": purpose, "channel": channel}
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def waiting(world: ConsentWorld) -> list[tuple[str, str]]:
    with world.live.rt.db.read() as session:
        keys = DataKeys.of(session)
        return [(row.message_id, quarantine.error_of(keys, row)) for row in quarantine.waiting(session)]


def test_a_banner_statement_is_recorded_with_its_evidence(world: ConsentWorld) -> None:
    message_id = track(world, {"purpose": "marketing.email", "channel": "email", "status": "given", "notice": NOTICE})
    (record,) = history(world)
    assert (record["purpose"], record["channel"], record["status"]) == ("marketing.email", "email", "given")
    assert record["method"] == "banner"
    assert record["actor"] == {"type": "customer", "id": None}
    assert record["source"] == world.live.source_id
    assert record["evidence"] == {"ip": "203.0.113.9", "user_agent": "Mozilla/5.0 (test)", "message_id": message_id}
    assert decision(world, "marketing.email", "email")["allowed"] is True
    # The event itself is on the timeline too.
    events = world.api.get(f"/api/v1/profiles/{world.profile_id}/events", params={"event": "Consent Updated"}).json()
    assert [e["message_id"] for e in events["data"]] == [message_id]


def test_defaults_and_a_list_of_statements(world: ConsentWorld) -> None:
    track(
        world,
        {
            "consents": [
                {"purpose": "marketing", "status": "given", "notice": NOTICE},
                {"purpose": "marketing.email", "channel": "email", "status": "refused", "method": "form"},
                {"purpose": "analytics", "status": "withdrawn"},
            ]
        },
    )
    records = history(world)
    assert [(r["purpose"], r["channel"], r["status"], r["method"]) for r in records] == [
        ("marketing", "web", "given", "banner"),
        ("marketing.email", "email", "refused", "form"),
        ("analytics", "web", "withdrawn", "banner"),
    ]
    assert decision(world, "marketing", "web")["allowed"] is True
    assert decision(world, "marketing.email.newsletter", "email")["reason"] == "refused"
    assert decision(world, "analytics", "web")["reason"] == "objected"


def test_a_resent_event_records_once(world: ConsentWorld) -> None:
    first = track(world, {"purpose": "marketing", "status": "given", "notice": NOTICE})
    track(world, {"purpose": "marketing", "status": "given", "notice": NOTICE}, messageId=first)
    assert len(history(world)) == 1


def test_an_anonymous_visitor_keeps_their_consent_after_logging_in(world: ConsentWorld) -> None:
    track(world, {"purpose": "marketing", "status": "given", "notice": NOTICE}, userId=None, anonymousId="visitor-9")
    before = world.api.get("/api/v1/profiles/anonymous_id:visitor-9").json()["id"]
    assert before != world.profile_id
    with world.live.client(auth=(world.live.write_key, "")) as client:
        assert client.post("/v1/identify", json={"userId": "u-1", "anonymousId": "visitor-9"}).status_code == 200
    world.live.wait_processed()
    assert decision(world, "marketing", "web", ref="user_id:u-1")["allowed"] is True
    assert [r["profile_id"] for r in history(world, "user_id:u-1")] == [before]


def test_a_tc_string_alone_is_kept_verbatim_and_decoded(world: ConsentWorld) -> None:
    granting, refusing = tc_string({1, 3, 4}, vendors={5, 10}), tc_string(set())
    track(world, {"tcf": granting})
    track(world, {"tcf": refusing, "channel": "in_app"})
    first, second = history(world)
    assert (first["purpose"], first["channel"], first["status"], first["method"]) == ("iab_tcf", "web", "given", "tcf")
    assert first["tcf"] == granting
    decoded = first["tcf_decoded"]
    assert decoded["purposes_consent"] == [1, 3, 4]
    assert decoded["vendors_consent"] == [5, 10]
    assert (decoded["consent_language"], decoded["publisher_cc"], decoded["cmp_id"]) == ("EN", "DE", 7)
    assert (second["channel"], second["status"]) == ("in_app", "refused")
    assert second["tcf_decoded"]["purposes_consent"] == []


@pytest.mark.parametrize(
    ("properties", "reason"),
    [
        ({"purpose": "no.such.purpose", "status": "given"}, "unknown_purpose"),
        ({"purpose": "marketing", "channel": "carrier_pigeon", "status": "given", "notice": NOTICE}, "channel"),
        ({"purpose": "marketing", "status": "given"}, "notice"),
        ({"purpose": "marketing", "status": "maybe", "notice": NOTICE}, "status"),
        ({"purpose": "marketing"}, "status is required"),
        ({"status": "given"}, "needs a purpose"),
        ({"consents": []}, "list of 1 to 50"),
        ({"consents": [{"purpose": "marketing", "status": "refused"}] * 51}, "list of 1 to 50"),
        ({"consents": "marketing"}, "list of 1 to 50"),
        ({"purpose": 7, "status": "given"}, "must be a string"),
        ({"purpose": "marketing", "status": "refused", "occurred_at": "yesterday"}, "ISO-8601"),
        ({"purpose": "marketing", "status": "refused", "occurred_at": "2026-01-01T00:00:00"}, "time zone"),
        ({"purpose": "marketing", "status": "given", "notice": {"key": "privacy"}}, "notice must be"),
        ({"tcf": "not-a-tc-string"}, "TCF"),
        ({"tcf": "C" * 5000}, "TC string"),
    ],
)
def test_a_bad_consent_event_waits_in_quarantine(world: ConsentWorld, properties: dict[str, Any], reason: str) -> None:
    message_id = track(world, properties)
    assert history(world) == []
    (quarantined,) = waiting(world)
    assert quarantined[0] == message_id
    assert reason.lower() in quarantined[1].lower(), quarantined[1]


def test_a_quarantined_consent_event_replays_once_the_catalogue_has_it(world: ConsentWorld) -> None:
    good = track(world, {"purpose": "marketing", "status": "given", "notice": NOTICE})
    bad = track(world, {"purpose": "loyalty", "status": "refused"})
    assert [m for m, _ in waiting(world)] == [bad]
    assert len(history(world)) == 1
    put = world.api.put("/api/v1/consent/purposes/loyalty", json={"name": "Loyalty", "legal_basis": "consent"})
    assert put.status_code in (200, 201), put.text
    assert quarantine.replay(world.live.rt.db, world.live.rt.log) == 1
    world.live.wait_processed()
    assert waiting(world) == []
    assert [(r["purpose"], r["status"]) for r in history(world)] == [("marketing", "given"), ("loyalty", "refused")]
    assert good != bad


def test_the_gpc_header_is_recorded_once_as_an_opt_out_of_sale(world: ConsentWorld) -> None:
    for _ in range(3):
        with world.live.client(auth=(world.live.write_key, ""), headers={"Sec-GPC": "1"}) as client:
            response = client.post("/v1/page", json={"userId": "u-1", "name": "Home"})
        assert response.status_code == 200, response.text
    world.live.wait_processed()
    (record,) = history(world)
    assert (record["purpose"], record["channel"], record["status"], record["method"]) == (
        "sale_sharing",
        "all",
        "refused",
        "gpc",
    )
    assert record["evidence"]["signal"] == "Sec-GPC: 1"
    for channel in ("web", "email"):
        assert decision(world, "sale_sharing", channel) == {
            **decision(world, "sale_sharing", channel),
            "allowed": False,
            "reason": "refused",
        }
    events = world.api.get(f"/api/v1/profiles/{world.profile_id}/events", params={"type": "page"}).json()["data"]
    assert len(events) == 3


@pytest.mark.parametrize("value", ["0", "yes", "", "1, 1"])
def test_other_gpc_values_are_not_a_signal(world: ConsentWorld, value: str) -> None:
    with world.live.client(auth=(world.live.write_key, ""), headers={"Sec-GPC": value}) as client:
        assert client.post("/v1/page", json={"userId": "u-1", "name": "Home"}).status_code == 200
    world.live.wait_processed()
    assert history(world) == []
