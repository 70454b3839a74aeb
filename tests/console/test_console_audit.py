"""What people do in the console lands in the audit trail (who, what, which profile, from where; never an
email or a note's text), and a person's console data goes with them on erasure and comes with an export."""

from __future__ import annotations

import json

from accord.audit.service import Filters, records
from accord.console.models import Note, RecentView
from conftest import LiveAccord
from console.helpers import PASSWORD, catalogue_with_marketing, csrf_of, logged_in, login, make_user, profile_id, track


def trail(live: LiveAccord) -> list[dict[str, object]]:
    with live.rt.db.read() as session:
        return [entry.body for entry in reversed(records(session, Filters(), limit=1000))]


def test_console_actions_are_audited_without_personal_data(live: LiveAccord) -> None:
    track(live, [{"type": "identify", "userId": "u-1", "traits": {"email": "ann@example.com", "name": "Ann Lee"}}])
    person = profile_id(live, "user_id:u-1")
    catalogue_with_marketing(live)
    email = make_user(live.rt, "agent")
    with live.client() as client:
        assert login(client, email, "wrong password").status_code == 401
        assert login(client, "nobody@example.com", "wrong password").status_code == 401
        assert login(client, email).status_code == 303
        csrf = csrf_of(client.get("/console").text)
        assert client.post("/console/search", data={"q": "ann@example.com", "csrf": csrf}).status_code == 200
        assert client.get(f"/console/customers/{person}").status_code == 200
        consent = {
            "purpose": "marketing",
            "channel": "email",
            "status": "given",
            "method": "verbal",
            "notice": "privacy|en|1",
            "reference": "CALL-7",
            "csrf": csrf,
        }
        assert client.post(f"/console/customers/{person}/consents", data=consent).status_code == 303
        assert (
            client.post(f"/console/customers/{person}/notes", data={"text": "Secret note", "csrf": csrf}).status_code
            == 303
        )
        correction = {"name": "name", "value": "Ann Smith", "csrf": csrf}
        assert client.post(f"/console/customers/{person}/traits", data=correction).status_code == 303
        assert client.post("/console/logout", data={"csrf": csrf}).status_code == 303
    live.wait_processed()
    entries = [e for e in trail(live) if e["actor_type"] in {"user", "anonymous"}]
    actions = [e["action"] for e in entries]
    assert actions == [
        "console.login_failed",
        "console.login_failed",
        "console.login",
        "profile.search",
        "profile.read",
        "consent.record",
        "profile.note.add",
        "profile.trait.correct",
        "console.logout",
    ]
    by_action = {e["action"]: e for e in entries}
    assert entries[1]["target_id"] is None  # an unknown email names no account
    assert by_action["profile.read"]["target_id"] == person
    assert by_action["profile.search"]["details"] == {"profile_ids": [person]}
    assert by_action["consent.record"]["details"]["method"] == "verbal"  # type: ignore[index]
    assert by_action["console.login"]["actor_role"] == "agent"
    assert by_action["console.login"]["ip"] == "127.0.0.1"
    assert by_action["console.login_failed"]["actor_type"] == "anonymous"
    text = json.dumps(entries)
    for secret in ("ann@example.com", "Ann Lee", "Ann Smith", "Secret note", email, PASSWORD, "CALL-7"):
        assert secret not in text


def test_admin_changes_are_audited(live: LiveAccord) -> None:
    with live.client() as client:
        csrf = logged_in(client, live.rt, "admin")
        client.post("/console/admin/sources", data={"name": "kiosk", "csrf": csrf})
        client.post("/console/admin/tokens", data={"role": "auditor", "csrf": csrf})
        client.post(
            "/console/admin/users",
            data={"email": "b@staff.example", "role": "agent", "password": PASSWORD, "csrf": csrf},
        )
        client.post("/console/admin/consent/channels", data={"key": "fax", "name": "Fax", "csrf": csrf})
    actions = [e["action"] for e in trail(live) if e["actor_type"] == "user"]
    assert actions == ["console.login", "source.create", "token.create", "user.create", "consent.channel.add"]
    assert "b@staff.example" not in json.dumps(trail(live))


def test_erasure_takes_the_notes_and_export_gives_them(live: LiveAccord) -> None:
    track(live, [{"type": "identify", "userId": "u-2", "traits": {"name": "Bea"}}])
    person = profile_id(live, "user_id:u-2")
    with live.client() as client:
        csrf = logged_in(client, live.rt, "agent")
        client.get(f"/console/customers/{person}")
        assert (
            client.post(f"/console/customers/{person}/notes", data={"text": "Prefers calls", "csrf": csrf}).status_code
            == 303
        )
    with live.api() as api:
        exported = api.post(f"/api/v1/profiles/{person}/export").json()
        assert [n["text"] for n in exported["notes"]] == ["Prefers calls"]
        erased = api.delete(f"/api/v1/profiles/{person}")
        assert erased.status_code == 200, erased.text
        assert erased.json()["deleted"]["notes"] == 1
    with live.rt.db.read() as session:
        assert session.query(Note).count() == 0
        assert session.query(RecentView).filter(RecentView.profile_id == person).count() == 0
