"""The audit trail: what the API and the CLI record (who, what, which thing, when, from where), reading it
back with filters and pages, and that it never holds personal data."""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from accord.audit import service as audit
from accord.cli import app as cli_app
from accord.runtime import Runtime
from accord.security.service import create_token
from conftest import LiveAccord, running_accord
from consent.world import setup_catalogue

EMAIL = "ann.secret@example.com"


@dataclass
class Trail:
    live: LiveAccord
    admin_id: str
    auditor: httpx.Client
    profile_id: str

    @property
    def rt(self) -> Runtime:
        return self.live.rt

    def records(self, **params: Any) -> list[dict[str, Any]]:
        response = self.auditor.get("/api/v1/audit", params={"limit": 1000, **params})
        assert response.status_code == 200, response.text
        return list(response.json()["records"])


def all_bodies(rt: Runtime) -> bytes:
    with rt.db.engine.connect() as connection:
        rows = connection.execute(text("SELECT body FROM audit_log ORDER BY seq")).scalars().all()
    return b"\n".join(bytes(r) for r in rows)


@pytest.fixture
def trail(rt: Runtime) -> Iterator[Trail]:
    with running_accord(rt) as live, live.api() as admin:
        admin_id = live.token.removeprefix("acc_").split(".")[0]
        with live.client() as client:
            for body in (
                {"type": "track", "anonymousId": "dev-1", "event": "Viewed", "timestamp": "2026-05-01T10:00:00Z"},
                {"type": "identify", "userId": "42", "anonymousId": "dev-1", "traits": {"email": EMAIL}},
            ):
                assert client.post(f"/v1/{body.pop('type')}", auth=(live.write_key, ""), json=body).status_code == 200
                live.wait_processed()
        setup_catalogue(admin)
        assert admin.put("/api/v1/identity/rules", json={"blocked": ["^$", "^null$"]}).status_code == 200
        assert admin.post("/api/v1/consent/channels", json={"key": "whatsapp", "name": "WhatsApp"}).status_code == 201
        consent = admin.post(
            f"/api/v1/profiles/email:{EMAIL}/consents",
            json={
                "purpose": "marketing",
                "channel": "email",
                "status": "given",
                "method": "api",
                "notice": {"key": "privacy", "version": 1, "language": "en"},
            },
        )
        assert consent.status_code == 201, consent.text
        for suffix in ("", "/traits", "/identities", "/events", "/consents/history"):
            assert admin.get(f"/api/v1/profiles/email:{EMAIL}{suffix}").status_code == 200
        profile_id = admin.get("/api/v1/profiles/user_id:42").json()["id"]
        merges = admin.get(f"/api/v1/profiles/{profile_id}/merges").json()["data"]
        unmerged = admin.post(f"/api/v1/profiles/{profile_id}/unmerge", json={"merge_id": merges[0]["id"]})
        assert unmerged.status_code == 200, unmerged.text
        with rt.db.unit_of_work() as session:
            token = create_token(session, role="auditor").token
        with live.client(headers={"Authorization": f"Bearer {token}"}) as auditor:
            yield Trail(live=live, admin_id=admin_id, auditor=auditor, profile_id=profile_id)


def test_the_api_records_changes_reads_and_consent_actions(trail: Trail) -> None:
    records = trail.records()
    actions = [r["action"] for r in reversed(records)]
    assert actions.count("consent.purpose.put") == 5
    expected = [
        "consent.notice.add",
        "identity.rules.set",
        "consent.channel.add",
        "consent.record",
        "profile.read",
        "profile.traits.read",
        "profile.identities.read",
        "profile.events.read",
        "profile.consents.read",
        "profile.read",
        "profile.unmerge",
    ]
    assert [a for a in actions if a != "consent.purpose.put"] == expected
    for record in records:
        assert (record["actor_type"], record["actor_id"], record["actor_role"]) == ("token", trail.admin_id, "admin")
        assert record["ip"] == "127.0.0.1"
        assert record["at"].endswith("Z")
    reads = [r for r in records if r["action"].startswith("profile.")]
    assert {(r["target_type"], r["target_id"]) for r in reads} == {("profile", trail.profile_id)}
    consent = next(r for r in records if r["action"] == "consent.record")
    assert consent["details"]["purpose"] == "marketing"
    assert consent["details"]["status"] == "given"
    unmerge = next(r for r in records if r["action"] == "profile.unmerge")
    assert unmerge["details"]["merge_id"] >= 1
    assert trail.profile_id in unmerge["details"]["profiles"]
    rules = next(r for r in records if r["action"] == "identity.rules.set")
    assert (rules["target_type"], rules["target_id"], rules["details"]) == ("identity_rules", "1", {"version": 1})
    # A chain: each record names the one before it.
    ordered = list(reversed(records))
    assert [r["seq"] for r in ordered] == list(range(1, len(ordered) + 1))
    assert all(later["prev"] == earlier["hash"] for earlier, later in itertools.pairwise(ordered))


def test_no_personal_data_in_the_trail(trail: Trail) -> None:
    stored = all_bodies(trail.rt)
    assert EMAIL.encode() not in stored
    assert b"ann.secret" not in stored
    assert b"dev-1" not in stored  # the anonymous id neither: the reference was resolved to a profile id


def test_failed_changes_and_missing_profiles_leave_no_record(trail: Trail) -> None:
    before = len(trail.records())
    with trail.live.api() as admin:
        assert admin.put("/api/v1/identity/rules", json={"limits": {"email": -1}}).status_code == 422
        assert admin.get("/api/v1/profiles/user_id:nobody").status_code == 404
        assert admin.get("/api/v1/profiles/email:nobody@example.com/traits").status_code == 404
        assert admin.post("/api/v1/consent/channels", json={"key": "whatsapp", "name": "Again"}).status_code == 409
        assert admin.get("/api/v1/profiles/user_id:42/events?since=yesterday").status_code == 400
    assert len(trail.records()) == before


def test_filters_and_pages(trail: Trail) -> None:
    everything = trail.records()
    assert len(trail.records(action="profile.read")) == 2
    assert {r["action"] for r in trail.records(action="profile.")} == {
        "profile.read",
        "profile.traits.read",
        "profile.identities.read",
        "profile.events.read",
        "profile.consents.read",
        "profile.unmerge",
    }
    assert len(trail.records(target_type="profile", target_id=trail.profile_id)) == 8
    assert trail.records(actor_id=trail.admin_id) == everything
    assert trail.records(actor_id="tok_nobody") == []
    assert trail.records(action="profile._") == []  # LIKE wildcards are taken literally
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    assert trail.records(since=future) == []
    assert trail.records(until=future) == everything
    assert trail.records(since="2000-01-01T00:00:00Z", until="2000-01-02T00:00:00+02:00") == []
    # Pages of 3, newest first, meet without a gap or an overlap.
    seen: list[int] = []
    before: int | None = None
    while True:
        params: dict[str, Any] = {"limit": 3, **({"before": before} if before else {})}
        page = trail.auditor.get("/api/v1/audit", params=params).json()
        seen += [r["seq"] for r in page["records"]]
        before = page["next_before"]
        if before is None:
            break
    assert seen == [r["seq"] for r in everything]


@pytest.mark.parametrize(
    ("params", "status", "code"),
    [
        ({"action": "profile.\x00"}, 400, "invalid_filter"),
        ({"target_id": "x\x00"}, 400, "invalid_filter"),
        ({"since": "yesterday"}, 400, "invalid_filter"),
        ({"until": "2026-01-01T00:00:00"}, 400, "invalid_filter"),
        ({"since": "9999-12-31T23:59:59-23:59"}, 400, "invalid_filter"),
        ({"limit": 0}, 422, "invalid_request"),
        ({"limit": 1001}, 422, "invalid_request"),
        ({"before": 0}, 422, "invalid_request"),
        ({"before": "x"}, 422, "invalid_request"),
        ({"action": "a" * 61}, 422, "invalid_request"),
        ({"target_id": "t" * 201}, 422, "invalid_request"),
        ({"since": "2026" * 20}, 422, "invalid_request"),
    ],
)
def test_hostile_filters_are_refused(trail: Trail, params: dict[str, Any], status: int, code: str) -> None:
    response = trail.auditor.get("/api/v1/audit", params=params)
    assert response.status_code == status, response.text
    assert response.json()["code"] == code


def test_only_auditors_and_admins_read_the_trail(trail: Trail) -> None:
    for role in ("analyst", "agent"):
        with trail.rt.db.unit_of_work() as session:
            token = create_token(session, role=role).token
        with trail.live.client(headers={"Authorization": f"Bearer {token}"}) as client:
            assert client.get("/api/v1/audit").status_code == 403
            assert client.get("/api/v1/audit/verify").status_code == 403
    with trail.live.client() as anonymous:
        assert anonymous.get("/api/v1/audit").status_code == 401
    with trail.live.api() as admin:
        assert admin.get("/api/v1/audit/verify").json()["ok"] is True


def test_concurrent_readers_keep_one_chain(trail: Trail) -> None:
    """Reads recorded from several threads at once queue on the head's lock: no fork, no gap."""
    before = len(trail.records())
    errors: list[str] = []

    def read() -> None:
        with trail.live.api() as admin:
            for _ in range(8):
                answer = admin.get(f"/api/v1/profiles/{trail.profile_id}/traits")
                if answer.status_code != 200:
                    errors.append(answer.text)

    threads = [threading.Thread(target=read) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    report = trail.auditor.get("/api/v1/audit/verify").json()
    assert report["ok"] is True, report
    assert report["records"] == before + 32


def test_the_cli_records_its_changes_as_cli(trail: Trail) -> None:
    settings = trail.rt.settings
    env = {"ACCORD_DATA_DIR": str(settings.data_dir)}
    if settings.database_url:
        env["ACCORD_DATABASE_URL"] = settings.database_url

    def run(*args: str) -> dict[str, Any]:
        result = CliRunner().invoke(cli_app, [*args, "--json"], env=env)
        assert result.exit_code == 0, result.output
        return dict(json.loads(result.output))

    token = run("token", "create", "--role", "analyst", "--expires-days", "3")
    assert CliRunner().invoke(cli_app, ["token", "revoke", token["id"]], env=env).exit_code == 0
    source = run("source", "create", "shop")
    assert CliRunner().invoke(cli_app, ["source", "disable", "shop"], env=env).exit_code == 0
    cli = trail.records()
    mine = [(r["action"], r["target_type"], r["target_id"]) for r in reversed(cli) if r["actor_type"] == "cli"]
    assert mine == [
        ("token.create", "token", token["id"]),
        ("token.revoke", "token", token["id"]),
        ("source.create", "source", source["id"]),
        ("source.disable", "source", source["id"]),
    ]
    created = next(r for r in cli if r["action"] == "token.create")
    assert created["details"]["role"] == "analyst"
    assert created["details"]["expires_at"]
    assert all(r["ip"] is None and r["actor_id"] is None for r in cli if r["actor_type"] == "cli")
    stored = all_bodies(trail.rt)
    assert token["token"].encode() not in stored  # the secret never enters the trail
    verified = run("audit", "verify")
    assert verified["ok"] is True
    assert verified["records"] == len(cli)
    signed = run("audit", "checkpoint")
    assert signed["signed"] is True
    assert signed["seq"] == len(cli)
    assert run("audit", "checkpoint")["signed"] is False


def test_a_service_call_without_a_change_records_nothing(rt: Runtime) -> None:
    with rt.db.read() as session:
        assert audit.records(session, audit.Filters()) == []
    report = audit.verify(rt.db.engine, key=rt.signing)
    assert report.ok
    assert report.records == 0
