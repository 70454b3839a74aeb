"""Recording consent through the REST API and reading state, history, receipts and decisions."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from accord.runtime import Runtime
from consent.world import ConsentWorld, consent_world


@pytest.fixture
def world(rt: Runtime) -> Iterator[ConsentWorld]:
    with consent_world(rt) as made:
        yield made


def test_record_and_read_back(world: ConsentWorld) -> None:
    created = world.given()
    record = created["record"]
    assert record["status"] == "given"
    assert record["seq"] == 1
    assert record["actor"]["type"] == "system"
    assert record["notice"]["sha256"] == world.notice["sha256"]
    assert created["receipt"].count(".") == 2

    state = world.api.get("/api/v1/profiles/user_id:u-1/consents").json()
    assert [(c["purpose"], c["channel"], c["status"]) for c in state["consents"]] == [
        ("marketing.email.newsletter", "email", "given")
    ]
    decision = world.api.get(
        f"/api/v1/profiles/{world.profile_id}/contactable",
        params={"purpose": "marketing.email.newsletter", "channel": "email"},
    ).json()
    assert decision["allowed"] is True
    assert decision["reason"] == "consent_given"

    world.given(status="withdrawn", notice=None)
    decision = world.api.get(
        f"/api/v1/profiles/{world.profile_id}/contactable",
        params={"purpose": "marketing.email.newsletter", "channel": "email"},
    ).json()
    assert decision == {**decision, "allowed": False, "reason": "withdrawn"}

    history = world.api.get(f"/api/v1/profiles/{world.profile_id}/consents/history").json()
    assert [r["status"] for r in history["records"]] == ["given", "withdrawn"]
    assert history["records"][1]["prev"] == history["records"][0]["hash"]
    receipts = world.api.get(f"/api/v1/profiles/{world.profile_id}/consents/receipts").json()
    assert len(receipts["receipts"]) == 2
    verify = world.api.get("/api/v1/consent/verify").json()
    assert verify["ok"] is True
    assert verify["records"] == 2
