"""The admin's configuration pages: sources and write keys, users and tokens, the consent catalogue, with
hostile and duplicate input on each form. Agents are kept out (and the role walk checks every page)."""

from __future__ import annotations

import re

import httpx
import pytest

from conftest import LiveAccord
from console.helpers import PASSWORD, logged_in, login


def _secret(html: str, field_id: str) -> str:
    found = re.search(rf'id="{field_id}" readonly value="([^"]+)"', html)
    assert found, html[:2000]
    return found.group(1)


def test_an_admin_creates_a_source_whose_key_is_shown_once_and_works(live: LiveAccord) -> None:
    with live.client() as client:
        csrf = logged_in(client, live.rt, "admin")
        answer = client.post("/console/admin/sources", data={"name": "kiosk", "csrf": csrf})
        assert answer.status_code == 200
        key = _secret(answer.text, "new-key")
        assert key not in client.get("/console/admin/sources").text  # once
        with httpx.Client(base_url=live.base_url, auth=(key, "")) as tracker:
            assert tracker.post("/v1/track", json={"userId": "1", "event": "E"}).status_code == 200
        source_id = re.search(r"<td>kiosk</td><td><code>([^<]+)</code>", client.get("/console/admin/sources").text)
        assert source_id is not None
        disabled = client.post(f"/console/admin/sources/{source_id.group(1)}", data={"enabled": "no", "csrf": csrf})
        assert disabled.status_code == 303
        assert "<td>kiosk</td>" in client.get("/console/admin/sources?done=source").text
        for name, status in (("kiosk", 422), ("", 422), ("x" * 201, 422), ("a\x00", 422)):
            assert client.post("/console/admin/sources", data={"name": name, "csrf": csrf}).status_code == status
        assert client.post("/console/admin/sources/src_nope", data={"enabled": "no", "csrf": csrf}).status_code == 404


def test_an_admin_manages_users_who_can_then_log_in(live: LiveAccord) -> None:
    with live.client() as client:
        csrf = logged_in(client, live.rt, "admin")
        made = client.post(
            "/console/admin/users",
            data={"email": "New@Staff.Example", "role": "agent", "password": PASSWORD, "csrf": csrf},
        )
        assert made.status_code == 303
        page = client.get("/console/admin/users").text
        assert "new@staff.example" in page
        assert "$argon2" not in page
        user_id = re.search(r'action="/console/admin/users/([^"]+)"', page)
        assert user_id is not None
        for bad in (
            {"email": "new@staff.example", "role": "agent", "password": PASSWORD},
            {"email": "x@staff.example", "role": "root", "password": PASSWORD},
            {"email": "x@staff.example", "role": "agent", "password": "short"},
            {"email": "not an email", "role": "agent", "password": PASSWORD},
        ):
            assert client.post("/console/admin/users", data={**bad, "csrf": csrf}).status_code == 422
        change = f"/console/admin/users/{user_id.group(1)}"
        assert client.post(change, data={"action": "role", "role": "analyst", "csrf": csrf}).status_code == 303
        assert client.post(change, data={"action": "role", "role": "god", "csrf": csrf}).status_code == 422
        assert client.post(change, data={"action": "explode", "csrf": csrf}).status_code == 422
        assert client.post("/console/admin/users/usr_nope", data={"action": "disable", "csrf": csrf}).status_code == 404
        with live.client() as newcomer:
            assert login(newcomer, "new@staff.example").status_code == 303
            assert "analyst" in newcomer.get("/console").text
            assert client.post(change, data={"action": "disable", "csrf": csrf}).status_code == 303
            assert newcomer.get("/console").status_code == 303  # their session ended at once


def test_an_admin_cannot_lock_themselves_out(live: LiveAccord) -> None:
    with live.client() as client:
        csrf = logged_in(client, live.rt, "admin")
        page = client.get("/console/admin/users").text
        assert 'action="/console/admin/users/' not in page  # no buttons on one's own row
        from accord.security import users

        with live.rt.db.read() as session:
            me = next(u for u in users.list_users(session) if u.role == "admin")
        answer = client.post(f"/console/admin/users/{me.id}", data={"action": "disable", "csrf": csrf})
        assert answer.status_code == 409
        assert client.get("/console").status_code == 200


def test_an_admin_creates_and_revokes_api_tokens(live: LiveAccord) -> None:
    with live.client() as client:
        csrf = logged_in(client, live.rt, "admin")
        made = client.post("/console/admin/tokens", data={"role": "analyst", "description": "BI", "csrf": csrf})
        assert made.status_code == 201
        token = _secret(made.text, "new-token")
        with httpx.Client(base_url=live.base_url, headers={"Authorization": f"Bearer {token}"}) as api:
            assert api.get("/api/v1/consent/purposes").status_code == 200
            token_id = token.removeprefix("acc_").split(".")[0]
            assert client.post(f"/console/admin/tokens/{token_id}/revoke", data={"csrf": csrf}).status_code == 303
            assert api.get("/api/v1/consent/purposes").status_code == 401
        assert token not in client.get("/console/admin/users").text
        for bad in ({"role": "root"}, {"role": "agent", "expires_days": "0"}, {"role": "agent", "expires_days": "x"}):
            assert client.post("/console/admin/tokens", data={**bad, "csrf": csrf}).status_code == 422
        assert client.post("/console/admin/tokens/tok_nope/revoke", data={"csrf": csrf}).status_code == 404


def test_an_admin_edits_the_consent_catalogue(live: LiveAccord) -> None:
    with live.client() as client:
        csrf = logged_in(client, live.rt, "admin")
        purpose = {
            "key": "marketing.email",
            "name": "Email marketing",
            "legal_basis": "consent",
            "expires_after_days": "365",
            "channels": "email, sms",
        }
        assert client.post("/console/admin/consent/purposes", data={**purpose, "csrf": csrf}).status_code == 303
        assert (
            client.post(
                "/console/admin/consent/channels", data={"key": "whatsapp", "name": "WhatsApp", "csrf": csrf}
            ).status_code
            == 303
        )
        notice = {
            "key": "privacy",
            "language": "en",
            "title": "Privacy",
            "text": "We write.",
            "purposes": "marketing.email",
        }
        assert client.post("/console/admin/consent/notices", data={**notice, "csrf": csrf}).status_code == 303
        assert (
            client.post("/console/admin/consent/notices", data={**notice, "text": "v2", "csrf": csrf}).status_code
            == 303
        )
        page = client.get("/console/admin/consent").text
    assert "Email marketing" in page
    assert "365 days" in page
    assert "WhatsApp" in page
    with live.api() as api:
        purposes = {p["key"]: p for p in api.get("/api/v1/consent/purposes").json()["purposes"]}
        notices = api.get("/api/v1/consent/notices").json()["notices"]
    assert purposes["marketing.email"]["channels"] == ["email", "sms"]
    assert [(n["key"], n["version"]) for n in notices] == [("privacy", 1), ("privacy", 2)]


@pytest.mark.parametrize(
    ("path", "form", "status"),
    [
        ("purposes", {"key": "Bad Key", "name": "x", "legal_basis": "consent"}, 422),
        ("purposes", {"key": "sale_sharing", "name": "x", "legal_basis": "consent"}, 422),
        ("purposes", {"key": "ok", "name": "x", "legal_basis": "because"}, 422),
        ("purposes", {"key": "ok", "name": "", "legal_basis": "consent"}, 422),
        ("purposes", {"key": "ok", "name": "x", "legal_basis": "consent", "expires_after_days": "-1"}, 422),
        ("purposes", {"key": "ok", "name": "x", "legal_basis": "consent", "expires_after_days": "soon"}, 422),
        ("purposes", {"key": "ok", "name": "x", "legal_basis": "consent", "channels": "pigeon"}, 422),
        ("purposes", {"key": "ok", "name": "a\x00b", "legal_basis": "consent"}, 422),
        ("channels", {"key": "email", "name": "Email again"}, 409),
        ("channels", {"key": "Not OK", "name": "x"}, 422),
        ("notices", {"key": "privacy", "title": "T", "text": "x", "purposes": "nope"}, 422),
        ("notices", {"key": "privacy", "title": "T", "text": "", "purposes": "sale_sharing"}, 422),
        ("notices", {"key": "privacy", "title": "T", "text": "x", "purposes": ""}, 422),
        (
            "notices",
            {"key": "privacy", "language": "english!", "title": "T", "text": "x", "purposes": "sale_sharing"},
            422,
        ),
        (
            "notices",
            {"key": "privacy", "title": "T", "text": "x", "purposes": "sale_sharing", "url": "javascript:x"},
            422,
        ),
    ],
)
def test_bad_catalogue_changes_are_refused(live: LiveAccord, path: str, form: dict[str, str], status: int) -> None:
    with live.client() as client:
        csrf = logged_in(client, live.rt, "admin")
        answer = client.post(f"/console/admin/consent/{path}", data={**form, "csrf": csrf})
    assert answer.status_code == status
    with live.api() as api:
        assert api.get("/api/v1/consent/notices").json()["notices"] == []
        assert "ok" not in {p["key"] for p in api.get("/api/v1/consent/purposes").json()["purposes"]}


def test_a_long_notice_fits_in_a_form(live: LiveAccord) -> None:
    with live.client() as client:
        csrf = logged_in(client, live.rt, "admin")
        notice = {"key": "terms", "title": "Terms", "text": "word " * 30_000, "purposes": "sale_sharing", "csrf": csrf}
        assert client.post("/console/admin/consent/notices", data=notice).status_code == 303
        huge = {**notice, "text": "x" * 600_000}
        assert client.post("/console/admin/consent/notices", data=huge).status_code == 413


def test_agents_get_403_on_every_configuration_page(live: LiveAccord) -> None:
    with live.client() as client:
        csrf = logged_in(client, live.rt, "agent")
        for path in ("/console/admin", "/console/admin/sources", "/console/admin/users", "/console/admin/consent"):
            answer = client.get(path)
            assert answer.status_code == 403
            assert "Not for your role" in answer.text
        assert client.post("/console/admin/sources", data={"name": "sneaky", "csrf": csrf}).status_code == 403
        assert "Configuration" not in client.get("/console").text  # not even offered
