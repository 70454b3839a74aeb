"""Console test helpers: users, logging in through the real form, reading tokens out of pages."""

from __future__ import annotations

import re
import uuid

import httpx

from accord.db.base import utcnow
from accord.runtime import Runtime
from accord.security import users

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
