"""The console's customer pages against a live Accord: search, the 360, the live timeline, and the agent's
actions (consent with evidence, trait corrections, notes), with hostile input on each form."""

from __future__ import annotations

import re
import time

import httpx
import pytest
from sqlalchemy import select

from accord.console import service as console_service
from accord.console.models import Note
from accord.profiles.models import Profile
from accord.profiles.private import profile_traits
from conftest import LiveAccord
from console.helpers import catalogue_with_marketing, logged_in, profile_id, track

ANN = {
    "userId": "u-ann",
    "anonymousId": "dev-ann",
    "traits": {"email": "Ann.Lee@Example.com", "phone": "+1 (415) 555-0100", "firstName": "Ann", "lastName": "Lee"},
}


@pytest.fixture
def ann(live: LiveAccord) -> str:
    track(
        live,
        [
            {"type": "track", "anonymousId": "dev-ann", "event": "Product Viewed", "properties": {"sku": "SH-1"}},
            {"type": "identify", **ANN},
            {"type": "identify", "userId": "u-bob", "traits": {"name": "Bob Annandale", "email": "bob@example.com"}},
        ],
    )
    return profile_id(live, "user_id:u-ann")


def search(client: httpx.Client, csrf: str, query: str) -> httpx.Response:
    return client.post("/console/search", data={"q": query, "csrf": csrf})


def found_ids(html: str) -> list[str]:
    return re.findall(r'href="/console/customers/([^"]+)"', html.split('id="results"', 1)[1])


@pytest.mark.parametrize(
    "query",
    [
        "ann.lee@example.com",
        "  ANN.LEE@example.COM ",
        "+1 415 555 0100",
        "+14155550100",
        "u-ann",
        "{id}",
        "Ann Lee",
        "lee",
        "email:ann.lee@example.com",
        "anonymous_id:dev-ann",
    ],
)
def test_find_a_customer_by_any_identifier_or_part_of_the_name(live: LiveAccord, ann: str, query: str) -> None:
    with live.client() as client:
        csrf = logged_in(client, live.rt, "agent")
        answer = search(client, csrf, query.format(id=ann))
    assert answer.status_code == 200
    assert found_ids(answer.text)[0] == ann
    assert "<title>Customers · Accord console</title>" in answer.text


def test_a_name_search_finds_everyone_it_matches_by_whole_words(live: LiveAccord, ann: str) -> None:
    bob = profile_id(live, "user_id:u-bob")
    with live.client() as client:
        csrf = logged_in(client, live.rt, "analyst")
        # Names are encrypted: found through a blind index of each word, whole words, any case.
        assert set(found_ids(search(client, csrf, "ann").text)) == {ann}  # not Bob Annandale
        assert set(found_ids(search(client, csrf, "LEE ann").text)) == {ann}
        assert set(found_ids(search(client, csrf, "ann smith").text)) == set()  # every word must match
        assert set(found_ids(search(client, csrf, "bob").text)) == {bob}
        assert set(found_ids(search(client, csrf, "anna").text)) == set()
        htmx = client.post(
            "/console/search", data={"q": "Annandale"}, headers={"HX-Request": "true", "X-CSRF-Token": csrf}
        )
    assert htmx.status_code == 200
    assert "<html" not in htmx.text  # a fragment for the results region
    assert bob in htmx.text


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("%", 200),
        ("_", 200),
        ("%%%%", 200),
        ("' OR 1=1 --", 200),
        ("nope:ann.lee@example.com", 200),
        ("email:", 200),
        ("nobody@example.com", 200),
        ("x" * 200, 200),
        ("x" * 201, 422),
        ("a\x00b", 422),
        ("", 200),
        ("<script>alert(1)</script>", 200),
    ],
)
def test_hostile_searches_find_nothing_and_break_nothing(live: LiveAccord, ann: str, query: str, status: int) -> None:
    with live.client() as client:
        csrf = logged_in(client, live.rt, "agent")
        answer = search(client, csrf, query)
    assert answer.status_code == status
    if status == 200:
        assert found_ids(answer.text) == []
        assert "<script>alert" not in answer.text


def test_the_360_shows_identities_traits_with_source_timeline_and_no_pii_in_the_title(
    live: LiveAccord, ann: str
) -> None:
    with live.client() as client:
        logged_in(client, live.rt, "agent")
        page = client.get(f"/console/customers/{ann}")
        home = client.get("/console")
    assert page.status_code == 200
    html = page.text
    title = re.search(r"<title>(.*)</title>", html)
    assert title is not None
    assert title.group(1) == "Customer 360 · Accord console"
    for shown in ("ann.lee@example.com", "u-ann", "dev-ann", "Product Viewed", "firstName", "Ann Lee"):
        assert shown in html
    assert re.search(r"<td>firstName</td><td>Ann</td><td>test-source-", html)  # the trait's source, by name
    assert f'sse-connect="/console/customers/{ann}/live?after=' in html
    assert f"/console/customers/{ann}" in home.text.split("Recently viewed")[1]


def test_an_absorbed_profile_id_leads_to_the_person_it_is_part_of(live: LiveAccord) -> None:
    track(live, [{"type": "track", "anonymousId": "dev-x", "event": "Visited"}])
    device = profile_id(live, "anonymous_id:dev-x")
    track(live, [{"type": "identify", "userId": "u-x", "traits": {"name": "Xavier"}}])
    person = profile_id(live, "user_id:u-x")
    track(live, [{"type": "identify", "userId": "u-x", "anonymousId": "dev-x"}])
    survivor = profile_id(live, "user_id:u-x")
    absorbed = device if survivor == person else person
    with live.client() as client:
        logged_in(client, live.rt, "agent")
        answer = client.get(f"/console/customers/{absorbed}")
        assert answer.status_code == 303
        assert answer.headers["location"] == f"/console/customers/{survivor}"
        assert client.get("/console/customers/prof_nobody").status_code == 404
        assert client.get("/console/customers/" + "x" * 41).status_code == 422
        assert client.get("/console/customers/a%00b").status_code == 422


def read_sse(client: httpx.Client, url: str, want: str, *, give_up: float = 20.0) -> str:
    """Read the stream until `want` appears; the whole text read."""
    seen = ""
    deadline = time.monotonic() + give_up
    with client.stream("GET", url) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        for chunk in stream.iter_text():
            seen += chunk
            if want in seen or time.monotonic() > deadline:
                break
    return seen


def test_the_live_timeline_streams_new_events(live: LiveAccord, ann: str) -> None:
    with live.client() as client:
        logged_in(client, live.rt, "agent")
        page = client.get(f"/console/customers/{ann}").text
        url = re.search(r'sse-connect="([^"]+)"', page)
        assert url is not None
        track(live, [{"type": "track", "userId": "u-ann", "event": "Checkout Started", "properties": {"total": 42}}])
        seen = read_sse(client, url.group(1).replace("&amp;", "&"), "Checkout Started")
    assert "event: timeline" in seen
    assert "Checkout Started" in seen
    assert "Product Viewed" not in seen  # only what is new since the page was drawn
    assert re.search(r"^id: \d+$", seen, re.MULTILINE)


def test_the_live_timeline_resumes_after_last_event_id(live: LiveAccord, ann: str) -> None:
    with live.client() as client:
        logged_in(client, live.rt, "agent")
        seen = read_sse(
            client, f"/console/customers/{ann}/live?after=999999999", "Product Viewed", give_up=1.0
        )  # far ahead: nothing
        assert "event: timeline" not in seen
        with client.stream("GET", f"/console/customers/{ann}/live", headers={"Last-Event-ID": "0"}) as stream:
            text = ""
            for chunk in stream.iter_text():
                text += chunk
                if "Product Viewed" in text:
                    break
    assert "Product Viewed" in text


def test_the_live_timeline_needs_a_session(live: LiveAccord, ann: str) -> None:
    with live.client() as client:
        answer = client.get(f"/console/customers/{ann}/live")
    assert answer.status_code == 303


def test_an_agent_records_a_phone_consent_with_evidence_and_opens_its_receipt(live: LiveAccord, ann: str) -> None:
    catalogue_with_marketing(live)
    form = {
        "purpose": "marketing",
        "channel": "email",
        "status": "given",
        "method": "verbal",
        "notice": "privacy|en|1",
        "reference": "CALL-2026-0042",
        "note": "Asked for the newsletter",
    }
    with live.client() as client:
        csrf = logged_in(client, live.rt, "agent")
        answer = client.post(f"/console/customers/{ann}/consents", data={**form, "csrf": csrf})
        assert answer.status_code == 303, answer.text
        page = client.get(answer.headers["location"]).text
        assert "Consent recorded" in page
        assert 'status-given">given' in page
        assert "CALL-2026-0042" in page
        receipt_url = re.search(r'href="(/console/customers/[^"]+/receipts/[^"]+)"', page)
        assert receipt_url is not None
        receipt = client.get(receipt_url.group(1))
    assert receipt.status_code == 200
    assert "Valid: signed with Accord" in receipt.text
    assert "KI-CR-v1.1.0" in receipt.text
    with live.api() as api:
        history = api.get(f"/api/v1/profiles/{ann}/consents/history").json()["records"]
    assert [(r["status"], r["method"], r["actor"]["type"]) for r in history] == [("given", "verbal", "agent")]
    evidence = history[0]["evidence"]
    assert evidence["reference"] == "CALL-2026-0042"
    assert evidence["agent"].endswith("@staff.example")
    assert evidence["recorded_by"].startswith("usr_")


@pytest.mark.parametrize(
    ("change", "status", "message"),
    [
        ({"reference": ""}, 422, "needs evidence.reference"),
        ({"reference": "   "}, 422, "needs evidence.reference"),
        ({"notice": ""}, 422, "needs the notice"),
        ({"notice": "privacy|en|99"}, 422, "no notice"),
        ({"notice": "privacy|en|x"}, 422, "Choose a notice"),
        ({"purpose": "nope"}, 422, "no purpose"),
        ({"channel": "pigeon"}, 422, "no channel"),
        ({"status": "pending"}, 422, "gave, refused or withdrew"),
        ({"method": "api"}, 422, "on the phone or on a form"),
        ({"occurred_at": "yesterday"}, 422, "YYYY-MM-DD"),
        ({"occurred_at": "2999-01-01T00:00"}, 422, "in the future"),
        ({"reference": "r" * 1001}, 422, "at most 1000"),
        ({"reference": "a\x00b"}, 422, "NUL"),
    ],
)
def test_consent_forms_that_prove_nothing_are_refused(
    live: LiveAccord, ann: str, change: dict[str, str], status: int, message: str
) -> None:
    catalogue_with_marketing(live)
    form = {
        "purpose": "marketing",
        "channel": "email",
        "status": "given",
        "method": "verbal",
        "notice": "privacy|en|1",
        "reference": "CALL-1",
        **change,
    }
    with live.client() as client:
        csrf = logged_in(client, live.rt, "agent")
        answer = client.post(f"/console/customers/{ann}/consents", data={**form, "csrf": csrf})
    assert answer.status_code == status
    assert message in answer.text
    with live.api() as api:
        assert api.get(f"/api/v1/profiles/{ann}/consents/history").json()["records"] == []


def test_a_consent_form_without_the_csrf_token_changes_nothing(live: LiveAccord, ann: str) -> None:
    catalogue_with_marketing(live)
    with live.client() as client:
        logged_in(client, live.rt, "agent")
        answer = client.post(
            f"/console/customers/{ann}/consents",
            data={
                "purpose": "marketing",
                "channel": "email",
                "status": "refused",
                "method": "verbal",
                "reference": "x",
            },
        )
    assert answer.status_code == 403
    with live.api() as api:
        assert api.get(f"/api/v1/profiles/{ann}/consents/history").json()["records"] == []


def test_receipts_of_someone_else_are_not_shown(live: LiveAccord, ann: str) -> None:
    catalogue_with_marketing(live)
    bob = profile_id(live, "user_id:u-bob")
    with live.api() as api:
        made = api.post(
            f"/api/v1/profiles/{bob}/consents",
            json={"purpose": "marketing", "channel": "email", "status": "refused", "method": "api"},
        )
        assert made.status_code == 201, made.text
        record = made.json()["record"]["id"]
    with live.client() as client:
        logged_in(client, live.rt, "agent")
        assert client.get(f"/console/customers/{bob}/receipts/{record}").status_code == 200
        assert client.get(f"/console/customers/{ann}/receipts/{record}").status_code == 404
        assert client.get(f"/console/customers/{ann}/receipts/x'y").status_code == 422


def test_an_agent_corrects_a_trait_through_the_event_log(live: LiveAccord, ann: str) -> None:
    with live.client() as client:
        csrf = logged_in(client, live.rt, "agent")
        answer = client.post(
            f"/console/customers/{ann}/traits", data={"name": "lastName", "value": "Lee-Smith", "csrf": csrf}
        )
        assert answer.status_code == 303
        live.wait_processed()
        page = client.get(f"/console/customers/{ann}").text
        cleared = client.post(f"/console/customers/{ann}/traits", data={"name": "phone", "clear": "yes", "csrf": csrf})
        assert cleared.status_code == 303
        live.wait_processed()
    assert re.search(r"<td>lastName</td><td>Lee-Smith</td><td>accord-console</td>", page)
    assert "identify</strong> · lastName" in page  # the correction is in the timeline too
    with live.rt.db.read() as session:
        profile = session.get(Profile, ann)
        assert profile is not None
        assert profile_traits(session, profile)["lastName"] == "Lee-Smith"
        assert profile_traits(session, profile).get("phone") is None
        assert "lastName" not in profile.traits  # stored encrypted, in traits_enc


@pytest.mark.parametrize(
    ("form", "status"),
    [
        ({"name": "", "value": "x"}, 422),
        ({"name": "1abc", "value": "x"}, 422),
        ({"name": "a b", "value": "x"}, 422),
        ({"name": "n" * 101, "value": "x"}, 422),
        ({"name": "plan", "value": "v" * 2001}, 422),
        ({"name": "plan", "value": "a\x00"}, 422),
    ],
)
def test_bad_trait_corrections_are_refused(live: LiveAccord, ann: str, form: dict[str, str], status: int) -> None:
    with live.client() as client:
        csrf = logged_in(client, live.rt, "agent")
        answer = client.post(f"/console/customers/{ann}/traits", data={**form, "csrf": csrf})
    assert answer.status_code == status
    assert live.pending() == 0


def test_notes_are_kept_with_their_author(live: LiveAccord, ann: str) -> None:
    with live.client() as client:
        csrf = logged_in(client, live.rt, "agent")
        assert (
            client.post(
                f"/console/customers/{ann}/notes", data={"text": "  Called about <b>billing</b> ", "csrf": csrf}
            ).status_code
            == 303
        )
        for bad in ("", "   ", "n" * 4001):
            assert client.post(f"/console/customers/{ann}/notes", data={"text": bad, "csrf": csrf}).status_code == 422
        page = client.get(f"/console/customers/{ann}").text
    assert "Called about &lt;b&gt;billing&lt;/b&gt;" in page
    with live.rt.db.read() as session:
        stored = session.scalars(select(Note)).all()
        notes = console_service.notes(session, [ann])
    assert [(n.profile_id, n.text) for n in notes] == [(ann, "Called about <b>billing</b>")]
    assert notes[0].author_email.endswith("@staff.example")
    assert [n.text.startswith(f"e1.{ann}.") for n in stored] == [True]  # sealed under the customer's key


def test_an_admin_unmerges_from_the_merge_history(live: LiveAccord) -> None:
    track(live, [{"type": "track", "anonymousId": "dev-m", "event": "Visited"}])
    track(live, [{"type": "identify", "userId": "u-m", "anonymousId": "dev-m", "traits": {"name": "Mia"}}])
    person = profile_id(live, "user_id:u-m")
    with live.client() as client:
        csrf = logged_in(client, live.rt, "admin")
        page = client.get(f"/console/customers/{person}").text
        merge_id = re.search(r'name="merge_id" value="(\d+)"', page)
        assert merge_id is not None
        assert (
            client.post(f"/console/customers/{person}/unmerge", data={"merge_id": "x", "csrf": csrf}).status_code == 422
        )
        answer = client.post(f"/console/customers/{person}/unmerge", data={"merge_id": merge_id.group(1), "csrf": csrf})
        assert answer.status_code == 303
        again = client.post(f"/console/customers/{person}/unmerge", data={"merge_id": merge_id.group(1), "csrf": csrf})
        assert again.status_code == 409
    assert profile_id(live, "anonymous_id:dev-m") != profile_id(live, "user_id:u-m")
