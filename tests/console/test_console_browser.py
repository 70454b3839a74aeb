"""The console in a real browser: Playwright driving Debian's Chromium (headless) against a live Accord.

Skipped, saying why, when /usr/bin/chromium or Playwright is missing; failed instead when
ACCORD_TEST_REQUIRE_SERVICES=1 (CI installs Chromium with apt)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from accord.db import migrate
from accord.runtime import Runtime
from conftest import REQUIRE_SERVICES, LiveAccord, make_settings, running_accord
from console.helpers import PASSWORD, catalogue_with_marketing, make_user, track
from security.fake_oidc import CLIENT_ID, CLIENT_SECRET, FakeProvider, running_provider

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _unavailable(reason: str) -> None:
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason}; ACCORD_TEST_REQUIRE_SERVICES=1 demands the browser tests run")
    pytest.skip(f"{reason}; install it with `apt-get install -y chromium` to run the browser tests")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} is missing")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("Playwright for Python is not installed (pip install -e '.[dev]')")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def site(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[LiveAccord]:
    """A live Accord on SQLite: the browser tests check pages, the storage tests check both databases."""
    rt = Runtime.create(make_settings("sqlite", tmp_path, request))
    migrate.upgrade(rt.db)
    try:
        with running_accord(rt) as accord:
            yield accord
    finally:
        rt.close()


@pytest.fixture
def page(browser: Any, site: LiveAccord) -> Iterator[Any]:
    context = browser.new_context(base_url=site.base_url, viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    # A ceiling on waiting, not a speed: under `make test` (three test processes and Chromium on two
    # cores) the first page load of a run once took longer than 10 s.
    opened.set_default_timeout(30_000)
    try:
        yield opened
    finally:
        context.close()  # closes the live stream before the server stops


def log_in(page: Any, email: str) -> None:
    page.goto("/console")
    assert page.url.endswith("/console/login?next=/console")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url("**/console")


def seed(site: LiveAccord) -> None:
    track(
        site,
        [
            {"type": "track", "anonymousId": "dev-ann", "event": "Product Viewed", "properties": {"sku": "SH-1"}},
            {
                "type": "identify",
                "userId": "u-ann",
                "anonymousId": "dev-ann",
                "traits": {"email": "ann.lee@example.com", "firstName": "Ann", "lastName": "Lee"},
            },
        ],
    )


def open_ann(page: Any) -> None:
    page.get_by_label("Name, email, phone, user id or profile id").fill("ann.lee@example.com")
    page.get_by_role("button", name="Search").click()
    page.get_by_role("link", name="Ann Lee").click()
    page.wait_for_url(re.compile(r".*/console/customers/[^/]+$"))


def test_log_in_find_a_customer_and_watch_an_event_arrive_live(page: Any, site: LiveAccord) -> None:
    from playwright.sync_api import expect

    seed(site)
    log_in(page, make_user(site.rt, "agent"))
    open_ann(page)
    expect(page).to_have_title("Customer 360 · Accord console")
    assert "ann.lee@example.com" not in page.url
    expect(page.locator("#identities")).to_contain_text("u-ann")
    expect(page.locator("#timeline")).to_contain_text("Product Viewed")
    expect(page.locator("#live-notice")).to_contain_text("Live")  # the stream is open
    sent = time.monotonic()
    with httpx.Client(base_url=site.base_url, auth=(site.write_key, "")) as client:
        answer = client.post("/v1/track", json={"userId": "u-ann", "event": "Support Call Started"})
        assert answer.status_code == 200
    # Acknowledged, then stored by the worker, then pushed to the open page: within a second.
    expect(page.locator("#timeline li").first).to_contain_text("Support Call Started", timeout=1000)
    assert time.monotonic() - sent < 5  # a guard against the assertion above being loosened, not a benchmark
    expect(page.locator("#timeline li")).to_have_count(3)  # nothing reloaded, nothing doubled


def test_record_a_phone_consent_and_open_its_receipt(page: Any, site: LiveAccord) -> None:
    from playwright.sync_api import expect

    seed(site)
    catalogue_with_marketing(site)
    email = make_user(site.rt, "agent")
    log_in(page, email)
    open_ann(page)
    page.get_by_text("Record a consent given on the phone or in a branch").click()
    form = page.locator("#consent-form")
    form.get_by_label("Purpose").select_option("marketing")
    form.get_by_label("Channel").select_option("phone")
    form.get_by_label("The person").select_option("given")
    form.get_by_label("How they told you").select_option("verbal")
    form.get_by_label("Notice read to or shown to them").select_option("privacy|en|1")
    expect(form).to_contain_text(email)  # the agent is filled in
    form.get_by_role("button", name="Record consent").click()
    # The reference is required: the browser will not send the form without it.
    expect(page.get_by_role("alert")).to_have_count(0)
    form.get_by_label("Call or form reference (required)").fill("CALL-2026-0042")
    form.get_by_role("button", name="Record consent").click()
    expect(page.get_by_role("status").first).to_contain_text("Consent recorded")
    expect(page.locator("#consents table").first).to_contain_text("given")
    page.get_by_role("link", name="Receipt for marketing on phone").click()
    expect(page).to_have_title("Consent receipt · Accord console")
    expect(page.get_by_role("status")).to_contain_text("Valid: signed with Accord's Ed25519 key")
    expect(page.locator("pre").first).to_contain_text('"collectionMethod": "verbal"')


def test_journey_positions_on_the_360_and_funnels_on_the_dashboard(page: Any, site: LiveAccord) -> None:
    from playwright.sync_api import expect

    from accord.db.base import utcnow
    from accord.journeys import service as journeys

    stages = [
        {"key": "viewed", "name": "Viewed a product", "condition": {"event": "Product Viewed"}},
        {"key": "called", "name": "Called support", "condition": {"event": "Support Call Started"}},
    ]
    with site.rt.db.unit_of_work() as session:
        journeys.create(
            session, key="care", name="Care", description="", definition={"stages": stages}, actor="t", now=utcnow()
        )
    seed(site)  # Ann viewed a product: the first stage
    log_in(page, make_user(site.rt, "admin"))
    open_ann(page)
    positions = page.get_by_role("table", name="Where the customer stands in each journey")
    expect(positions).to_contain_text("Viewed a product")
    expect(positions).to_contain_text("stage 1 of 2")
    expect(positions).to_contain_text("active")
    expect(page.locator("#live-notice")).to_contain_text("Live")  # the stream is open
    track(site, [{"type": "track", "userId": "u-ann", "event": "Support Call Started"}])
    # No reload: the live stream sends the positions again after the new event.
    expect(positions).to_contain_text("Called support")
    expect(positions).to_contain_text("completed")
    expect(page.locator("#timeline li")).to_have_count(3)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Dashboard").click()
    funnel = page.get_by_role("table", name="Funnel of Care")
    expect(funnel).to_contain_text("Viewed a product")
    expect(funnel.get_by_role("row").nth(1)).to_contain_text("100.0 %")  # Ann went on to the next stage
    expect(page.get_by_role("img", name="Profiles that reached each stage of Care")).to_be_visible()


def test_an_agent_cannot_reach_configuration_pages(page: Any, site: LiveAccord) -> None:
    from playwright.sync_api import expect

    log_in(page, make_user(site.rt, "agent"))
    expect(page.get_by_role("navigation", name="Main")).not_to_contain_text("Configuration")
    for path in ("/console/admin", "/console/admin/sources", "/console/admin/users", "/console/admin/consent"):
        response = page.goto(path)
        assert response is not None
        assert response.status == 403
        expect(page.get_by_role("heading", level=1)).to_have_text("Not for your role")


def test_an_admin_reaches_configuration_and_sees_a_write_key_once(page: Any, site: LiveAccord) -> None:
    from playwright.sync_api import expect

    log_in(page, make_user(site.rt, "admin"))
    page.get_by_role("link", name="Configuration").click()
    page.get_by_role("link", name="Sources and write keys").click()
    page.get_by_label("Name", exact=True).fill("kiosk")
    page.get_by_role("button", name="Create source").click()
    key = page.get_by_label("Write key").input_value()
    assert key.startswith("wk_")
    page.reload()
    expect(page.get_by_label("Write key")).to_have_count(0)


def test_the_keyboard_alone_logs_in_finds_and_opens_a_customer(page: Any, site: LiveAccord) -> None:
    from playwright.sync_api import expect

    email = make_user(site.rt, "agent")
    seed(site)
    page.goto("/console/login")
    expect(page.get_by_label("Email")).to_be_focused()  # autofocus
    page.keyboard.type(email)
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    page.wait_for_url("**/console")
    expect(page.get_by_label("Name, email, phone, user id or profile id")).to_be_focused()
    page.keyboard.type("Ann")
    page.keyboard.press("Enter")
    expect(page.get_by_role("link", name="Ann Lee")).to_be_visible()
    page.keyboard.press("Tab")  # from the search field: the button, then the first result
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Ann Lee")).to_be_focused()
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r".*/console/customers/[^/]+$"))
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to main content")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.get_by_role("main")).to_be_focused()
    for landmark in ("banner", "main", "contentinfo"):
        expect(page.get_by_role(landmark)).to_have_count(1)
    expect(page.get_by_role("navigation", name="Main")).to_be_visible()


@pytest.mark.parametrize("width", [1280, 768])
def test_pages_fit_the_width_without_sideways_scrolling(browser: Any, site: LiveAccord, width: int) -> None:
    seed(site)
    email = make_user(site.rt, "admin")
    context = browser.new_context(base_url=site.base_url, viewport={"width": width, "height": 1000})
    try:
        page = context.new_page()
        log_in(page, email)
        open_ann(page)
        customer = page.url
        for url in (customer, "/console", "/console/segments", "/console/dashboard", "/console/admin/users"):
            page.goto(url)
            overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
            assert overflow <= 0, (url, width, overflow)
    finally:
        context.close()


def test_every_form_control_has_a_label(page: Any, site: LiveAccord) -> None:
    seed(site)
    catalogue_with_marketing(site)
    log_in(page, make_user(site.rt, "admin"))
    open_ann(page)
    customer = page.url
    pages = ("/console", "/console/segments", "/console/dashboard", "/console/admin/sources", "/console/admin/users")
    for url in (customer, *pages, "/console/admin/consent"):
        page.goto(url)
        unlabelled = page.evaluate(
            """[...document.querySelectorAll('input:not([type=hidden]), select, textarea')]
                 .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label'))
                 .map(e => e.name || e.id)"""
        )
        assert unlabelled == [], (url, unlabelled)


@pytest.fixture
def sso_site(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[LiveAccord, FakeProvider]]:
    """A live Accord on 127.0.0.1 with single sign-on through a fake provider on localhost: another site, so
    the browser treats the way back from the provider as cross-site, as with a real provider."""
    with running_provider(host="localhost") as provider:
        provider.interactive = True
        secret = tmp_path / "client-secret"
        secret.write_text(CLIENT_SECRET)
        settings = make_settings(
            "sqlite",
            tmp_path,
            request,
            oidc_issuer=provider.issuer,
            oidc_client_id=CLIENT_ID,
            oidc_client_secret_file=secret,
            oidc_role_map={"accord-agents": "agent"},
            oidc_name="Corp SSO",
        )
        rt = Runtime.create(settings)
        migrate.upgrade(rt.db)
        try:
            with running_accord(rt) as accord:
                yield accord, provider
        finally:
            rt.close()


def test_log_in_through_the_single_sign_on_button(browser: Any, sso_site: tuple[LiveAccord, FakeProvider]) -> None:
    from playwright.sync_api import expect

    site, provider = sso_site
    context = browser.new_context(base_url=site.base_url, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    try:
        page.goto("/console/segments")
        assert page.url.endswith("/console/login?next=/console/segments")
        page.get_by_role("link", name="Log in with Corp SSO").click()
        page.get_by_role("button", name="Sign in").click()  # at the provider
        # Back from the provider's page: the session cookie is SameSite=Strict, so the landing page must be
        # reached by a navigation of Accord's own page, not by the provider's redirect.
        page.wait_for_url("**/console/segments")
        expect(page.locator(".who")).to_contain_text("alice@corp.example")
        expect(page.locator(".who .role")).to_have_text("agent")
        assert provider.token_requests == 1
        page.goto("/console/admin")
        expect(page.get_by_role("heading", level=1)).to_have_text("Not for your role")
        # Logging out goes on to the provider's end-session page (past the console's form-action 'self'),
        # which sends the browser back to the login page.
        page.get_by_role("button", name="Log out").click()
        page.wait_for_url("**/console/login")
        assert [logout["id_token_hint"] for logout in provider.logouts] == provider.issued
        page.goto("/console")
        assert page.url.endswith("/console/login?next=/console")
    finally:
        context.close()


def test_define_a_journey_in_the_editor_that_checks_as_you_type(page: Any, site: LiveAccord) -> None:
    from playwright.sync_api import expect

    log_in(page, make_user(site.rt, "analyst"))
    page.get_by_role("link", name="Journeys").click()
    page.wait_for_url("**/console/journeys")
    expect(page.locator("#condition-state")).to_have_text("The definition is valid.")  # the example
    page.get_by_label("Key (an existing key makes a new version)").fill("onboarding")
    page.get_by_label("Name", exact=True).fill("Onboarding")
    editor = page.get_by_label("Definition (JSON, checked as you type)")
    editor.fill("")
    editor.press_sequentially('{"stages": [{"key": "signed", "condition": {"event": "Signed Up"}}], "goal": {"x": 1}}')
    expect(page.locator("#condition-state")).to_contain_text("Not usable yet: $.goal")
    editor.fill('{"stages": [{"key": "signed", "condition": {"event": "Signed Up"}}]}')
    expect(page.locator("#condition-state")).to_have_text("The definition is valid.")
    page.get_by_role("button", name="Save journey").click()
    page.wait_for_url("**/console/journeys?done=saved")
    expect(page.get_by_role("status")).to_have_text("Journey saved; positions are being worked out.")
    expect(page.locator("#journeys-list tbody tr").first).to_contain_text("onboarding")
