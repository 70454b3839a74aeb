"""Unmerge keeps consent with the person it belongs to: a record follows the event that made it."""

from __future__ import annotations

from sqlalchemy import text

from conftest import LiveAccord


def send(live: LiveAccord, events: list[dict[str, object]]) -> None:
    with live.client(auth=(live.write_key, "")) as client:
        assert client.post("/v1/batch", json={"batch": events}).status_code == 200
    live.wait_processed()


def consents(live: LiveAccord, ref: str) -> list[tuple[str, str, str]]:
    with live.api() as api:
        body = api.get(f"/api/v1/profiles/{ref}/consents").json()
    return [(c["purpose"], c["channel"], c["status"]) for c in body["consents"]]


def history_ids(live: LiveAccord, ref: str) -> list[str]:
    with live.api() as api:
        return [r["id"] for r in api.get(f"/api/v1/profiles/{ref}/consents/history").json()["records"]]


def test_consent_given_after_a_wrong_merge_goes_back_with_its_event(live: LiveAccord) -> None:
    send(
        live,
        [
            {
                "type": "identify",
                "userId": "ann",
                "traits": {"email": "shared@example.com"},
                "timestamp": "2026-05-01T10:00:00Z",
            },
            {"type": "track", "anonymousId": "bobs-phone", "event": "Viewed", "timestamp": "2026-05-01T11:00:00Z"},
            {
                "type": "identify",
                "anonymousId": "bobs-phone",
                "traits": {"email": "shared@example.com"},
                "timestamp": "2026-05-01T12:00:00Z",
            },
        ],
    )
    # After the merge, Bob's phone sends a Global Privacy Control signal: recorded for the merged profile.
    send(
        live,
        [
            {
                "type": "page",
                "anonymousId": "bobs-phone",
                "name": "Home",
                "context": {"gpc": True},
                "timestamp": "2026-05-01T13:00:00Z",
            }
        ],
    )
    assert consents(live, "user_id:ann") == [("sale_sharing", "all", "refused")]
    with live.api() as api:
        merge = api.get("/api/v1/profiles/user_id:ann/merges").json()["data"][0]
        assert api.post("/api/v1/profiles/user_id:ann/unmerge", json={"merge_id": merge["id"]}).status_code == 200
    # The GPC page view is Bob's event, so the refusal is Bob's, not Ann's.
    assert consents(live, "anonymous_id:bobs-phone") == [("sale_sharing", "all", "refused")]
    assert consents(live, "user_id:ann") == []
    assert len(history_ids(live, "anonymous_id:bobs-phone")) == 1
    assert history_ids(live, "user_id:ann") == []
    with live.api() as api:
        receipts = api.get("/api/v1/profiles/anonymous_id:bobs-phone/consents/receipts").json()
        assert len(receipts["receipts"]) == 1
        bob = api.get("/api/v1/profiles/anonymous_id:bobs-phone").json()["id"]
        (record,) = api.get("/api/v1/profiles/anonymous_id:bobs-phone/consents/history").json()["records"]
        assert record["evidence"]["signal"] == "Sec-GPC: 1"
        assert api.get("/api/v1/consent/verify").json()["ok"] is True
    # Its evidence went with it: sealed again under Bob's data key, so that erasing Bob shreds it.
    with live.rt.db.engine.connect() as connection:
        stored = connection.execute(
            text("SELECT body FROM consent_evidence WHERE record_id = :id"), {"id": record["id"]}
        ).scalar_one()
    assert bytes(stored).startswith(f"e1.{bob}.".encode())
