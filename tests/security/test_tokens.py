"""API tokens: argon2 at rest, shown once, expiring, revocable at once, never logged."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest

from accord.security.models import ApiToken
from accord.security.service import authenticate, create_token, revoke_token
from conftest import LiveAccord


def test_only_an_argon2_hash_is_stored(live: LiveAccord) -> None:
    with live.rt.db.unit_of_work() as session:
        created = create_token(session, role="agent")
    with live.rt.db.read() as session:
        row = session.get(ApiToken, created.id)
        assert row is not None
        assert row.token_hash.startswith("$argon2id$")
        assert created.token.split(".", 1)[1] not in row.token_hash
    assert created.token.startswith(f"acc_{created.id}.")


@pytest.mark.parametrize(
    "presented",
    [
        "acc_",
        "acc_tok_0000000000000000.secret",
        "not-a-token",
        "acc_" + "x" * 500,
        "acc_{id}.wrong-secret",
        "{token}x",
    ],
)
def test_wrong_or_malformed_tokens_are_refused(live: LiveAccord, presented: str) -> None:
    with live.rt.db.unit_of_work() as session:
        created = create_token(session, role="admin")
    presented = presented.format(id=created.id, token=created.token)
    with live.rt.db.read() as session:
        assert authenticate(session, presented) is None
    with live.client(headers={"Authorization": f"Bearer {presented}"}) as client:
        answer = client.get("/api/v1/profiles/user_id:1")
    assert answer.status_code == 401
    assert answer.json()["code"] == "unauthorized"


def test_revocation_takes_effect_at_once_even_for_a_verified_token(live: LiveAccord) -> None:
    with live.rt.db.unit_of_work() as session:
        created = create_token(session, role="analyst")
    with live.client(headers={"Authorization": f"Bearer {created.token}"}) as client:
        assert client.get("/api/v1/profiles/user_id:1").status_code == 404  # verified, and remembered
        with live.rt.db.unit_of_work() as session:
            revoke_token(session, token_id=created.id)
        assert client.get("/api/v1/profiles/user_id:1").status_code == 401


def test_an_expired_token_is_refused(live: LiveAccord) -> None:
    with live.rt.db.unit_of_work() as session:
        created = create_token(session, role="analyst", expires_in=timedelta(milliseconds=1))
    with live.rt.db.read() as session:
        assert authenticate(session, created.token) is None


def test_tokens_and_write_keys_never_reach_the_logs(live: LiveAccord, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with live.client(auth=(live.write_key, "")) as client:
        client.post("/v1/track", json={"userId": "u1", "event": "E", "properties": {"email": "ann@example.com"}})
        client.post("/v1/track", json={"userId": "u1"})
    with live.api() as api:
        api.get("/api/v1/profiles/user_id:u1")
    live.wait_processed()
    logged = caplog.text
    for secret in (live.token, live.write_key, "ann@example.com"):
        assert secret not in logged
