"""Every console page, for every role and for no login, answers as docs/security.md's console table says."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from fastapi.routing import APIRoute
from sqlalchemy import select

from accord.consent import catalogue
from accord.consent import service as consent
from accord.console import mount
from accord.db.base import utcnow
from accord.identity.models import Merge
from accord.profiles.service import resolve
from accord.security import users
from accord.security.service import ROLES, create_token
from conftest import LiveAccord
from console.helpers import PASSWORD, csrf_of, login, make_user
from pipeline.helpers import send

DOC = Path(__file__).resolve().parents[2] / "docs" / "security.md"
CREDENTIALS = ("none", *ROLES)
PUBLIC_POSTS = {("POST", "/console/login")}
# Open to anyone, but here without a provider configured (tests/security/test_oidc.py has one): a 404 page.
SINGLE_SIGN_ON = {("GET", "/console/login/oidc"), ("GET", "/console/login/oidc/callback")}


def matrix() -> dict[tuple[str, str], dict[str, bool]]:
    rows: dict[tuple[str, str], dict[str, bool]] = {}
    for line in DOC.read_text().splitlines():
        found = re.match(r"\| `(/console\S*)` \| (GET|POST|PUT|DELETE) \|(.*)\|$", line)
        if found:
            cells = [cell.strip() for cell in found.group(3).split("|")]
            assert len(cells) == len(CREDENTIALS), line
            rows[(found.group(2), found.group(1))] = {
                c: cell == "yes" for c, cell in zip(CREDENTIALS, cells, strict=True)
            }
    return rows


def console_routes() -> set[tuple[str, str]]:
    return {
        (method, route.path)
        for router in mount.ROUTERS
        for route in router.routes
        if isinstance(route, APIRoute)
        for method in route.methods - {"HEAD"}
    }


def test_the_table_covers_every_console_route() -> None:
    assert all(path.startswith("/console") for _, path in console_routes())
    assert console_routes() == set(matrix())


def prepare(live: LiveAccord) -> dict[str, str]:
    """A person with a merge (user 42 absorbed device a42), a catalogue and a consent record with a receipt."""
    send(live.rt, [{"type": "track", "anonymousId": "a42", "event": "E", "timestamp": "2026-05-01T10:00:00Z"}])
    live.wait_processed()  # the live server's worker takes them
    send(live.rt, [{"type": "identify", "userId": "42", "anonymousId": "a42", "traits": {"plan": "gold"}}])
    live.wait_processed()  # the live server's worker takes them
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
        profile = resolve(session, "user_id:42")
        assert profile is not None
        (recorded,) = consent.record(
            session,
            [(profile.id, consent.Statement(purpose="marketing", channel="email", status="refused", method="api"))],
            actor={"type": "system", "id": "test"},
            key=live.rt.signing,
            settings=live.rt.settings,
            now=now,
        )
        merge = session.scalar(select(Merge.id).where(Merge.kind == "merge"))
        other = users.create_user(session, email="other@staff.example", role="agent", password=PASSWORD, now=now)
        token = create_token(session, role="analyst")
    return {
        "profile_id": profile.id,
        "record_id": recorded.body["id"],
        "merge_id": str(merge),
        "source_id": live.source_id,
        "user_id": other.id,
        "token_id": token.id,
    }


JOURNEY = '{"stages": [{"key": "seen", "condition": {"event": "E"}}]}'
# Form fields a request needs to succeed, for an allowed role.
VALID_FORMS: dict[tuple[str, str], dict[str, str]] = {
    ("POST", "/console/search"): {"q": "42"},
    ("POST", "/console/customers/{profile_id}/consents"): {
        "purpose": "marketing",
        "channel": "email",
        "status": "given",
        "method": "verbal",
        "notice": "privacy|en|1",
        "reference": "CALL-1",
    },
    ("POST", "/console/customers/{profile_id}/traits"): {"name": "plan", "value": "silver"},
    ("POST", "/console/customers/{profile_id}/notes"): {"text": "Called"},
    ("POST", "/console/customers/{profile_id}/unmerge"): {"merge_id": "{merge_id}"},
    ("POST", "/console/segments"): {"key": "gold", "condition": '{"trait": "plan", "op": "eq", "value": "gold"}'},
    ("POST", "/console/segments/check"): {"condition": '{"trait": "plan", "op": "eq", "value": "gold"}'},
    ("POST", "/console/journeys"): {"key": "shop", "definition": JOURNEY},
    ("POST", "/console/journeys/check"): {"definition": JOURNEY},
    ("POST", "/console/journeys/delete"): {"key": "shop", "confirm": "shop"},
    ("POST", "/console/admin/sources"): {"name": "kiosk"},
    ("POST", "/console/admin/sources/{source_id}"): {"enabled": "no"},
    ("POST", "/console/admin/users"): {"email": "new@staff.example", "role": "agent", "password": PASSWORD},
    ("POST", "/console/admin/users/{user_id}"): {"action": "role", "role": "analyst"},
    ("POST", "/console/admin/tokens"): {"role": "auditor", "description": "scraper"},
    ("POST", "/console/admin/consent/purposes"): {
        "key": "service.billing",
        "name": "Billing",
        "legal_basis": "contract",
    },
    ("POST", "/console/admin/consent/channels"): {"key": "whatsapp", "name": "WhatsApp"},
    ("POST", "/console/admin/consent/notices"): {
        "key": "privacy",
        "title": "Privacy",
        "text": "v2",
        "purposes": "marketing",
    },
}
# Logging out ends the session the rest of the walk needs, and an unmerge changes the person: last.
LAST = ("/console/customers/{profile_id}/unmerge", "/console/logout")


def fill(template: str, context: dict[str, str]) -> str:
    """`template` with {name} placeholders from `context` (and other braces, as in JSON, left alone)."""
    for name, value in context.items():
        template = template.replace("{" + name + "}", value)
    return template


def _refused(answer: httpx.Response) -> str | None:
    if answer.status_code == 403:
        return "role"
    if answer.status_code == 303 and answer.headers["location"].startswith("/console/login?next="):
        return "login"
    return None


@pytest.mark.parametrize("credential", CREDENTIALS)
def test_every_console_route_answers_each_credential_as_documented(live: LiveAccord, credential: str) -> None:
    context = prepare(live)
    with live.client() as client:
        token = ""
        if credential != "none":
            assert login(client, make_user(live.rt, credential)).status_code == 303
            token = csrf_of(client.get("/console").text)
        for (method, path), allowed in sorted(
            matrix().items(), key=lambda item: LAST.index(item[0][1]) if item[0][1] in LAST else -1
        ):
            url = path.format(**context)
            fields = {k: fill(v, context) for k, v in VALID_FORMS.get((method, path), {}).items()}
            if (method, path) in PUBLIC_POSTS:
                with live.client() as fresh:
                    answer = login(fresh, make_user(live.rt, "agent"))
            elif path.endswith("/live"):
                with client.stream("GET", url) as answer:  # a stream: the status is enough
                    pass
            elif method == "GET":
                answer = client.get(url)
            else:
                answer = client.request(method, url, data={"csrf": token, **fields})
            refused = _refused(answer)
            if (method, path) in SINGLE_SIGN_ON:
                assert allowed[credential], (method, path)
                assert refused is None, (method, path, credential)
                assert answer.status_code == 404, (method, path, credential, answer.status_code)
            elif allowed[credential]:
                assert refused is None, (method, path, credential)
                assert answer.status_code < 400, (method, path, credential, answer.status_code)
            else:
                assert refused == ("login" if credential == "none" else "role"), (method, path, credential)
