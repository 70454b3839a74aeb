"""Console test helpers: users, logging in through the real form, reading tokens out of pages."""

from __future__ import annotations

import re
import uuid
from typing import Any

import httpx

from accord.consent import catalogue
from accord.db.base import utcnow
from accord.runtime import Runtime
from accord.security import users
from conftest import LiveAccord

PASSWORD = "correct horse battery staple"
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def make_user(rt: Runtime, role: str, *, email: str | None = None, password: str = PASSWORD) -> str:
    address = email or f"{role}-{uuid.uuid4().hex[:6]}@staff.example"
    with rt.db.unit_of_work() as session:
        users.create_user(session, email=address, role=role, password=password, now=utcnow())
    return address


def csrf_of(html: str) -> str:
    found = _CSRF.search(html)
    assert found, "the page has no CSRF field"
    return found.group(1)


def login(client: httpx.Client, email: str, password: str = PASSWORD, *, next_path: str = "") -> httpx.Response:
    form = client.get("/console/login")
    return client.post(
        "/console/login",
        data={"email": email, "password": password, "csrf": csrf_of(form.text), "next": next_path},
    )


def logged_in(client: httpx.Client, rt: Runtime, role: str) -> str:
    """Log a new user of `role` in on `client`; the session's CSRF token."""
    answer = login(client, make_user(rt, role))
    assert answer.status_code == 303, answer.text
    return csrf_of(client.get("/console").text)


def track(live: LiveAccord, events: list[dict[str, Any]]) -> None:
    with live.client(auth=(live.write_key, "")) as client:
        answer = client.post("/v1/batch", json={"batch": events})
        assert answer.status_code == 200, answer.text
    live.wait_processed()


def profile_id(live: LiveAccord, ref: str) -> str:
    with live.api() as api:
        answer = api.get(f"/api/v1/profiles/{ref}")
        assert answer.status_code == 200, answer.text
        return str(answer.json()["id"])


def catalogue_with_marketing(live: LiveAccord) -> None:
    now = utcnow()
    with live.rt.db.unit_of_work() as session:
        catalogue.put_purpose(
            session,
            key="marketing",
            name="Marketing",
            description="",
            legal_basis="consent",
            expires_after_days=None,
            now=now,
        )
        catalogue.add_notice_version(
            session, key="privacy", language="en", title="Privacy", text="v1", purposes=["marketing"], url=None, now=now
        )
