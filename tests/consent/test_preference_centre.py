"""Double opt-in and the preference centre: signed, expiring links; no login; nothing reachable but the
person the link names; forged, expired and swapped links refused; every change recorded with evidence."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from accord.consent import service
from accord.db.base import utcnow
from accord.runtime import Runtime
from consent.world import ConsentWorld, consent_world, identify

NOTICE = {"key": "privacy", "version": 1, "language": "en"}
NEWSLETTER = ("marketing.email.newsletter", "email")


@pytest.fixture
def world(rt: Runtime) -> Iterator[ConsentWorld]:
    with consent_world(rt) as made:
        yield made


def public(world: ConsentWorld) -> httpx.Client:
    """A browser: no credentials at all."""
    return world.live.client(follow_redirects=False)


def token_of(url: str) -> str:
    return parse_qs(urlsplit(url).query)["t"][0]


def decision(world: ConsentWorld, purpose: str, channel: str, ref: str | None = None) -> dict[str, Any]:
    response = world.api.get(
        f"/api/v1/profiles/{ref or world.profile_id}/contactable", params={"purpose": purpose, "channel": channel}
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def history(world: ConsentWorld, ref: str | None = None) -> list[dict[str, Any]]:
    response = world.api.get(f"/api/v1/profiles/{ref or world.profile_id}/consents/history")
    assert response.status_code == 200, response.text
    return list(response.json()["records"])


def double_opt_in(world: ConsentWorld) -> dict[str, Any]:
    response = world.record(
        purpose=NEWSLETTER[0], channel=NEWSLETTER[1], status="given", method="double_opt_in", notice=NOTICE
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def confirm(world: ConsentWorld, token: str, **headers: str) -> httpx.Response:
    with public(world) as browser:
        return browser.post("/preferences/confirm", data={"t": token}, headers=headers)


# Double opt-in


def test_double_opt_in_stays_pending_until_confirmed(world: ConsentWorld) -> None:
    created = double_opt_in(world)
    assert created["record"]["status"] == "pending"
    assert created["confirmation_url"].startswith("http")
    assert decision(world, *NEWSLETTER)["reason"] == "pending_confirmation"

    token = token_of(created["confirmation_url"])
    with public(world) as browser:
        page = browser.get("/preferences/confirm", params={"t": token})
    assert page.status_code == 200
    assert "Confirm" in page.text
    # Opening the link (as a mail scanner does) changes nothing.
    assert decision(world, *NEWSLETTER)["allowed"] is False
    assert len(history(world)) == 1

    answer = confirm(world, token, **{"User-Agent": "Mail/1.0"})
    assert answer.status_code == 200
    assert "confirmed" in answer.text
    assert decision(world, *NEWSLETTER)["allowed"] is True
    pending, given = history(world)
    assert (given["status"], given["method"], given["actor"]["type"]) == ("given", "double_opt_in", "customer")
    assert given["confirms"] == pending["id"]
    assert given["evidence"]["confirms"] == pending["id"]
    assert given["evidence"]["user_agent"] == "Mail/1.0"
    assert given["notice"]["sha256"] == world.notice["sha256"]

    again = confirm(world, token)
    assert "nothing changed" in again.text
    assert len(history(world)) == 2


def test_a_withdrawal_before_the_confirmation_wins(world: ConsentWorld) -> None:
    token = token_of(double_opt_in(world)["confirmation_url"])
    assert world.record(purpose=NEWSLETTER[0], channel="email", status="withdrawn", method="form").status_code == 201
    answer = confirm(world, token)
    assert "replaced by a later choice" in answer.text
    assert decision(world, *NEWSLETTER)["reason"] == "withdrawn"
    assert [r["status"] for r in history(world)] == ["pending", "withdrawn"]


@pytest.mark.parametrize(
    "forge",
    [
        lambda t: "",
        lambda t: "not-a-token",
        lambda t: t[:-3] + ("AAA" if not t.endswith("AAA") else "BBB"),  # signature changed
        lambda t: t.split(".")[0] + "." + t.split(".")[1] + ".",  # signature removed
        lambda t: "x" * 5000,
    ],
)
def test_forged_confirmation_links_are_refused(world: ConsentWorld, forge: Any) -> None:
    token = token_of(double_opt_in(world)["confirmation_url"])
    with public(world) as browser:
        assert browser.get("/preferences/confirm", params={"t": forge(token)}).status_code == 403
    assert confirm(world, forge(token)).status_code == 403
    assert decision(world, *NEWSLETTER)["allowed"] is False


def test_links_of_one_kind_do_not_open_the_other(world: ConsentWorld) -> None:
    confirm_token = token_of(double_opt_in(world)["confirmation_url"])
    link = world.api.post(f"/api/v1/profiles/{world.profile_id}/preference-link").json()["url"]
    with public(world) as browser:
        assert browser.get("/preferences", params={"t": confirm_token}).status_code == 403
    assert confirm(world, token_of(link)).status_code == 403


def test_expired_links_are_refused(world: ConsentWorld) -> None:
    signing = world.live.rt.signing
    past = utcnow() - timedelta(days=40)
    link, _ = service.link_token(signing, profile_id=world.profile_id, now=past, days=30, typ=service.LINK_TYP)
    with public(world) as browser:
        page = browser.get("/preferences", params={"t": link})
        assert page.status_code == 403
        assert "expired" in page.text
        assert browser.post("/preferences", data={"t": link, "shown": "x", "consent": "x"}).status_code == 403


# The preference centre


def open_centre(world: ConsentWorld, ref: str | None = None, **headers: str) -> tuple[str, httpx.Response]:
    link = world.api.post(f"/api/v1/profiles/{ref or world.profile_id}/preference-link")
    assert link.status_code == 201, link.text
    token = token_of(link.json()["url"])
    with public(world) as browser:
        page = browser.get("/preferences", params={"t": token}, headers=headers)
    assert page.status_code == 200, page.text
    return token, page


def boxes(page: httpx.Response) -> dict[str, bool]:
    found = re.findall(r'<input type="checkbox" name="consent" value="([^"]+)" (checked)?', page.text)
    return {value: bool(checked) for value, checked in found}


def save(world: ConsentWorld, token: str, checked: list[str], shown: list[str], **headers: str) -> httpx.Response:
    with public(world) as browser:
        return browser.post("/preferences", data={"t": token, "shown": shown, "consent": checked}, headers=headers)


def test_the_page_shows_consent_purposes_and_their_state(world: ConsentWorld) -> None:
    world.given()
    _, page = open_centre(world)
    assert page.headers["content-security-policy"].startswith("default-src 'none'")
    assert "no-store" in page.headers["cache-control"]
    shown = boxes(page)
    assert shown == {
        "marketing|email": False,
        "marketing|sms": False,
        "marketing.email|email": False,
        "marketing.email.newsletter|email": True,
        "sale_sharing|all": False,  # built in: the "do not sell or share" choice
    }
    assert "Privacy notice" in page.text
    assert "ann@example.com" not in page.text


def test_saving_records_only_the_changes_with_evidence(world: ConsentWorld) -> None:
    world.given()
    token, page = open_centre(world)
    shown = list(boxes(page))
    answer = save(world, token, ["marketing|sms"], shown, **{"User-Agent": "Browser/2"})
    assert answer.status_code == 303
    assert answer.headers["location"].endswith("saved=1")
    records = history(world)[1:]
    assert sorted((r["purpose"], r["channel"], r["status"]) for r in records) == [
        ("marketing", "sms", "given"),
        ("marketing.email.newsletter", "email", "withdrawn"),
    ]
    for record in records:
        assert record["method"] == "preference_centre"
        assert record["actor"] == {"type": "customer", "id": None}
        assert record["evidence"]["user_agent"] == "Browser/2"
        assert record["evidence"]["link"]
    granted = next(r for r in records if r["status"] == "given")
    assert granted["notice"]["key"] == "privacy"
    assert decision(world, "marketing", "sms")["allowed"] is True
    assert decision(world, *NEWSLETTER)["reason"] == "withdrawn"
    # Saving the same choices again changes nothing.
    _, page = open_centre(world)
    assert save(world, token, [k for k, v in boxes(page).items() if v], list(boxes(page))).status_code == 303
    assert len(history(world)) == 3


def test_forged_fields_reach_nothing_the_page_did_not_show(world: ConsentWorld) -> None:
    other = identify(world.live, "u-2", email="bob@example.com")
    token, page = open_centre(world)
    forged = [
        "analytics|web",  # not a consent purpose: never shown
        "sale_sharing|all",
        "marketing|carrier_pigeon",
        f"{other}|marketing|email",
        "marketing|email|extra",
    ]
    answer = save(world, token, forged, forged)
    assert answer.status_code == 303
    assert history(world) == []
    assert history(world, other) == []
    # A checked box that the page did not list as shown changes nothing either.
    save(world, token, ["marketing|email"], [])
    assert history(world) == []
    assert boxes(page)["marketing|email"] is False


def test_the_link_names_one_person_only(world: ConsentWorld) -> None:
    other = identify(world.live, "u-2", email="bob@example.com")
    token, page = open_centre(world)
    # Query parameters cannot point the page elsewhere.
    with public(world) as browser:
        swapped = browser.get("/preferences", params={"t": token, "profile": other, "sub": other})
    assert boxes(swapped) == boxes(page)
    save(world, token, ["marketing|email"], ["marketing|email"])
    assert [r["profile_id"] for r in history(world)] == [world.profile_id]
    assert history(world, other) == []


def test_a_gpc_signal_on_the_page_is_recorded(world: ConsentWorld) -> None:
    token, page = open_centre(world, **{"Sec-GPC": "1"})
    assert "Global Privacy Control" in page.text
    save(world, token, [], list(boxes(page)), **{"Sec-GPC": "1"})
    save(world, token, [], list(boxes(page)), **{"Sec-GPC": "1"})
    (record,) = history(world)
    assert (record["purpose"], record["status"], record["method"]) == ("sale_sharing", "refused", "gpc")


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"t=",
        b"%ff%fe=%00",
        b"t=" + b"A" * 70_000,
        b"&&&===",
        b"t=abc&t=def",
    ],
)
def test_malformed_forms_are_refused_cleanly(world: ConsentWorld, body: bytes) -> None:
    with public(world) as browser:
        answer = browser.post(
            "/preferences", content=body, headers={"Content-Type": "application/x-www-form-urlencoded"}
        )
        assert answer.status_code == 403
        confirmed = browser.post(
            "/preferences/confirm", content=body, headers={"Content-Type": "application/x-www-form-urlencoded"}
        )
        assert confirmed.status_code == 403
    assert history(world) == []


def test_hostile_catalogue_text_is_escaped(world: ConsentWorld) -> None:
    hostile = "<script>alert(1)</script>"
    put = world.api.put(
        "/api/v1/consent/purposes/marketing",
        json={"name": hostile, "legal_basis": "consent", "channels": ["email"], "description": hostile},
    )
    assert put.status_code == 200, put.text
    _, page = open_centre(world)
    assert hostile not in page.text
    assert "&lt;script&gt;" in page.text
