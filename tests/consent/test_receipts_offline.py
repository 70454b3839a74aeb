"""A receipt verifies offline with a standard JOSE library and the published keys, and nothing of Accord's.

This module imports no `accord` code on purpose: it is what a customer, an auditor or a regulator would do
with a receipt and the public JWKS."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from joserfc import jws
from joserfc.errors import BadSignatureError
from joserfc.jwk import KeySet

from consent.world import ConsentWorld, consent_world


@pytest.fixture
def world(rt: Any) -> Iterator[ConsentWorld]:
    with consent_world(rt) as made:
        yield made


def published_keys(base_url: str) -> KeySet:
    with httpx.Client(base_url=base_url) as anyone:  # no credentials: the keys are public
        answer = anyone.get("/.well-known/jwks.json")
    assert answer.status_code == 200
    keys = answer.json()
    assert all(key["kty"] == "OKP" and key["crv"] == "Ed25519" and "d" not in key for key in keys["keys"])
    return KeySet.import_key_set(keys)


def test_a_receipt_verifies_with_joserfc_and_the_jwks(world: ConsentWorld) -> None:
    created = world.given(evidence={"reference": "form-1"})
    keys = published_keys(world.live.base_url)
    verified = jws.deserialize_compact(created["receipt"], keys, algorithms=["Ed25519"])
    assert verified.headers()["typ"] == "accord-consent-receipt+jwt"
    claims: dict[str, Any] = json.loads(verified.payload)
    record = created["record"]
    assert claims["version"] == "KI-CR-v1.1.0"
    assert claims["consentReceiptID"] == claims["jti"] == record["id"]
    assert claims["piiPrincipalId"] == record["profile_id"]
    assert claims["status"] == "given"
    assert claims["ledger"] == {"seq": record["seq"], "hash": record["hash"], "prev": record["prev"]}
    (service,) = claims["services"]
    assert service["service"] == "email"
    (purpose,) = service["purposes"]
    assert purpose["purpose"] == "marketing.email.newsletter"
    assert purpose["legalBasis"] == "dpv:Consent"
    assert claims["notice"]["sha256"] == world.notice["sha256"]
    assert claims["policyUrl"] == "https://example.com/privacy"
    # No personal data in the receipt: the evidence is only in the ledger's evidence table.
    assert "form-1" not in verified.payload.decode()


def test_every_listed_receipt_verifies_and_a_changed_one_does_not(world: ConsentWorld) -> None:
    world.given()
    world.given(status="withdrawn", notice=None)
    keys = published_keys(world.live.base_url)
    listed = world.api.get(f"/api/v1/profiles/{world.profile_id}/consents/receipts").json()["receipts"]
    assert len(listed) == 2
    for item in listed:
        jws.deserialize_compact(item["receipt"], keys, algorithms=["Ed25519"])
    header, payload, signature = listed[0]["receipt"].split(".")
    altered = payload[:-2] + ("AA" if not payload.endswith("AA") else "BB")
    with pytest.raises(BadSignatureError):
        jws.deserialize_compact(f"{header}.{altered}.{signature}", keys, algorithms=["Ed25519"])
