"""Every route in the OpenAPI schema, with every credential, answers as docs/security.md says."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from accord.consent import catalogue
from accord.db.base import utcnow
from accord.identity.models import Merge
from accord.journeys import service as journeys
from accord.runtime import Runtime
from accord.security.service import ROLES, create_token
from accord.segments import service as segments
from accord.sources import schedules, sql_traits
from conftest import LiveAccord
from pipeline.helpers import process, send
from sources.importing import HOOK, LOYALTY, LOYALTY_CSV, seed_hook, seed_run, source

DOC = Path(__file__).resolve().parents[2] / "docs" / "security.md"
SPEND = "SELECT profile_id, count(*) AS value FROM events GROUP BY 1"
CREDENTIALS = ("none", "write key", *ROLES)


def matrix() -> dict[tuple[str, str], dict[str, bool]]:
    rows: dict[tuple[str, str], dict[str, bool]] = {}
    for line in DOC.read_text().splitlines():
        found = re.match(r"\| `(GET|POST|PUT|PATCH|DELETE) (\S+)` \|(.*)\|$", line)
        if found:
            cells = [cell.strip() for cell in found.group(3).split("|")]
            assert len(cells) == len(CREDENTIALS), line
            rows[(found.group(1), found.group(2))] = {
                c: cell == "yes" for c, cell in zip(CREDENTIALS, cells, strict=True)
            }
    return rows


def test_the_matrix_covers_every_route_of_the_schema(live: LiveAccord) -> None:
    with live.api() as api:
        schema = api.get("/openapi.json").json()
    routes = {(method.upper(), path) for path, item in schema["paths"].items() for method in item}
    assert routes == set(matrix())


# Routes that need more than the path to succeed: (url, JSON body) for an allowed credential.
VALID_REQUESTS: dict[tuple[str, str], tuple[str, dict[str, Any] | None]] = {
    # Erasure takes a person of its own, so the routes after it still find profile 42.
    ("DELETE", "/api/v1/profiles/{ref}"): ("/api/v1/profiles/user_id:erase-me", None),
    ("PUT", "/api/v1/consent/purposes/{key}"): (
        "/api/v1/consent/purposes/service.billing",
        {"name": "Billing", "legal_basis": "contract"},
    ),
    ("POST", "/api/v1/consent/channels"): ("/api/v1/consent/channels", {"key": "whatsapp", "name": "WhatsApp"}),
    ("POST", "/api/v1/consent/notices"): (
        "/api/v1/consent/notices",
        {"key": "privacy", "title": "Privacy", "text": "We write to you.", "purposes": ["marketing"]},
    ),
    ("GET", "/api/v1/consent/notices/{key}/{language}/{version}"): ("/api/v1/consent/notices/privacy/en/1", None),
    ("POST", "/api/v1/profiles/{ref}/consents"): (
        "/api/v1/profiles/user_id:42/consents",
        {"purpose": "marketing", "channel": "email", "status": "refused", "method": "api"},
    ),
    ("PUT", "/api/v1/identity/rules"): ("/api/v1/identity/rules", {"blocked": ["^$", "^null$"]}),
    # merge_id: the merge the test makes (its id differs on PostgreSQL when the insert was retried)
    ("POST", "/api/v1/profiles/{ref}/unmerge"): ("/api/v1/profiles/user_id:42/unmerge", {"merge_id": 0}),
    ("POST", "/api/v1/sources/{key}/imports/{run_id}/replay"): ("/api/v1/sources/loyalty/imports/{run_id}/replay", {}),
    ("POST", "/api/v1/segments"): (
        "/api/v1/segments",
        {"key": "posted", "condition": {"trait": "plan", "op": "exists"}},
    ),
    ("GET", "/api/v1/segments/{key}"): ("/api/v1/segments/vip", None),
    ("PUT", "/api/v1/segments/{key}"): ("/api/v1/segments/vip", {"name": "VIP"}),
    ("DELETE", "/api/v1/segments/{key}"): ("/api/v1/segments/vip", None),  # last of the segment rows
    ("GET", "/api/v1/segments/{key}/versions"): ("/api/v1/segments/vip/versions", None),
    ("GET", "/api/v1/segments/{key}/members"): ("/api/v1/segments/vip/members", None),
    ("GET", "/api/v1/segments/{key}/sizes"): ("/api/v1/segments/vip/sizes?days=3", None),
    ("POST", "/api/v1/computed-traits"): (
        "/api/v1/computed-traits",
        {"key": "posted", "definition": {"event": "E", "function": "count"}},
    ),
    ("GET", "/api/v1/computed-traits/{key}"): ("/api/v1/computed-traits/orders", None),
    ("PUT", "/api/v1/computed-traits/{key}"): (
        "/api/v1/computed-traits/orders",
        {"definition": {"event": "E", "function": "count", "within": "7d"}},
    ),
    ("DELETE", "/api/v1/computed-traits/{key}"): ("/api/v1/computed-traits/orders", None),
    ("POST", "/api/v1/sql-traits"): ("/api/v1/sql-traits", {"key": "posted_sql", "sql": SPEND}),
    ("POST", "/api/v1/sql-traits/preview"): ("/api/v1/sql-traits/preview", {"sql": SPEND}),
    ("GET", "/api/v1/sql-traits/{key}"): ("/api/v1/sql-traits/spend", None),
    ("PUT", "/api/v1/sql-traits/{key}"): ("/api/v1/sql-traits/spend", {"sql": SPEND + " HAVING count(*) > 0"}),
    ("POST", "/api/v1/sql-traits/{key}/run"): ("/api/v1/sql-traits/spend/run", None),
    ("DELETE", "/api/v1/sql-traits/{key}"): ("/api/v1/sql-traits/posted_sql", None),
    ("POST", "/api/v1/schedules"): (
        "/api/v1/schedules",
        {"name": "posted", "kind": "computed", "every_minutes": 60, "trait": "spend"},
    ),
    ("GET", "/api/v1/schedules/{name}"): ("/api/v1/schedules/nightly", None),
    ("PUT", "/api/v1/schedules/{name}"): ("/api/v1/schedules/nightly", {"every_minutes": 720}),
    ("POST", "/api/v1/schedules/{name}/run"): ("/api/v1/schedules/nightly/run", None),
    ("DELETE", "/api/v1/schedules/{name}"): ("/api/v1/schedules/posted", None),
    ("GET", "/api/v1/segments/{key}/export"): ("/api/v1/segments/vip/export?purpose=marketing&channel=email", None),
    ("POST", "/api/v1/journeys"): (
        "/api/v1/journeys",
        {"key": "posted", "stages": [{"key": "one", "condition": {"trait": "plan", "op": "exists"}}]},
    ),
    ("GET", "/api/v1/journeys/{key}"): ("/api/v1/journeys/trip", None),
    ("PUT", "/api/v1/journeys/{key}"): ("/api/v1/journeys/trip", {"name": "Trip"}),
    ("DELETE", "/api/v1/journeys/{key}"): ("/api/v1/journeys/trip", None),  # last of the journey rows
    ("GET", "/api/v1/journeys/{key}/versions"): ("/api/v1/journeys/trip/versions", None),
    ("GET", "/api/v1/journeys/{key}/funnel"): ("/api/v1/journeys/trip/funnel", None),
    ("POST", "/api/v1/identity/match"): ("/api/v1/identity/match", {"traits": {"firstName": "Ann"}}),
    ("POST", "/api/v1/identity/reviews/{review_id}/accept"): ("/api/v1/identity/reviews/1/accept", {"reason": "r"}),
    ("POST", "/api/v1/identity/reviews/{review_id}/reject"): ("/api/v1/identity/reviews/2/reject", {"reason": "r"}),
    ("PUT", "/api/v1/sources/{key}/mappings/{name}"): ("/api/v1/sources/loyalty/mappings/hook", HOOK),
    ("GET", "/api/v1/profiles/{ref}/contactable"): (
        "/api/v1/profiles/user_id:42/contactable?purpose=marketing&channel=email",
        None,
    ),
}


# Routes that take a file upload (multipart) rather than JSON.
MULTIPART = {("POST", "/api/v1/sources/{key}/imports"), ("POST", "/api/v1/sources/{key}/preview")}


def _catalogue(rt: Runtime) -> None:
    now = utcnow()
    with rt.db.unit_of_work() as session:
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
        segments.computed_save(
            session,
            key="orders",
            name="Orders",
            definition={"event": "E", "function": "count"},
            actor="test",
            now=now,
            create=True,
        )
        sql_traits.save(
            session, key="spend", sql=SPEND, pii=False, description=None, actor="test", now=now, create=True
        )
        schedules.add_computed(session, name="nightly", every_seconds=86400, trait="spend", now=now, actor="test")
        journeys.create(
            session,
            key="trip",
            name="Trip",
            description="",
            definition={"stages": [{"key": "gold", "condition": {"trait": "plan", "op": "eq", "value": "gold"}}]},
            actor="test",
            now=now,
        )
        segments.create(
            session,
            key="vip",
            name="VIP",
            description="",
            condition={"trait": "plan", "op": "eq", "value": "gold"},
            actor="test",
            now=now,
        )


def _matching(rt: Runtime) -> None:
    """A matching model (untrained weights: enough for the routes) and two pending reviews of 42 and a43."""
    from accord.identity.matching import DEFAULT_SETTINGS, Weights, level_labels
    from accord.identity.models import MatchModel, MatchReview
    from accord.profiles.service import resolve

    weights = Weights(0.0, tuple(tuple(0.0 for _ in levels) for levels in level_labels(DEFAULT_SETTINGS)))
    now = utcnow()
    with rt.db.unit_of_work() as session:
        document = {"settings": DEFAULT_SETTINGS.document(), "weights": weights.document(), "splink": {}}
        session.add(MatchModel(version=1, document=document, created_at=now, actor="test"))
        left, right = (resolve(session, ref) for ref in ("user_id:42", "anonymous_id:a43"))
        assert left is not None
        assert right is not None
        for _ in range(2):
            session.add(
                MatchReview(
                    left_id=left.id if _ == 0 else right.id,
                    right_id=right.id if _ == 0 else left.id,
                    probability=0.9,
                    match_weight=3.0,
                    model_version=1,
                    levels={},
                    status="pending",
                    created_at=now,
                )
            )


@pytest.mark.parametrize("credential", CREDENTIALS)
def test_every_route_answers_each_credential_as_documented(live: LiveAccord, credential: str, tmp_path: Path) -> None:
    # Profile 42 absorbs a device's profile: a merge, which the unmerge route may undo.
    send(live.rt, [{"type": "track", "anonymousId": "a42", "event": "E", "timestamp": "2026-05-01T10:00:00Z"}])
    process(live.rt)
    # The device's profile is stored before the identify comes: had the live worker taken the track while
    # this test's drain took the identify, the identify could commit first (PostgreSQL), and the track then
    # land on the profile it made, with no merge at all.
    live.wait_processed()
    send(live.rt, [{"type": "identify", "userId": "42", "anonymousId": "a42", "traits": {"plan": "gold"}}])
    send(live.rt, [{"type": "identify", "userId": "erase-me"}])
    process(live.rt)
    live.wait_processed()  # the live worker may have taken some of it; the merge is in either way
    with live.rt.db.read() as session:
        merge_id = session.scalars(select(Merge.id).where(Merge.kind == "merge")).one()
    send(live.rt, [{"type": "identify", "anonymousId": "a43", "traits": {"firstName": "Ann"}}])
    process(live.rt)
    _catalogue(live.rt)
    run_id = seed_run(live.rt, tmp_path)  # an import run of source "loyalty", with one rejected row
    seed_hook(live.rt, live.source_id)  # mapping "hook", for the webhook route
    seed_hook(live.rt, source(live.rt, "loyalty"))
    _matching(live.rt)
    headers: dict[str, str] = {}
    auth = None
    if credential == "write key":
        auth = (live.write_key, "")
    elif credential != "none":
        with live.rt.db.unit_of_work() as session:
            headers["Authorization"] = f"Bearer {create_token(session, role=credential).token}"
    with live.client(headers=headers, auth=auth) as client:
        for (method, path), allowed in matrix().items():
            url = path.replace("{ref}", "user_id:42").replace("{key}", "loyalty").replace("{run_id}", run_id)
            url = url.replace("{name}", "hook")
            body: dict[str, Any] | None = {
                "userId": "42",
                "event": "E",
                "previousId": "p",
                "groupId": "g",
                "batch": [{"type": "track", "userId": "42", "event": "E"}],
            }
            if method != "POST":
                body = None
            url, body = VALID_REQUESTS.get((method, path), (url, body))
            if body is not None and "merge_id" in body:
                body = {**body, "merge_id": merge_id}
            url = url.replace("{run_id}", run_id)
            if (method, path) in MULTIPART:
                upload = {"file": ("loyalty.csv", LOYALTY_CSV.encode())}
                answer = client.request(method, url, files=upload, data={"mapping": LOYALTY})
            else:
                answer = client.request(method, url, json=body)
            if allowed[credential]:
                assert answer.status_code < 400, (method, path, credential, answer.text)
            else:
                expected = 403 if credential in ROLES and not path.startswith("/v1/") else 401
                assert answer.status_code == expected, (method, path, credential, answer.text)
                assert answer.json()["code"] in {"unauthorized", "forbidden"}
    _background_runs_done(live, scheduled=allowed_to_run(credential))


def allowed_to_run(credential: str) -> bool:
    return matrix()[("POST", "/api/v1/schedules/{name}/run")][credential]


def _background_runs_done(live: LiveAccord, *, scheduled: bool, timeout: float = 120) -> None:
    """The runs the routes started in the background (a SQL trait's, a schedule's) end before the test does:
    one still running would write into the next test's database."""
    import time

    from accord.sources.models import Schedule, SqlTrait

    deadline = time.monotonic() + timeout
    while True:
        with live.rt.db.read() as session:
            trait = session.get(SqlTrait, "spend")
            schedule = session.get(Schedule, "nightly")
            started = scheduled or (schedule is not None and schedule.last_started_at is not None)  # or the poller
            busy = (trait is not None and trait.running_since is not None) or (
                started and schedule is not None and schedule.last_status is None
            )
        if not busy:
            return
        assert time.monotonic() < deadline, "a background run did not end"
        time.sleep(0.05)
