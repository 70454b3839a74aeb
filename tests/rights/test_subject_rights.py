"""Data subject rights end to end: a copy of everything about a person, then erasure, after which the
person's email, name, phone and consent evidence are nowhere in the database files (SQLite: the database,
its WAL and the event-log file; PostgreSQL: a pg_dump), the consent ledger still verifies, their ids answer
410 Gone, and later events carrying their identifiers are suppressed and counted, not silently resurrected."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from accord.app import create_app
from accord.audit import service as audit
from accord.cli import app as cli_app
from accord.consent import ledger
from accord.ingest import quarantine
from accord.rights.models import Tombstone
from accord.runtime import Runtime
from accord.security.service import create_token
from conftest import ServerThread, bound_socket, database_text, found
from consent.world import setup_catalogue
from pipeline.helpers import process, send

EMAIL = "ann.erasable@example.com"
NAME = "Annabel Erasable"
PHONE = "+14155550199"
REFERENCE = "call-recording-ann-7731"
SECRETS = (EMAIL, NAME, PHONE, REFERENCE, "dev-ann-9")
OTHER_EMAIL = "bob.stays@example.com"
NOTICE = {"key": "privacy", "version": 1, "language": "en"}


@dataclass
class Person:
    rt: Runtime
    client: httpx.Client
    profile_id: str
    absorbed_id: str

    def token(self, role: str) -> dict[str, str]:
        with self.rt.db.unit_of_work() as session:
            return {"Authorization": f"Bearer {create_token(session, role=role).token}"}


@pytest.fixture
def person(rt: Runtime) -> Iterator[Person]:
    """Ann: a device profile merged into her user profile, traits, a timeline, consent with evidence and a
    receipt, a quarantined consent event, and one event still waiting in the log. Bob: someone else."""
    with rt.db.unit_of_work() as session:
        admin = create_token(session, role="admin").token
    with (
        ServerThread(create_app(rt=rt), bound_socket()) as server,  # no worker: the test processes the log
        httpx.Client(
            base_url=f"http://127.0.0.1:{server.port}", headers={"Authorization": f"Bearer {admin}"}, timeout=60
        ) as client,
    ):
        setup_catalogue(client)
        send(
            rt,
            [
                {
                    "type": "track",
                    "anonymousId": "dev-ann-9",
                    "event": "Viewed",
                    "properties": {"note": f"typed {EMAIL}"},
                    "timestamp": "2026-05-01T10:00:00Z",
                },
                {
                    "type": "identify",
                    "userId": "u-ann",
                    "anonymousId": "dev-ann-9",
                    "traits": {"email": EMAIL, "name": NAME, "phone": PHONE},
                    "timestamp": "2026-05-01T10:01:00Z",
                },
                {"type": "identify", "userId": "u-bob", "traits": {"email": OTHER_EMAIL, "name": "Bob"}},
                {
                    "type": "track",
                    "userId": "u-ann",
                    "event": "Consent Updated",
                    "properties": {"purpose": "no.such.purpose", "status": "given"},
                    "context": {"traits": {"email": EMAIL}},
                },
            ],
        )
        process(rt)
        profile = client.get(f"/api/v1/profiles/email:{EMAIL}").json()
        absorbed = profile["merged_ids"]
        assert len(absorbed) == 1, profile
        consent = client.post(
            "/api/v1/profiles/user_id:u-ann/consents",
            json={
                "purpose": "marketing",
                "channel": "email",
                "status": "given",
                "method": "verbal",
                "notice": NOTICE,
                "evidence": {"reference": REFERENCE, "ip": "203.0.113.77"},
            },
        )
        assert consent.status_code == 201, consent.text
        send(rt, [{"type": "track", "userId": "u-ann", "event": "Pending", "properties": {"email": EMAIL}}])
        with rt.db.read() as session:
            assert len(quarantine.waiting(session)) == 1
        yield Person(rt=rt, client=client, profile_id=profile["id"], absorbed_id=absorbed[0])


def test_export_holds_everything_about_the_person(person: Person) -> None:
    answer = person.client.post(f"/api/v1/profiles/email:{EMAIL}/export")
    assert answer.status_code == 200, answer.text
    document = answer.json()
    assert document["format"] == "accord-subject-access/1"
    assert document["profile"]["id"] == person.profile_id
    assert document["profile"]["traits"] == {"email": EMAIL, "name": NAME, "phone": PHONE}
    assert set(document["profile"]["trait_sources"]) == {"email", "name", "phone"}
    assert [p["id"] for p in document["merged_profiles"]] == [person.absorbed_id]
    assert {(i["type"], i["value"]) for i in document["identities"]} == {
        ("user_id", "u-ann"),
        ("anonymous_id", "dev-ann-9"),
        ("email", EMAIL),
        ("phone", PHONE),
    }
    assert [e["event"] for e in document["events"] if e["type"] == "track"] == ["Viewed"]
    assert len(document["events"]) == 2
    assert [e["event"] for e in document["pending_events"]] == ["Pending"]
    (record,) = document["consent"]["history"]
    assert record["evidence"]["reference"] == REFERENCE
    assert record["record"]["purpose"] == "marketing"
    assert [s["status"] for s in document["consent"]["state"]] == ["given"]
    assert len(document["consent"]["receipts"]) == 1
    assert [m["kind"] for m in document["merges"]] == ["merge"]
    assert document["segments"] == {"memberships": [], "transitions": []}
    assert document["journeys"] == {"positions": [], "transitions": []}
    assert OTHER_EMAIL not in answer.text
    with person.rt.db.read() as session:
        (entry,) = audit.records(session, audit.Filters(action="profile.export"))
    assert entry.body["target_id"] == person.profile_id
    assert entry.body["details"] == {"identities": 4, "events": 2, "pending_events": 1, "consent_records": 1}


def test_only_admins_export_and_erase(person: Person) -> None:
    for role in ("analyst", "agent", "auditor"):
        headers = person.token(role)
        assert person.client.post("/api/v1/profiles/user_id:u-ann/export", headers=headers).status_code == 403
        assert person.client.delete("/api/v1/profiles/user_id:u-ann", headers=headers).status_code == 403
    anonymous = {"Authorization": ""}
    assert person.client.delete("/api/v1/profiles/user_id:u-ann", headers=anonymous).status_code == 401


@pytest.mark.parametrize(
    ("ref", "status", "code"),
    [
        ("nosuchtype:1", 400, "invalid_reference"),
        ("user_id:nobody", 404, "profile_not_found"),
        ("email:not-an-email", 404, "profile_not_found"),
        ("x" * 501, 422, "invalid_request"),
        ("prof%00ile", 404, "profile_not_found"),
    ],
)
def test_bad_references_are_refused(person: Person, ref: str, status: int, code: str) -> None:
    for method in ("POST", "DELETE"):
        url = f"/api/v1/profiles/{ref}" + ("/export" if method == "POST" else "")
        answer = person.client.request(method, url)
        assert answer.status_code == status, answer.text
        assert answer.json()["code"] == code
    assert person.client.get("/api/v1/profiles/user_id:u-ann").status_code == 200


def test_erasure_end_to_end(person: Person, tmp_path: Path) -> None:
    rt, client = person.rt, person.client
    before = database_text(rt, tmp_path)
    # The search can see what is stored in clear while it is there (names, emails, phones and the consent
    # evidence are not: they are sealed under the person's data keys).
    assert found(before, "dev-ann-9")
    assert not found(before, REFERENCE)

    answer = client.delete(f"/api/v1/profiles/email:{EMAIL}")
    assert answer.status_code == 200, answer.text
    erased = answer.json()
    assert erased["profile_id"] == person.profile_id
    assert sorted(erased["profile_ids"]) == sorted([person.profile_id, person.absorbed_id])
    assert erased["deleted"] == {
        "profiles": 2,
        "identifiers": 4,
        "events": 2,
        "consent_states": 1,
        "evidence": 1,
        "receipts": 1,
        "merges": 1,
        "quarantined": 1,
        "pending_events": 1,
        "notes": 0,
        "data_keys": 1,
    }

    after = database_text(rt, tmp_path)
    assert [secret for secret in SECRETS if found(after, secret)] == []
    assert found(after, "u-bob")  # someone else's data stays (Bob's email and name are encrypted: see below)

    # Their ids answer 410 Gone; their identifiers find nobody; Bob is untouched.
    for profile_id in (person.profile_id, person.absorbed_id):
        gone = client.get(f"/api/v1/profiles/{profile_id}")
        assert gone.status_code == 410, gone.text
        assert gone.json()["code"] == "profile_erased"
        assert client.get(f"/api/v1/profiles/{profile_id}/consents").status_code == 410
        assert client.delete(f"/api/v1/profiles/{profile_id}").status_code == 410
    assert client.get(f"/api/v1/profiles/email:{EMAIL}").status_code == 404
    assert client.get(f"/api/v1/profiles/email:{OTHER_EMAIL}").json()["traits"]["name"] == "Bob"

    # The consent ledger keeps its records, without the evidence, and still verifies.
    report = ledger.verify(rt.db.engine, key=rt.signing, keys=rt.db.keyring.provider)
    assert report.ok, report.first_bad
    assert (report.records, report.evidence_checked) == (1, 0)
    assert client.get("/api/v1/consent/verify").json()["ok"] is True

    # The erasure is in the audit trail, which holds no personal data and verifies.
    with rt.db.read() as session:
        (entry,) = audit.records(session, audit.Filters(action="profile.erase"))
    assert entry.body["target_id"] == person.profile_id
    assert entry.body["details"]["erasure_id"] == erased["erasure_id"]
    assert audit.verify(rt.db.engine, key=rt.signing).ok

    # Later events with her identifiers do not bring her back unnoticed: dropped and counted.
    send(rt, [{"type": "identify", "userId": "u-ann", "traits": {"plan": "gold"}}])
    send(rt, [{"type": "track", "anonymousId": "dev-ann-9", "event": "Viewed"}])
    process(rt)
    assert client.get("/api/v1/profiles/user_id:u-ann").status_code == 404
    assert client.get("/api/v1/profiles/anonymous_id:dev-ann-9").status_code == 404
    with rt.db.read() as session:
        stone = session.scalar(select(Tombstone).where(Tombstone.profile_id == person.profile_id))
        assert stone is not None
        assert stone.suppressed_events == 2
    assert "2 later events" in client.get(f"/api/v1/profiles/{person.profile_id}").json()["message"]
    # A new person is still welcome.
    send(rt, [{"type": "identify", "userId": "u-carol", "traits": {"email": "carol@example.com"}}])
    process(rt)
    assert client.get("/api/v1/profiles/user_id:u-carol").status_code == 200


def test_erasure_through_an_absorbed_id_erases_the_whole_person(person: Person) -> None:
    answer = person.client.delete(f"/api/v1/profiles/{person.absorbed_id}")
    assert answer.status_code == 200, answer.text
    assert answer.json()["profile_id"] == person.profile_id
    assert person.client.get(f"/api/v1/profiles/{person.profile_id}").status_code == 410


def test_a_lifted_suppression_lets_the_person_come_back_as_someone_new(person: Person) -> None:
    rt, client = person.rt, person.client
    erased = client.delete(f"/api/v1/profiles/{person.profile_id}").json()
    env = {"ACCORD_DATA_DIR": str(rt.settings.data_dir)}
    if rt.settings.database_url:
        env["ACCORD_DATABASE_URL"] = rt.settings.database_url
    runner = CliRunner()
    listed = runner.invoke(cli_app, ["erasure", "list", "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    (row,) = json.loads(listed.output)
    assert (row["erasure_id"], row["profile_id"], row["suppressing_identifiers"]) == (
        erased["erasure_id"],
        person.profile_id,
        4,
    )
    assert EMAIL not in listed.output
    for bad in ("era_nope", "x" * 500, "era\x00"):
        refused = runner.invoke(cli_app, ["erasure", "lift", bad], env=env)
        assert refused.exit_code == 1
        assert "no erasure" in refused.output
    lifted = runner.invoke(cli_app, ["erasure", "lift", erased["erasure_id"], "--json"], env=env)
    assert lifted.exit_code == 0, lifted.output
    assert json.loads(lifted.output)["identifiers"] == 4
    send(rt, [{"type": "identify", "userId": "u-ann", "traits": {"email": EMAIL}}])
    process(rt)
    back = client.get("/api/v1/profiles/user_id:u-ann")
    assert back.status_code == 200, back.text
    assert back.json()["id"] != person.profile_id  # a new person; the old id stays erased
    assert back.json()["traits"] == {"email": EMAIL}
    assert client.get(f"/api/v1/profiles/{person.profile_id}").status_code == 410
    with rt.db.read() as session:
        (entry,) = audit.records(session, audit.Filters(action="erasure.lift"))
    assert (entry.body["actor_type"], entry.body["target_id"]) == ("cli", erased["erasure_id"])
