"""Shared setup for the consent tests: a live Accord with a small catalogue and one known person."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from accord.runtime import Runtime
from conftest import LiveAccord, running_accord


@dataclass
class ConsentWorld:
    live: LiveAccord
    api: httpx.Client
    profile_id: str
    notice: dict[str, Any]

    def record(self, ref: str | None = None, **body: Any) -> httpx.Response:
        return self.api.post(f"/api/v1/profiles/{ref or self.profile_id}/consents", json=body)

    def given(
        self, purpose: str = "marketing.email.newsletter", channel: str = "email", **extra: Any
    ) -> dict[str, Any]:
        body = {
            "purpose": purpose,
            "channel": channel,
            "status": "given",
            "method": "form",
            "notice": {"key": "privacy", "version": 1, "language": "en"},
            **extra,
        }
        response = self.record(**body)
        assert response.status_code == 201, response.text
        return dict(response.json())


def setup_catalogue(api: httpx.Client) -> dict[str, Any]:
    for key, basis, channels in (
        ("marketing", "consent", ["email", "sms"]),
        ("marketing.email", "consent", ["email"]),
        ("marketing.email.newsletter", "consent", ["email"]),
        ("service.billing", "contract", []),
        ("analytics", "legitimate_interest", ["web"]),
    ):
        response = api.put(
            f"/api/v1/consent/purposes/{key}", json={"name": key.title(), "legal_basis": basis, "channels": channels}
        )
        assert response.status_code == 200, response.text
    notice = api.post(
        "/api/v1/consent/notices",
        json={
            "key": "privacy",
            "language": "en",
            "title": "Privacy notice",
            "text": "We use your email address to send the newsletter you asked for.",
            "purposes": ["marketing"],
            "url": "https://example.com/privacy",
        },
    )
    assert notice.status_code == 201, notice.text
    return dict(notice.json())


def identify(live: LiveAccord, user_id: str, **traits: Any) -> str:
    with live.client() as client:
        response = client.post("/v1/identify", auth=(live.write_key, ""), json={"userId": user_id, "traits": traits})
        assert response.status_code == 200, response.text
    live.wait_processed()
    with live.api() as api:
        profile = api.get(f"/api/v1/profiles/user_id:{user_id}")
        assert profile.status_code == 200, profile.text
        return str(profile.json()["id"])


@contextmanager
def consent_world(rt: Runtime) -> Iterator[ConsentWorld]:
    """Each test module's `world` fixture: `with consent_world(rt) as world: yield world`."""
    with running_accord(rt) as live, live.api() as api:
        notice = setup_catalogue(api)
        profile_id = identify(live, "u-1", email="ann@example.com")
        yield ConsentWorld(live=live, api=api, profile_id=profile_id, notice=notice)
