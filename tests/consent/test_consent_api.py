"""The consent REST API at its edges: the catalogue, recording with bad and hostile input, roles, expiry,
decisions over the purpose hierarchy, and consent following a profile merge."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from accord.cli import app as cli
from accord.consent import service
from accord.db.base import utcnow
from accord.runtime import Runtime
from accord.security.service import create_token
from consent.world import ConsentWorld, consent_world

NOTICE = {"key": "privacy", "version": 1, "language": "en"}
NEWSLETTER = {"purpose": "marketing.email.newsletter", "channel": "email"}


@pytest.fixture
def world(rt: Runtime) -> Iterator[ConsentWorld]:
    with consent_world(rt) as made:
        yield made


def client_as(world: ConsentWorld, role: str) -> httpx.Client:
    with world.live.rt.db.unit_of_work() as session:
        token = create_token(session, role=role)
    client = world.live.client(headers={"Authorization": f"Bearer {token.token}"})
    client.token_id = token.id  # type: ignore[attr-defined]
    return client


def contactable(world: ConsentWorld, purpose: str, channel: str, ref: str | None = None) -> dict[str, Any]:
    response = world.api.get(
        f"/api/v1/profiles/{ref or world.profile_id}/contactable", params={"purpose": purpose, "channel": channel}
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def history(world: ConsentWorld, ref: str | None = None) -> list[dict[str, Any]]:
    response = world.api.get(f"/api/v1/profiles/{ref or world.profile_id}/consents/history")
    assert response.status_code == 200, response.text
    return list(response.json()["records"])


def consents(world: ConsentWorld, ref: str | None = None) -> dict[tuple[str, str], dict[str, Any]]:
    response = world.api.get(f"/api/v1/profiles/{ref or world.profile_id}/consents")
    assert response.status_code == 200, response.text
    return {(c["purpose"], c["channel"]): c for c in response.json()["consents"]}


def alive(world: ConsentWorld) -> None:
    """Before a request that might fail with a 500 (which can take the test server down)."""
    assert world.api.get("/healthz").status_code == 200


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def put_purpose(world: ConsentWorld, key: str, **body: Any) -> httpx.Response:
    return world.api.put(f"/api/v1/consent/purposes/{key}", json={"name": key.title(), **body})


def add_notice(world: ConsentWorld, key: str, purposes: list[str], **body: Any) -> dict[str, Any]:
    response = world.api.post(
        "/api/v1/consent/notices",
        json={"key": key, "title": f"{key} notice", "text": "What we do.", "purposes": purposes, **body},
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


# The catalogue


def test_a_purpose_is_versioned_by_its_changes(world: ConsentWorld) -> None:
    created = put_purpose(world, "loyalty", legal_basis="consent", channels=["sms", "email"])
    assert created.status_code == 200, created.text
    assert created.json()["version"] == 1
    assert created.json()["channels"] == ["email", "sms"]
    assert created.json()["dpv"] == "dpv:Consent"
    assert created.json()["builtin"] is False

    changed = put_purpose(world, "loyalty", legal_basis="consent", channels=["email"], description="Points")
    assert changed.json()["version"] == 2
    same = put_purpose(world, "loyalty", legal_basis="consent", channels=["email"], description="Points")
    assert same.status_code == 200
    assert same.json()["version"] == 2

    listed = {p["key"]: p for p in world.api.get("/api/v1/consent/purposes").json()["purposes"]}
    assert listed["loyalty"]["version"] == 2
    assert listed["loyalty"]["description"] == "Points"
    assert listed["sale_sharing"]["builtin"] is True
    assert listed["iab_tcf"]["builtin"] is True


@pytest.mark.parametrize(
    ("key", "body", "status", "code"),
    [
        ("Marketing!", {"legal_basis": "consent"}, 422, "invalid_purpose"),
        ("a..b", {"legal_basis": "consent"}, 422, "invalid_purpose"),
        ("loyalty", {"legal_basis": "because_we_can"}, 422, "invalid_request"),
        ("loyalty", {"legal_basis": "consent", "channels": ["carrier_pigeon"]}, 422, "unknown_channel"),
        ("loyalty", {"legal_basis": "consent", "expires_after_days": 0}, 422, "invalid_request"),
        ("loyalty", {"legal_basis": "consent", "colour": "red"}, 422, "invalid_request"),
        ("sale_sharing", {"legal_basis": "consent"}, 409, "builtin_purpose"),
        ("iab_tcf", {"legal_basis": "contract"}, 409, "builtin_purpose"),
    ],
)
def test_bad_purposes_are_refused(world: ConsentWorld, key: str, body: dict[str, Any], status: int, code: str) -> None:
    response = put_purpose(world, key, **body)
    assert (response.status_code, response.json()["code"]) == (status, code), response.text
    keys = [p["key"] for p in world.api.get("/api/v1/consent/purposes").json()["purposes"]]
    assert "loyalty" not in keys


def test_channels_builtin_and_custom(world: ConsentWorld) -> None:
    listed = {c["key"]: c for c in world.api.get("/api/v1/consent/channels").json()["channels"]}
    assert listed["email"] == {"key": "email", "name": "Email", "builtin": True}
    assert listed["all"]["builtin"] is True

    added = world.api.post("/api/v1/consent/channels", json={"key": "whatsapp", "name": "WhatsApp"})
    assert added.status_code == 201, added.text
    assert added.json() == {"key": "whatsapp", "name": "WhatsApp", "builtin": False}
    again = world.api.post("/api/v1/consent/channels", json={"key": "whatsapp", "name": "WhatsApp 2"})
    assert (again.status_code, again.json()["code"]) == (409, "channel_exists")
    builtin = world.api.post("/api/v1/consent/channels", json={"key": "email", "name": "Mail"})
    assert (builtin.status_code, builtin.json()["code"]) == (409, "channel_exists")
    bad = world.api.post("/api/v1/consent/channels", json={"key": "Whats App", "name": "x"})
    assert (bad.status_code, bad.json()["code"]) == (422, "invalid_channel")

    listed = {c["key"]: c for c in world.api.get("/api/v1/consent/channels").json()["channels"]}
    assert listed["whatsapp"] == {"key": "whatsapp", "name": "WhatsApp", "builtin": False}
    # A custom channel can be recorded on once it exists.
    world.given(purpose="marketing", channel="whatsapp")


def test_notices_are_versioned_per_key_and_language(world: ConsentWorld) -> None:
    assert world.notice["version"] == 1
    second = add_notice(world, "privacy", ["marketing", "analytics"], title="Privacy notice", text="Changed.")
    assert (second["version"], second["language"]) == (2, "en")
    german = add_notice(world, "privacy", ["marketing"], language="de", title="Datenschutz", text="Wir ...")
    assert (german["version"], german["language"]) == (1, "de")
    third = add_notice(world, "privacy", ["marketing"])
    assert third["version"] == 3

    for notice in (world.notice, second, german, third):
        expected = hashlib.sha256(f"{notice['title']}\n\n{notice['text']}".encode()).hexdigest()
        assert notice["sha256"] == expected

    one = world.api.get("/api/v1/consent/notices/privacy/en/2")
    assert one.status_code == 200, one.text
    assert one.json() == second
    first = world.api.get("/api/v1/consent/notices/privacy/en/1").json()
    assert first["text"] == world.notice["text"]  # old versions stay as they were
    missing = world.api.get("/api/v1/consent/notices/privacy/en/9")
    assert (missing.status_code, missing.json()["code"]) == (404, "notice_not_found")
    assert world.api.get("/api/v1/consent/notices/privacy/fr/1").status_code == 404
    listed = [
        (n["key"], n["language"], n["version"]) for n in world.api.get("/api/v1/consent/notices").json()["notices"]
    ]
    assert listed == [("privacy", "de", 1), ("privacy", "en", 1), ("privacy", "en", 2), ("privacy", "en", 3)]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"purposes": ["no.such.purpose"]}, "unknown_purpose"),
        ({"url": "javascript:alert(document.cookie)"}, "invalid_notice"),
        ({"url": "JAVASCRIPT:alert(1)"}, "invalid_notice"),
        ({"url": "data:text/html,<script>alert(1)</script>"}, "invalid_notice"),
        ({"language": "english!"}, "invalid_language"),
        ({"key": "Privacy Notice"}, "invalid_notice"),
        ({"purposes": []}, "invalid_request"),
        ({"title": ""}, "invalid_request"),
        ({"extra": 1}, "invalid_request"),
    ],
)
def test_bad_notices_are_refused(world: ConsentWorld, body: dict[str, Any], code: str) -> None:
    response = world.api.post(
        "/api/v1/consent/notices",
        json={"key": "cookies", "title": "Cookies", "text": "We use cookies.", "purposes": ["analytics"], **body},
    )
    assert (response.status_code, response.json()["code"]) == (422, code), response.text
    assert len(world.api.get("/api/v1/consent/notices").json()["notices"]) == 1


def test_only_admins_change_the_catalogue(world: ConsentWorld) -> None:
    for role in ("analyst", "agent", "auditor"):
        with client_as(world, role) as client:
            assert client.get("/api/v1/consent/purposes").status_code == 200
            assert (
                client.put("/api/v1/consent/purposes/loyalty", json={"name": "L", "legal_basis": "consent"}).status_code
                == 403
            )
            assert client.post("/api/v1/consent/channels", json={"key": "fax", "name": "Fax"}).status_code == 403
            notice = {"key": "n", "title": "t", "text": "x", "purposes": ["marketing"]}
            assert client.post("/api/v1/consent/notices", json=notice).status_code == 403
    with world.live.client() as anonymous:
        assert anonymous.get("/api/v1/consent/purposes").status_code == 401


# Recording: what is refused


def given_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {**NEWSLETTER, "status": "given", "method": "form", "notice": NOTICE}
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


def test_unknown_purpose_or_channel(world: ConsentWorld) -> None:
    response = world.record(**given_body(purpose="marketing.postcards"))
    assert (response.status_code, response.json()["code"]) == (422, "unknown_purpose")
    response = world.record(**given_body(channel="fax"))
    assert (response.status_code, response.json()["code"]) == (422, "unknown_channel")
    assert history(world) == []


def test_consent_given_needs_the_notice_that_covers_it(world: ConsentWorld) -> None:
    response = world.record(**given_body(notice=None))
    assert (response.status_code, response.json()["code"]) == (422, "notice_required")
    add_notice(world, "cookies", ["analytics"])
    response = world.record(**given_body(notice={"key": "cookies", "version": 1, "language": "en"}))
    assert (response.status_code, response.json()["code"]) == (422, "notice_mismatch")
    response = world.record(**given_body(notice={"key": "privacy", "version": 7, "language": "en"}))
    assert (response.status_code, response.json()["code"]) == (422, "unknown_notice")
    assert history(world) == []
    # Refusing and withdrawing need no notice; a purpose on another legal basis neither.
    assert world.record(**given_body(status="refused", notice=None)).status_code == 201
    assert world.record(**given_body(status="withdrawn", notice=None)).status_code == 201
    assert world.record(purpose="analytics", channel="web", status="given", method="banner").status_code == 201


def test_times_must_make_sense(world: ConsentWorld) -> None:
    now = datetime.now(UTC)
    future = world.record(**given_body(occurred_at=iso(now + timedelta(days=1))))
    assert (future.status_code, future.json()["code"]) == (422, "invalid_time")
    backwards = world.record(
        **given_body(occurred_at=iso(now - timedelta(days=2)), expires_at=iso(now - timedelta(days=3)))
    )
    assert (backwards.status_code, backwards.json()["code"]) == (422, "invalid_time")
    naive = world.record(**given_body(occurred_at=(now - timedelta(hours=1)).replace(tzinfo=None).isoformat()))
    assert naive.status_code == 422
    assert world.record(**given_body(occurred_at="yesterday")).status_code == 422
    assert history(world) == []
    # Within the allowed clock skew, a device slightly ahead is fine.
    assert world.record(**given_body(occurred_at=iso(now + timedelta(minutes=1)))).status_code == 201


def test_verbal_and_paper_statements_need_a_reference(world: ConsentWorld) -> None:
    for method in ("verbal", "paper_form"):
        response = world.record(**given_body(method=method))
        assert (response.status_code, response.json()["code"]) == (422, "evidence_required")
        response = world.record(**given_body(method=method, evidence={"note": "said yes"}))
        assert (response.status_code, response.json()["code"]) == (422, "evidence_required")
    assert history(world) == []
    done = world.record(**given_body(method="verbal", evidence={"reference": "call-2024-0042"}))
    assert done.status_code == 201, done.text
    assert done.json()["record"]["evidence"]["reference"] == "call-2024-0042"


@pytest.mark.parametrize(
    "changes",
    [
        {"colour": "red"},
        {"evidence": {"ip": "203.0.113.9", "password": "x"}},
        {"notice": {**NOTICE, "sha256": "0" * 64}},
        {"status": "pending"},
        {"status": "expired"},
        {"method": "tcf"},
        {"method": "expiry"},
        {"actor": {"type": "customer"}},
        {"source": "src_1"},
    ],
)
def test_extra_or_reserved_fields_are_refused(world: ConsentWorld, changes: dict[str, Any]) -> None:
    response = world.record(**given_body(**changes))
    assert (response.status_code, response.json()["code"]) == (422, "invalid_request"), response.text
    assert history(world) == []


@pytest.mark.parametrize(
    "changes",
    [
        {"purpose": "m" * 121},
        {"channel": "c" * 61},
        {"evidence": {"note": "n" * 2001}},
        {"evidence": {"reference": "r" * 1001}},
        {"evidence": {"user_agent": "u" * 1001}},
        {"evidence": {"ip": "1" * 101}},
        {"notice": {**NOTICE, "key": "k" * 121}},
        {"notice": {**NOTICE, "version": 2**40}},
        {"tcf": "C" * 4001},
    ],
)
def test_oversized_fields_are_refused(world: ConsentWorld, changes: dict[str, Any]) -> None:
    response = world.record(**given_body(**changes))
    assert (response.status_code, response.json()["code"]) == (422, "invalid_request"), response.text
    assert history(world) == []


@pytest.mark.parametrize(
    "evidence",
    [{"ip": 5}, {"user_agent": ["Mozilla"]}, {"note": {"a": 1}}, {"reference": None, "ip": True}, "203.0.113.9", [1]],
)
def test_malformed_evidence_is_refused(world: ConsentWorld, evidence: Any) -> None:
    response = world.record(**given_body(evidence=evidence))
    assert (response.status_code, response.json()["code"]) == (422, "invalid_request"), response.text
    assert history(world) == []


def test_evidence_too_large_for_the_ledger_is_refused(world: ConsentWorld) -> None:
    """The pipeline and the preference centre record through the service, which caps the evidence's JSON."""
    rt = world.live.rt
    statement = service.Statement(
        purpose="marketing",
        channel="email",
        status="refused",
        method="banner",
        evidence={"ip": "203.0.113.9", "user_agent": "u" * service.MAX_EVIDENCE},
    )
    with pytest.raises(service.ConsentError) as refused, rt.db.unit_of_work() as session:
        service.record(
            session,
            [(world.profile_id, statement)],
            actor={"type": "system", "id": "t"},
            key=rt.signing,
            settings=rt.settings,
            now=utcnow(),
        )
    assert refused.value.code == "evidence_too_large"
    assert history(world) == []


HOSTILE = [
    'O\'Brien said "yes"; DROP TABLE consent_ledger; --',
    "<script>alert('x')</script><img src=x onerror=alert(1)>",
    "Zoë Ødegård 山田太郎 🙂 \u202eevil\u202c e\u0301",
    "\\u0000 is not a NUL, and neither is %00",
]


def test_hostile_strings_are_stored_verbatim(world: ConsentWorld) -> None:
    for text in HOSTILE:
        evidence = {"note": text, "reference": text[:100], "user_agent": text, "ip": text[:100]}
        created = world.record(**given_body(method="verbal", evidence=evidence))
        assert created.status_code == 201, created.text
        assert {k: created.json()["record"]["evidence"][k] for k in evidence} == evidence
    kept = [r["evidence"]["note"] for r in history(world)]
    assert kept == HOSTILE

    notice = add_notice(world, "terms", ["marketing"], title=HOSTILE[1], text="\n".join(HOSTILE))
    read = world.api.get("/api/v1/consent/notices/terms/en/1").json()
    assert (read["title"], read["text"]) == (HOSTILE[1], "\n".join(HOSTILE))
    assert read["sha256"] == hashlib.sha256(f"{HOSTILE[1]}\n\n{read['text']}".encode()).hexdigest() == notice["sha256"]
    purpose = put_purpose(world, "loyalty", legal_basis="consent", description=HOSTILE[2])
    assert purpose.json()["description"] == HOSTILE[2]
    assert world.api.get("/api/v1/consent/verify").json()["ok"] is True


NUL = "a\u0000b"


@pytest.mark.parametrize(
    ("where", "send"),
    [
        ("purpose", lambda w: w.record(**given_body(purpose=f"marketing{NUL}"))),
        ("channel", lambda w: w.record(**given_body(channel=f"email{NUL}"))),
        ("notice key", lambda w: w.record(**given_body(notice={**NOTICE, "key": f"privacy{NUL}"}))),
        ("notice language", lambda w: w.record(**given_body(notice={**NOTICE, "language": f"en{NUL}"}))),
        ("profile ref", lambda w: w.record(ref="user_id:u%00", **given_body())),
        (
            "contactable purpose",
            lambda w: w.api.get(
                f"/api/v1/profiles/{w.profile_id}/contactable", params={"purpose": NUL, "channel": "email"}
            ),
        ),
        (
            "purpose name",
            lambda w: w.api.put("/api/v1/consent/purposes/loyalty", json={"name": NUL, "legal_basis": "consent"}),
        ),
        ("channel name", lambda w: w.api.post("/api/v1/consent/channels", json={"key": "fax", "name": NUL})),
        (
            "notice title",
            lambda w: w.api.post(
                "/api/v1/consent/notices", json={"key": "n", "title": NUL, "text": "x", "purposes": ["marketing"]}
            ),
        ),
    ],
)
def test_a_nul_character_is_refused_cleanly(world: ConsentWorld, where: str, send: Any) -> None:
    alive(world)
    response = send(world)
    assert 400 <= response.status_code < 500, f"{where}: {response.status_code} {response.text}"
    alive(world)


def test_a_nul_in_evidence_is_kept_verbatim(world: ConsentWorld) -> None:
    alive(world)
    response = world.record(**given_body(evidence={"note": NUL}))
    assert response.status_code == 201, response.text
    assert history(world)[0]["evidence"]["note"] == NUL
    assert world.api.get("/api/v1/consent/verify").json()["ok"] is True


def test_unknown_profile(world: ConsentWorld) -> None:
    for ref in ("user_id:nobody", "00000000-0000-0000-0000-000000000000"):
        response = world.record(ref=ref, **given_body())
        assert (response.status_code, response.json()["code"]) == (404, "profile_not_found")
        for path in ("consents", "consents/history", "consents/receipts"):
            assert world.api.get(f"/api/v1/profiles/{ref}/{path}").status_code == 404
        response = world.api.get(
            f"/api/v1/profiles/{ref}/contactable", params={"purpose": "marketing", "channel": "email"}
        )
        assert response.status_code == 404
    bad = world.record(ref="shoe_size:42", **given_body())
    assert (bad.status_code, bad.json()["code"]) == (400, "invalid_reference")
    assert world.api.get("/api/v1/consent/verify").json()["records"] == 0


# Recording: who


def test_an_agent_records_as_itself(world: ConsentWorld) -> None:
    with client_as(world, "agent") as agent:
        response = agent.post(
            f"/api/v1/profiles/{world.profile_id}/consents",
            json=given_body(method="verbal", evidence={"reference": "call-7", "recorded_by": "someone else"}),
        )
        assert (response.status_code, response.json()["code"]) == (422, "invalid_request")
        response = agent.post(
            f"/api/v1/profiles/{world.profile_id}/consents",
            json=given_body(method="verbal", evidence={"reference": "call-7"}),
        )
        assert response.status_code == 201, response.text
        record = response.json()["record"]
        assert record["actor"] == {"type": "agent", "id": agent.token_id}  # type: ignore[attr-defined]
        assert record["evidence"]["recorded_by"] == agent.token_id  # type: ignore[attr-defined]
        # An agent may read what it recorded and check it.
        assert agent.get(f"/api/v1/profiles/{world.profile_id}/consents/history").status_code == 200
        assert (
            agent.get(f"/api/v1/profiles/{world.profile_id}/contactable", params=NEWSLETTER).json()["allowed"] is True
        )
    admin = world.given()["record"]
    assert admin["actor"]["type"] == "system"
    assert admin["evidence"]["recorded_by"] == admin["actor"]["id"]


def test_roles_on_the_consent_routes(world: ConsentWorld) -> None:
    world.given()
    profile = f"/api/v1/profiles/{world.profile_id}"
    with client_as(world, "analyst") as analyst:
        response = analyst.post(f"{profile}/consents", json=given_body())
        assert (response.status_code, response.json()["code"]) == (403, "forbidden")
        assert analyst.get(f"{profile}/consents").status_code == 200
        assert analyst.get(f"{profile}/contactable", params=NEWSLETTER).status_code == 200
        assert analyst.post(f"{profile}/preference-link").status_code == 403
        assert analyst.get("/api/v1/consent/verify").status_code == 403
    with client_as(world, "auditor") as auditor:
        assert auditor.post(f"{profile}/consents", json=given_body()).status_code == 403
        records = auditor.get(f"{profile}/consents/history")
        assert records.status_code == 200
        assert len(records.json()["records"]) == 1
        assert auditor.get(f"{profile}/consents/receipts").status_code == 200
        assert auditor.get(f"{profile}/consents").status_code == 200
        response = auditor.get(f"{profile}/contactable", params=NEWSLETTER)
        assert (response.status_code, response.json()["code"]) == (403, "forbidden")
        assert auditor.get("/api/v1/consent/renewals").status_code == 403
        assert auditor.get("/api/v1/consent/verify").status_code == 200
    with world.live.client() as anonymous:
        assert anonymous.post(f"{profile}/consents", json=given_body()).status_code == 401
        assert anonymous.get(f"{profile}/consents/history").status_code == 401
    assert len(history(world)) == 1


def test_the_same_statement_twice_is_two_records(world: ConsentWorld) -> None:
    first = world.given()["record"]
    second = world.given()["record"]
    assert first["id"] != second["id"]
    assert second["prev"] == first["hash"]
    assert [r["id"] for r in history(world)] == [first["id"], second["id"]]
    state = consents(world)
    assert list(state) == [("marketing.email.newsletter", "email")]
    assert state[("marketing.email.newsletter", "email")]["record_id"] == second["id"]
    decision = contactable(world, **NEWSLETTER)
    assert (decision["allowed"], decision["record_id"]) == (True, second["id"])
    receipts = world.api.get(f"/api/v1/profiles/{world.profile_id}/consents/receipts").json()["receipts"]
    assert {r["record_id"] for r in receipts} == {first["id"], second["id"]}
    verify = world.api.get("/api/v1/consent/verify").json()
    assert (verify["ok"], verify["records"]) == (True, 2)


def test_a_statement_recorded_late_joins_the_history_not_the_state(world: ConsentWorld) -> None:
    now = datetime.now(UTC)
    withdrawn = world.given(status="withdrawn", notice=None)["record"]
    paper = world.given(
        method="paper_form", evidence={"reference": "form-1"}, occurred_at=iso(now - timedelta(days=10))
    )["record"]
    assert [r["id"] for r in history(world)] == [withdrawn["id"], paper["id"]]
    assert consents(world)[("marketing.email.newsletter", "email")]["record_id"] == withdrawn["id"]
    assert contactable(world, **NEWSLETTER)["reason"] == "withdrawn"


# Expiry


def expiring_world(world: ConsentWorld, days: int = 30) -> dict[str, Any]:
    assert put_purpose(world, "offers", legal_basis="consent", channels=["email"], expires_after_days=days).is_success
    add_notice(world, "offers", ["offers"])
    occurred = datetime.now(UTC) - timedelta(days=days + 1)
    response = world.record(
        purpose="offers",
        channel="email",
        status="given",
        method="form",
        notice={"key": "offers", "version": 1, "language": "en"},
        occurred_at=iso(occurred),
    )
    assert response.status_code == 201, response.text
    record = dict(response.json()["record"])
    expected = occurred + timedelta(days=days)
    assert abs(datetime.fromisoformat(record["expires_at"]) - expected) < timedelta(seconds=1)
    return record


def test_a_lapsed_grant_reads_expired_before_the_sweep(world: ConsentWorld) -> None:
    record = expiring_world(world)
    state = consents(world)[("offers", "email")]
    assert (state["status"], state["recorded_status"], state["record_id"]) == ("expired", "given", record["id"])
    decision = contactable(world, "offers", "email")
    assert (decision["allowed"], decision["reason"], decision["record_id"]) == (False, "expired", record["id"])
    renewals = world.api.get("/api/v1/consent/renewals").json()["renewals"]
    assert [(r["profile_id"], r["purpose"], r["channel"], r["record_id"]) for r in renewals] == [
        (world.profile_id, "offers", "email", record["id"])
    ]
    assert renewals[0]["expires_at"] == record["expires_at"]


def test_a_grant_soon_to_lapse_is_due_for_renewal(world: ConsentWorld) -> None:
    assert put_purpose(world, "offers", legal_basis="consent", channels=["email"], expires_after_days=20).is_success
    add_notice(world, "offers", ["offers"])
    notice = {"key": "offers", "version": 1, "language": "en"}
    record = world.record(purpose="offers", channel="email", status="given", method="form", notice=notice).json()
    assert contactable(world, "offers", "email")["allowed"] is True
    assert world.api.get("/api/v1/consent/renewals", params={"days": 10}).json()["renewals"] == []
    due = world.api.get("/api/v1/consent/renewals", params={"days": 30}).json()["renewals"]
    assert [r["record_id"] for r in due] == [record["record"]["id"]]


def test_the_expire_command_writes_expiry_into_the_history(world: ConsentWorld) -> None:
    record = expiring_world(world)
    settings = world.live.rt.settings
    env = {"ACCORD_DATA_DIR": str(settings.data_dir)}
    if settings.database_url:
        env["ACCORD_DATABASE_URL"] = settings.database_url
    result = CliRunner().invoke(cli, ["consent", "expire", "--json"], env=env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"expired": 1}

    records = history(world)
    assert [r["status"] for r in records] == ["given", "expired"]
    expired = records[1]
    assert expired["purpose"] == "offers"
    assert expired["channel"] == "email"
    assert expired["method"] == "expiry"
    assert expired["actor"] == {"type": "system", "id": "expiry"}
    assert expired["occurred_at"] == record["expires_at"]
    assert expired["evidence"]["expired_record"] == record["id"]
    assert expired["prev"] == records[0]["hash"]
    state = consents(world)[("offers", "email")]
    assert (state["status"], state["recorded_status"]) == ("expired", "expired")
    assert contactable(world, "offers", "email")["reason"] == "expired"
    assert world.api.get("/api/v1/consent/renewals").json()["renewals"] == []

    again = CliRunner().invoke(cli, ["consent", "expire", "--json"], env=env)
    assert json.loads(again.output) == {"expired": 0}
    assert len(history(world)) == 2
    assert world.api.get("/api/v1/consent/verify").json()["ok"] is True


def test_renewing_after_expiry_grants_again(world: ConsentWorld) -> None:
    expiring_world(world)
    renewed = world.record(
        purpose="offers",
        channel="email",
        status="renewed",
        method="form",
        notice={"key": "offers", "version": 1, "language": "en"},
    )
    assert renewed.status_code == 201, renewed.text
    assert renewed.json()["record"]["expires_at"] is not None
    assert contactable(world, "offers", "email")["allowed"] is True
    assert world.api.get("/api/v1/consent/renewals", params={"days": 10}).json()["renewals"] == []


# Decisions


def test_a_grant_covers_child_purposes_until_a_narrower_withdrawal(world: ConsentWorld) -> None:
    assert contactable(world, **NEWSLETTER) == {
        "allowed": False,
        "reason": "no_consent",
        "purpose": "marketing.email.newsletter",
        "channel": "email",
        "legal_basis": "consent",
        "record_id": None,
    }
    grant = world.given(purpose="marketing")["record"]
    decision = contactable(world, **NEWSLETTER)
    assert (decision["allowed"], decision["reason"], decision["record_id"]) == (True, "consent_given", grant["id"])
    assert contactable(world, "marketing.email.newsletter", "sms")["allowed"] is False  # granted on email only

    withdrawal = world.given(purpose="marketing.email", status="withdrawn", notice=None)["record"]
    decision = contactable(world, **NEWSLETTER)
    assert (decision["allowed"], decision["reason"], decision["record_id"]) == (False, "withdrawn", withdrawal["id"])
    assert contactable(world, "marketing.email", "email")["allowed"] is False
    assert contactable(world, "marketing", "email")["allowed"] is True  # the parent grant itself stands

    regrant = world.given()["record"]
    decision = contactable(world, **NEWSLETTER)
    assert (decision["allowed"], decision["record_id"]) == (True, regrant["id"])


def test_a_statement_on_all_channels_speaks_for_each(world: ConsentWorld) -> None:
    world.given()
    refusal = world.given(purpose="marketing", channel="all", status="refused", notice=None)["record"]
    decision = contactable(world, **NEWSLETTER)
    assert (decision["allowed"], decision["reason"], decision["record_id"]) == (False, "refused", refusal["id"])


def test_decisions_for_other_legal_bases(world: ConsentWorld) -> None:
    world.given(purpose="marketing", channel="all", status="withdrawn", notice=None)
    billing = contactable(world, "service.billing", "email")
    assert (billing["allowed"], billing["reason"], billing["legal_basis"]) == (True, "legal_basis:contract", "contract")
    assert contactable(world, "analytics", "web")["reason"] == "legal_basis:legitimate_interest"
    world.record(purpose="analytics", channel="web", status="refused", method="banner")
    objected = contactable(world, "analytics", "web")
    assert (objected["allowed"], objected["reason"]) == (False, "objected")
    # A refusal does not touch a contract purpose.
    world.record(purpose="service.billing", channel="email", status="refused", method="form")
    assert contactable(world, "service.billing", "email")["allowed"] is True


def test_contactable_for_unknown_purposes_and_channels(world: ConsentWorld) -> None:
    profile = f"/api/v1/profiles/{world.profile_id}/contactable"
    response = world.api.get(profile, params={"purpose": "marketing.postcards", "channel": "email"})
    assert (response.status_code, response.json()["code"]) == (404, "unknown_purpose")
    response = world.api.get(profile, params={"purpose": "marketing", "channel": "fax"})
    assert (response.status_code, response.json()["code"]) == (404, "unknown_channel")
    assert world.api.get(profile, params={"purpose": "marketing"}).status_code == 422
    assert world.api.get(profile, params={"purpose": "m" * 121, "channel": "email"}).status_code == 422


def test_a_withdrawal_takes_effect_at_once(world: ConsentWorld) -> None:
    for _ in range(5):
        world.given()
        assert contactable(world, **NEWSLETTER)["allowed"] is True
        world.given(status="withdrawn", notice=None)
        decision = contactable(world, **NEWSLETTER)
        assert (decision["allowed"], decision["reason"]) == (False, "withdrawn")


# Merges


def test_consent_follows_a_merge(world: ConsentWorld) -> None:
    with world.live.client() as client:
        page = client.post(
            "/v1/page", auth=(world.live.write_key, ""), json={"anonymousId": "anon-7", "name": "Newsletter"}
        )
        assert page.status_code == 200, page.text
    world.live.wait_processed()
    anonymous = world.api.get("/api/v1/profiles/anonymous_id:anon-7").json()["id"]
    assert anonymous != world.profile_id
    response = world.record(ref="anonymous_id:anon-7", **given_body())
    assert response.status_code == 201, response.text
    grant = response.json()["record"]
    assert grant["profile_id"] == anonymous
    assert consents(world) == {}

    with world.live.client() as client:
        identify = client.post(
            "/v1/identify", auth=(world.live.write_key, ""), json={"userId": "u-1", "anonymousId": "anon-7"}
        )
        assert identify.status_code == 200, identify.text
    world.live.wait_processed()
    survivor = world.api.get("/api/v1/profiles/anonymous_id:anon-7").json()["id"]
    assert survivor == world.profile_id  # the older profile survives

    state = consents(world)
    assert state[("marketing.email.newsletter", "email")]["record_id"] == grant["id"]
    assert [r["id"] for r in history(world)] == [grant["id"]]
    assert contactable(world, **NEWSLETTER)["allowed"] is True
    # The absorbed profile's id still leads to the same answers.
    assert consents(world, ref=anonymous) == state
    # A withdrawal on the survivor outranks the grant made on the absorbed profile.
    world.given(status="withdrawn", notice=None)
    assert contactable(world, **NEWSLETTER)["allowed"] is False
    assert contactable(world, **NEWSLETTER, ref=anonymous)["allowed"] is False
