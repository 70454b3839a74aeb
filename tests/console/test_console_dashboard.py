"""The dashboard: the live event rate and processing lag, and segment sizes worked back over 14 days."""

from __future__ import annotations

import json
import re
from datetime import timedelta

from accord.console import service as console_service
from accord.db.base import utcnow
from accord.runtime import Runtime
from accord.segments import service as segments
from accord.segments.models import SegmentMembership, SegmentTransition
from conftest import LiveAccord
from console.helpers import logged_in, track


def test_the_dashboard_counts_events_and_shows_segment_sizes(live: LiveAccord) -> None:
    with live.client() as client:
        csrf = logged_in(client, live.rt, "analyst")
        condition = json.dumps({"trait": "plan", "op": "eq", "value": "gold"})
        client.post("/console/segments", data={"key": "gold", "condition": condition, "csrf": csrf})
        track(live, [{"type": "identify", "userId": f"u-{i}", "traits": {"plan": "gold"}} for i in range(3)])
        page = client.get("/console/dashboard")
        live_panel = client.get("/console/dashboard/live", headers={"HX-Request": "true"})
    assert page.status_code == 200
    assert re.search(r"<dt>Stored in the last minute</dt><dd>3</dd>", page.text)
    assert re.search(r"<dt>Waiting in the event log</dt><dd>0</dd>", page.text)
    assert "<h3>gold</h3>" in page.text
    assert page.text.count("<svg") == 2
    assert live_panel.status_code == 200
    assert 'hx-trigger="every 5s"' in live_panel.text
    assert "<html" not in live_panel.text


def test_segment_sizes_are_worked_back_from_entries_and_exits(rt: Runtime) -> None:
    now = utcnow()
    condition = {"trait": "plan", "op": "eq", "value": "gold"}
    with rt.db.unit_of_work() as session:
        segments.create(session, key="gold", name="", description="", condition=condition, actor="test", now=now)
        # a and b entered three days ago, b left two days ago, c entered today: a and c are members now.
        for days, kind, who in ((3, "entered", "a"), (3, "entered", "b"), (2, "exited", "b"), (0, "entered", "c")):
            at = now - timedelta(days=days)
            session.add(SegmentTransition(segment_key="gold", profile_id=who, kind=kind, version=1, at=at))
        for who in ("a", "c"):
            session.add(SegmentMembership(segment_key="gold", profile_id=who, entered_at=now))
    with rt.db.read() as session:
        history = console_service.segment_history(session, now=now)["gold"]
    # The end of each day, oldest first: nobody; a and b; a; a; a and c.
    assert [bar.value for bar in history][-5:] == [0, 2, 1, 1, 2]
    assert len(history) == 14


def test_agents_do_not_reach_the_dashboard(live: LiveAccord) -> None:
    with live.client() as client:
        logged_in(client, live.rt, "agent")
        assert client.get("/console/dashboard").status_code == 403
        assert client.get("/console/dashboard/live").status_code == 403
