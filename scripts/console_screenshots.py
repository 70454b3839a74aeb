"""Screenshots of the console's main pages for docs/console.md: `make screenshots`.

Starts Accord on a throw-away SQLite data directory, sends a few synthetic customers through the tracking
API, logs in with Playwright driving Debian's Chromium (`apt-get install -y chromium`) and writes PNGs to
docs/console/. Everything shown is made up here.
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from accord.app import create_app
from accord.config import Settings
from accord.consent import catalogue
from accord.db import migrate
from accord.db.base import utcnow
from accord.journeys import service as journeys
from accord.runtime import Runtime
from accord.security import users
from accord.sources.service import create_source

OUT = Path(__file__).resolve().parent.parent / "docs" / "console"
CHROMIUM = "/usr/bin/chromium"
PASSWORD = "screenshots only, thrown away"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]


def _customers(base: str, write_key: str) -> None:
    people = [
        ("u-1001", "Ann", "Lee", "ann.lee@example.com", "+14155550100", "gold"),
        ("u-1002", "Omar", "Leeds", "omar.leeds@example.net", "+442071838750", "silver"),
        ("u-1003", "Jo", "Kleene", "jo.kleene@example.org", "+4930901820", "bronze"),
    ]
    batch: list[dict[str, Any]] = []
    for user_id, first, last, email, phone, plan in people:
        device = f"dev-{user_id}"
        batch += [
            {"type": "page", "anonymousId": device, "name": "Home", "properties": {"path": "/"}},
            {"type": "track", "anonymousId": device, "event": "Product Viewed", "properties": {"sku": "SH-1001"}},
            {
                "type": "identify",
                "userId": user_id,
                "anonymousId": device,
                "traits": {"email": email, "phone": phone, "firstName": first, "lastName": last, "plan": plan},
            },
            {"type": "track", "userId": user_id, "event": "Order Completed", "properties": {"total": 129.5}},
        ]
    with httpx.Client(base_url=base, auth=(write_key, "")) as client:
        client.post("/v1/batch", json={"batch": batch}).raise_for_status()


def _catalogue(rt: Runtime) -> None:
    now = utcnow()
    with rt.db.unit_of_work() as session:
        catalogue.put_purpose(
            session,
            key="marketing",
            name="Marketing",
            description="News and offers",
            legal_basis="consent",
            expires_after_days=730,
            channels=["email", "sms"],
            now=now,
        )
        catalogue.add_notice_version(
            session,
            key="privacy",
            language="en",
            title="How we use your data",
            text="We send news and offers to people who agree to it.",
            purposes=["marketing"],
            url=None,
            now=now,
        )
        shop = [
            {"key": "browsing", "name": "Browsing", "condition": {"event": "Product Viewed"}},
            {"key": "known", "name": "Signed in", "condition": {"trait": "email", "op": "exists"}},
            {"key": "ordered", "name": "Ordered", "condition": {"event": "Order Completed"}},
        ]
        care = [
            {"key": "customer", "name": "Customer", "condition": {"event": "Order Completed"}},
            {"key": "called", "name": "Called support", "condition": {"event": "Support Call Started"}},
            {"key": "resolved", "name": "Resolved", "condition": {"event": "Ticket Resolved"}},
        ]
        for key, name, stages in (("first-order", "First order", shop), ("care", "Customer care", care)):
            journeys.create(
                session, key=key, name=name, description="", definition={"stages": stages}, actor="docs", now=now
            )
        users.create_user(session, email="agent@example.com", role="agent", password=PASSWORD, now=now)
        users.create_user(session, email="admin@example.com", role="admin", password=PASSWORD, now=now)


def _log_in(page: Any, email: str) -> None:
    page.goto("/console/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url("**/console")


def _shoot(page: Any, name: str, *, full: bool = False) -> None:
    path = OUT / f"{name}.png"
    page.screenshot(path=str(path), full_page=full)
    print(f"{path.relative_to(OUT.parent.parent)}: {path.stat().st_size // 1024} KiB")


def main() -> int:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        print("Playwright for Python is missing: pip install -e '.[dev]'", file=sys.stderr)
        return 1
    if not Path(CHROMIUM).exists():
        print(f"{CHROMIUM} is missing: apt-get install -y chromium", file=sys.stderr)
        return 1
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as data:
        settings = Settings(data_dir=Path(data), controller_name="Example Ltd", rate_limit_login="")
        rt = Runtime.create(settings)
        migrate.upgrade(rt.db)
        with rt.db.unit_of_work() as session:
            write_key = create_source(session, name="website").write_key
        _catalogue(rt)
        server = uvicorn.Server(uvicorn.Config(create_app(rt=rt, worker="thread"), port=0, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]
        base = f"http://127.0.0.1:{port}"
        try:
            _customers(base, write_key)
            while rt.log.pending():
                time.sleep(0.05)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                context = browser.new_context(base_url=base, viewport={"width": 1280, "height": 800})
                page = context.new_page()
                page.goto("/console/login")
                _shoot(page, "login")
                _log_in(page, "agent@example.com")
                page.get_by_label("Name, email, phone, user id or profile id").fill("lee")
                page.get_by_role("button", name="Search").click()
                page.get_by_role("link", name="Ann Lee").wait_for()
                _shoot(page, "search")
                page.get_by_role("link", name="Ann Lee").click()
                page.wait_for_url("**/console/customers/*")
                page.get_by_text("Record a consent given on the phone or in a branch").click()
                form = page.locator("#consent-form")
                form.get_by_label("Channel").select_option("email")
                form.get_by_label("Notice read to or shown to them").select_option("privacy|en|1")
                form.get_by_label("Call or form reference (required)").fill("CALL-2026-0042")
                form.get_by_role("button", name="Record consent").click()
                page.get_by_text("Consent recorded").wait_for()
                with httpx.Client(base_url=base, auth=(write_key, "")) as client:
                    client.post("/v1/track", json={"userId": "u-1001", "event": "Support Call Started"})
                page.locator("#timeline li.new").first.wait_for()
                _shoot(page, "customer-360", full=True)
                page.get_by_role("link", name="Receipt for marketing on email").click()
                _shoot(page, "receipt")
                context.close()
                context = browser.new_context(base_url=base, viewport={"width": 1280, "height": 800})
                page = context.new_page()
                _log_in(page, "admin@example.com")
                page.goto("/console/segments")
                page.get_by_label("Key (an existing key makes a new version)").fill("gold")
                page.get_by_label("Name").fill("Gold customers")
                page.get_by_text("The condition is valid.").wait_for()
                page.get_by_role("button", name="Save segment").click()
                page.get_by_text("Segment saved").wait_for()
                page.get_by_label("Condition (JSON, checked as you type)").fill(
                    '{"all": [{"trait": "plan", "op": "equals"}]}'
                )
                page.get_by_text("Not usable yet").wait_for()
                _shoot(page, "segments")
                page.goto("/console/journeys?edit=first-order")
                page.get_by_text("The definition is valid.").wait_for()
                _shoot(page, "journeys")
                page.goto("/console/dashboard")
                _shoot(page, "dashboard", full=True)
                page.goto("/console/admin/users")
                _shoot(page, "admin-users")
                page.goto("/console/admin/consent")
                _shoot(page, "admin-consent")
                context.close()
                tablet = browser.new_context(base_url=base, viewport={"width": 768, "height": 1024})
                page = tablet.new_page()
                _log_in(page, "agent@example.com")
                page.get_by_role("link", name="Ann Lee").click()
                page.wait_for_url("**/console/customers/*")
                _shoot(page, "customer-360-tablet")
                tablet.close()
                browser.close()
        finally:
            server.should_exit = True
            thread.join(timeout=15)
            rt.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
