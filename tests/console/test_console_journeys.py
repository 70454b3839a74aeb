"""Journeys in the console (SQLite and PostgreSQL): positions with time in stage on the customer 360, and a
funnel per journey on the dashboard."""

from __future__ import annotations

import re
from datetime import timedelta

from accord.console import service as console_service
from accord.console.render import templates
from accord.db.base import utcnow
from accord.journeys import service as journeys
from accord.journeys.models import JourneyPosition
from conftest import LiveAccord
from console.helpers import logged_in, profile_id, track

SHOP = {
    "stages": [
        {"key": "viewed", "name": "Viewed a product", "condition": {"event": "Product Viewed"}},
        {"key": "carted", "name": "Added to cart", "condition": {"event": "Product Added"}},
        {"key": "checkout", "condition": {"event": "Checkout Started"}},
    ],
    "goal": {"event": "Order Completed"},
}


def define(live: LiveAccord) -> None:
    with live.rt.db.unit_of_work() as session:
        journeys.create(session, key="shop", name="Shop", description="", definition=SHOP, actor="t", now=utcnow())
    deadline = utcnow() + timedelta(seconds=30)
    while True:
        with live.rt.db.read() as session:
            if journeys.get(session, "shop").status == "ready":
                return
        assert utcnow() < deadline


def test_the_360_shows_journey_positions_with_time_in_stage(live: LiveAccord) -> None:
    define(live)
    track(live, [{"type": "track", "userId": "u-ann", "event": "Product Added"}])
    ann = profile_id(live, "user_id:u-ann")
    with live.rt.db.unit_of_work() as session:  # entered the stage 3 hours and 5 minutes ago
        row = session.get(JourneyPosition, ("shop", ann))
        assert row is not None
        row.stage_entered_at = utcnow() - timedelta(hours=3, minutes=5)
    with live.client() as client:
        logged_in(client, live.rt, "agent")
        page = client.get(f"/console/customers/{ann}")
    assert page.status_code == 200
    section = page.text[page.text.index('id="journeys"') :]
    section = section[: section.index("</section>")]
    assert "Shop" in section
    assert "Added to cart" in section
    assert "stage 2 of 3" in section
    assert "active" in section
    assert re.search(r"<td>3 h 5 min</td>", section), section


def test_the_360_says_when_a_customer_is_in_no_journey(live: LiveAccord) -> None:
    track(live, [{"type": "identify", "userId": "u-bo", "traits": {"plan": "free"}}])
    with live.client() as client:
        logged_in(client, live.rt, "agent")
        page = client.get(f"/console/customers/{profile_id(live, 'user_id:u-bo')}")
    assert "In no journey." in page.text


def test_the_dashboard_shows_a_funnel_per_journey(live: LiveAccord) -> None:
    define(live)
    track(
        live,
        [
            *({"type": "track", "userId": f"v{i}", "event": "Product Viewed"} for i in range(4)),
            *({"type": "track", "userId": f"v{i}", "event": "Product Added"} for i in range(2)),
            {"type": "track", "userId": "v0", "event": "Order Completed"},
        ],
    )
    with live.client() as client:
        logged_in(client, live.rt, "analyst")
        page = client.get("/console/dashboard")
    assert page.status_code == 200
    funnel = page.text[page.text.index('id="funnels"') :]
    assert "4 entered: 3 still in it, 1 completed, 0 exited." in funnel
    # Each person's events came in one run: they entered at their furthest stage, so the first stage counts
    # the two who went on as reached but not stood in.
    assert re.search(r"<td>Viewed a product</td><td>4</td><td>2</td>\s*<td>50.0 %</td>", funnel), funnel
    assert re.search(r"<td>Added to cart</td><td>2</td><td>2</td>\s*<td>0.0 %</td>", funnel), funnel
    assert "Profiles that reached each stage of Shop" in funnel


def test_the_dashboard_without_journeys(live: LiveAccord) -> None:
    with live.client() as client:
        logged_in(client, live.rt, "analyst")
        assert "No journeys yet." in client.get("/console/dashboard").text


def test_durations_read_as_two_units() -> None:
    duration = templates.filters["duration"]
    assert [duration(s) for s in (0, 59.9, 61, 3600 * 3 + 300, 86400 * 2 + 7200 + 5, None)] == [
        "0 s",
        "59 s",
        "1 min 1 s",
        "3 h 5 min",
        "2 d 2 h",
        "",
    ]


def test_a_median_time_between_stages_shows_on_the_dashboard(live: LiveAccord) -> None:
    define(live)
    now = utcnow()
    with live.rt.db.unit_of_work() as session:
        for n, minutes in enumerate((10, 30, 50)):
            entered = now - timedelta(hours=1)
            session.add(
                JourneyPosition(
                    journey_key="shop",
                    profile_id=f"p{n}",
                    stage="carted",
                    stage_entered_at=entered + timedelta(minutes=minutes),
                    entered_at=entered,
                    state="active",
                    path={"viewed": entered.isoformat(), "carted": (entered + timedelta(minutes=minutes)).isoformat()},
                )
            )
    with live.rt.db.read() as session:
        [view] = console_service.journey_funnels(session, now=now)
    assert view.funnel.stages[0].median_seconds_to_next == 30 * 60
    with live.client() as client:
        logged_in(client, live.rt, "analyst")
        assert '30 min <span class="note">(of 3)</span>' in client.get("/console/dashboard").text
