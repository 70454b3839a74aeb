"""The journey stage machine in the pipeline (SQLite and PostgreSQL): forward-only, skips, goal and exit,
time limits through the sweep, merges, redelivery; and a Hypothesis property that streaming positions
equal a batch recompute for random event sequences."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from accord.db import engine
from accord.ingest.spec import normalise_request
from accord.journeys import machine, service
from accord.journeys.models import JourneyPosition, JourneyTransition
from accord.pipeline.process import process_events
from accord.runtime import Runtime
from accord.segments import service as segments
from accord.segments.models import SegmentMembership
from pipeline.helpers import reset, unmerge_the_merge
from segments.test_streaming import bulk_load

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
SHOP = {
    "stages": [
        {"key": "viewed", "condition": {"event": "Viewed"}},
        {"key": "carted", "condition": {"event": "Carted"}},
        {"key": "checkout", "condition": {"event": "Checkout"}},
    ],
    "goal": {"event": "Bought"},
    "exit": {"trait": "optout", "op": "eq", "value": True},
}
GOLDEN = {  # reads a segment and a trait; no goal: reaching the last stage completes it
    "stages": [
        {"key": "known", "condition": {"trait": "email", "op": "exists"}},
        {"key": "gold", "condition": {"segment": "gold"}},
    ]
}
TIMED = {
    "stages": [
        {"key": "a", "condition": {"event": "A"}, "time_limit": "2h"},
        {"key": "b", "condition": {"event": "B"}},
        {"key": "c", "condition": {"event": "C"}},
    ],
    "goal": {"event": "Done"},
    "time_limit": "1d",
}


def run(rt: Runtime, events: list[dict[str, Any]], now: datetime = NOW) -> None:
    items = [
        ("src", e) for e in normalise_request({"batch": events}, endpoint="batch", received_at=now, client_ip=None)
    ]
    with rt.db.unit_of_work() as session:
        process_events(session, items, lock_rows=rt.db.dialect == "postgresql", now=now)


def define(rt: Runtime, journeys: dict[str, dict[str, Any]], now: datetime = NOW) -> None:
    with rt.db.unit_of_work() as session:
        if "gold" not in {s.key for s in segments.listing(session)}:
            segments.create(
                session,
                key="gold",
                name="gold",
                description="",
                condition={"trait": "plan", "op": "eq", "value": "gold"},
                actor="t",
                now=now,
            )
        for key, definition in journeys.items():
            service.create(session, key=key, name=key, description="", definition=definition, actor="t", now=now)
    for pending in ((segments, "gold"), *((service, key) for key in journeys)):
        module, key = pending
        while True:
            with rt.db.unit_of_work() as session:
                if module.backfill_step(session, key, now=now, limit=3).finished:  # type: ignore[attr-defined]
                    break


def positions(rt: Runtime) -> dict[str, dict[str, machine.Position]]:
    with rt.db.read() as session:
        ids = list(session.scalars(select(JourneyPosition.profile_id).distinct()))
        return machine.positions(session, ids)


def where(rt: Runtime, user: str, journey: str) -> tuple[str, str] | None:
    found = positions(rt).get(profile_of(rt, user), {}).get(journey)
    return None if found is None else (found.stage, found.state)


def profile_of(rt: Runtime, user: str) -> str:
    from accord.profiles.service import resolve

    with rt.db.read() as session:
        found = resolve(session, f"user_id:{user}")
        assert found is not None
        return found.id


def moves(rt: Runtime, user: str) -> list[tuple[str, str, str | None]]:
    profile = profile_of(rt, user)
    with rt.db.read() as session:
        rows = session.scalars(
            select(JourneyTransition).where(JourneyTransition.profile_id == profile).order_by(JourneyTransition.id)
        )
        return [(t.kind, t.stage, t.reason) for t in rows]


def at(days: float) -> str:
    return (NOW - timedelta(days=days)).isoformat()


def track(user: str, event: str, days: float = 1, **extra: Any) -> dict[str, Any]:
    return {"type": "track", "userId": user, "event": event, "timestamp": at(days), **extra}


def test_stages_move_forward_only_and_may_skip(rt: Runtime) -> None:
    define(rt, {"shop": SHOP})
    run(rt, [track("ann", "Viewed", 3)])
    assert where(rt, "ann", "shop") == ("viewed", "active")
    run(rt, [track("ann", "Checkout", 2)])  # skips "carted"
    assert where(rt, "ann", "shop") == ("checkout", "active")
    run(rt, [track("ann", "Carted", 1), track("ann", "Viewed", 1)])  # earlier stages again: no move back
    assert where(rt, "ann", "shop") == ("checkout", "active")
    assert moves(rt, "ann") == [("entered", "viewed", None), ("advanced", "checkout", None)]
    with rt.db.read() as session:
        row = session.get(JourneyPosition, ("shop", profile_of(rt, "ann")))
        assert row is not None
        assert set(row.path) == {"viewed", "checkout"}  # the skipped stage has no time
        assert row.stage_entered_at == NOW


def test_goal_completes_and_exit_exits_for_good(rt: Runtime) -> None:
    define(rt, {"shop": SHOP})
    run(rt, [track("bo", "Viewed", 3), track("cy", "Carted", 3)])
    run(rt, [track("bo", "Bought", 2)])
    assert where(rt, "bo", "shop") == ("viewed", "completed")
    run(rt, [{"type": "identify", "userId": "cy", "traits": {"optout": True}, "timestamp": at(2)}])
    assert where(rt, "cy", "shop") == ("carted", "exited")
    run(rt, [track("cy", "Checkout", 1), track("cy", "Bought", 1)])  # too late: exited stays exited
    assert where(rt, "cy", "shop") == ("carted", "exited")
    assert moves(rt, "cy") == [("entered", "carted", None), ("exited", "carted", "exit")]
    # Entering and meeting the goal in one run: entered, then completed.
    run(rt, [track("di", "Viewed", 1), track("di", "Bought", 1)])
    assert moves(rt, "di") == [("entered", "viewed", None), ("completed", "viewed", "goal")]


def test_segments_and_traits_drive_stages_and_the_last_stage_completes_without_a_goal(rt: Runtime) -> None:
    define(rt, {"golden": GOLDEN})
    run(rt, [{"type": "identify", "userId": "ed", "traits": {"email": "e@example.com"}, "timestamp": at(2)}])
    assert where(rt, "ed", "golden") == ("known", "active")
    run(rt, [{"type": "identify", "userId": "ed", "traits": {"plan": "gold"}, "timestamp": at(1)}])
    assert where(rt, "ed", "golden") == ("gold", "completed")
    assert moves(rt, "ed")[-1] == ("completed", "gold", "last_stage")


def test_redelivery_changes_nothing(rt: Runtime) -> None:
    define(rt, {"shop": SHOP})
    events = [track("fa", "Viewed", 2, messageId="m1"), track("fa", "Carted", 1, messageId="m2")]
    run(rt, events)
    before = (positions(rt), moves(rt, "fa"))
    run(rt, events)
    run(rt, events[:1])
    assert (positions(rt), moves(rt, "fa")) == before


def test_time_limits_exit_through_the_sweep(rt: Runtime) -> None:
    define(rt, {"timed": TIMED})
    run(rt, [track("gi", "A", 0.5), track("ho", "A", 0.5)])
    run(rt, [track("ho", "B", 0.4)], now=NOW + timedelta(hours=1))  # moved on within the stage's 2 h
    assert where(rt, "gi", "timed") == ("a", "active")

    def sweep(now: datetime) -> None:
        after = None
        while True:
            with rt.db.unit_of_work() as session:
                after = service.sweep_step(session, now=now, after=after, limit=1)
            if after is None:
                return

    sweep(NOW + timedelta(hours=2))  # exactly at the limit: still in
    assert where(rt, "gi", "timed") == ("a", "active")
    sweep(NOW + timedelta(hours=2, seconds=1))
    assert where(rt, "gi", "timed") == ("a", "exited")
    assert moves(rt, "gi")[-1] == ("exited", "a", "time_limit")
    with rt.db.read() as session:
        row = session.get(JourneyPosition, ("timed", profile_of(rt, "gi")))
        assert row is not None
        assert row.ended_at == NOW + timedelta(hours=2)  # when the limit ran out, not when the sweep saw it
    assert where(rt, "ho", "timed") == ("b", "active")
    sweep(NOW + timedelta(days=1, seconds=1))  # the journey's own limit, from entering it
    assert where(rt, "ho", "timed") == ("b", "exited")
    # An event after the limit but before any sweep gives the same answer: the limit is checked first.
    run(rt, [track("iv", "A", 0.5)])
    run(rt, [track("iv", "B", 0.1)], now=NOW + timedelta(hours=3))
    assert where(rt, "iv", "timed") == ("a", "exited")


def test_a_merge_keeps_the_furthest_position(rt: Runtime) -> None:
    define(rt, {"shop": SHOP})
    run(rt, [{"type": "track", "anonymousId": "dev1", "event": "Checkout", "timestamp": at(3)}])
    run(rt, [track("jo", "Viewed", 2)])
    assert len(positions(rt)) == 2
    run(rt, [{"type": "identify", "userId": "jo", "anonymousId": "dev1", "timestamp": at(1)}])
    assert where(rt, "jo", "shop") == ("checkout", "active")
    assert len(positions(rt)) == 1


def test_an_unmerge_keeps_the_survivor_and_places_the_other_afresh(rt: Runtime) -> None:
    from accord.profiles.service import resolve

    define(rt, {"shop": SHOP})
    run(rt, [{"type": "track", "anonymousId": "dev9", "event": "Carted", "timestamp": at(3)}])
    run(rt, [{"type": "identify", "userId": "ka", "anonymousId": "dev9", "timestamp": at(2)}])
    assert where(rt, "ka", "shop") == ("carted", "active")
    unmerge_the_merge(rt, "user_id:ka", NOW)
    found = positions(rt)
    with rt.db.read() as session:
        device = resolve(session, "anonymous_id:dev9")
        assert device is not None
    assert found[device.id]["shop"].stage == "carted"  # its own events place it again
    assert profile_of(rt, "ka") != device.id


def test_a_changed_definition_keeps_positions_in_stages_that_remain(rt: Runtime) -> None:
    define(rt, {"shop": SHOP})
    run(rt, [track("lu", "Carted", 2), track("mo", "Viewed", 2)])
    changed = {**SHOP, "stages": [SHOP["stages"][1], {"key": "paid", "condition": {"event": "Paid"}}]}
    with rt.db.unit_of_work() as session:
        service.change(session, key="shop", name=None, description=None, definition=changed, actor="t", now=NOW)
    while True:
        with rt.db.unit_of_work() as session:
            if service.backfill_step(session, "shop", now=NOW).finished:
                break
    assert where(rt, "lu", "shop") == ("carted", "active")
    assert where(rt, "mo", "shop") is None  # "viewed" is gone, and no stage of the new version holds


def test_deleting_a_journey_drops_its_positions(rt: Runtime) -> None:
    define(rt, {"shop": SHOP})
    run(rt, [track("ny", "Viewed", 2)])
    with rt.db.unit_of_work() as session:
        assert service.remove(session, key="shop", actor="t", now=NOW) == 1
    assert positions(rt) == {}
    run(rt, [track("ny", "Carted", 1)])
    assert positions(rt) == {}


# --- the property ---------------------------------------------------------------------------------------

USERS = st.sampled_from(["u1", "u2", None])
ANONYMOUS = st.sampled_from(["a1", "a2", None])
DAYS = st.sampled_from([0, 0.5, 1, 6.99, 7, 7.01, 10, 30.01])
PROPERTY_JOURNEYS: dict[str, dict[str, Any]] = {
    "shop": SHOP,
    "golden": GOLDEN,
    "recent": {
        "stages": [
            {"key": "looked", "condition": {"event": "Viewed", "within": "7d"}},
            {"key": "twice", "condition": {"event": "Viewed", "count": {"gte": 2}}},
            {
                "key": "big",
                "condition": {"event": "Bought", "where": [{"property": "total", "op": "gte", "value": 50}]},
            },
        ],
        "exit": {"trait": "plan", "op": "eq", "value": "free"},
    },
}


@st.composite
def an_event(draw: st.DrawFn) -> dict[str, Any]:
    user, anonymous = draw(USERS), draw(ANONYMOUS)
    if user is None and anonymous is None:
        user = "u1"
    ids = {k: v for k, v in (("userId", user), ("anonymousId", anonymous)) if v is not None}
    moment = at(draw(DAYS))
    if draw(st.booleans()):
        traits = draw(
            st.sampled_from([{"plan": "gold"}, {"plan": "free"}, {"email": "x@example.com"}, {"optout": True}])
        )
        return {"type": "identify", **ids, "traits": traits, "timestamp": moment}
    name = draw(st.sampled_from(["Viewed", "Carted", "Checkout", "Bought", "Other"]))
    total = draw(st.sampled_from([10, 50]))
    return {"type": "track", **ids, "event": name, "properties": {"total": total}, "timestamp": moment}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    events=st.lists(an_event(), min_size=1, max_size=20),
    cuts=st.lists(st.integers(1, 20), max_size=12),
    defined_after=st.integers(0, 3),
    data=st.data(),
)
def test_streaming_positions_equal_a_batch_recompute(
    rt: Runtime, events: list[dict[str, Any]], cuts: list[int], defined_after: int, data: st.DataObject
) -> None:
    """After every run, the stored positions are what a batch evaluation of every journey for every profile
    gives from the positions before the run: streaming misses nothing and does nothing extra."""
    reset(rt)
    for i, event in enumerate(events):
        event["messageId"] = f"m{i}"
    if data.draw(st.booleans()):
        events.append(dict(events[0]))  # a resend
    if data.draw(st.booleans()):
        cuts = list(range(1, len(events)))  # every event a run of its own
    bounds = sorted({0, len(events), *(c for c in cuts if c < len(events))})
    batches = [events[a:b] for a, b in itertools.pairwise(bounds)]
    if defined_after == 0:
        define(rt, PROPERTY_JOURNEYS)
    defined = defined_after == 0
    for n, chunk in enumerate(batches, start=1):
        before = positions(rt)
        run(rt, chunk)
        if defined:
            with rt.db.read() as session:
                assert positions(rt) == machine.recompute(session, NOW, before)
        if n == defined_after:
            define(rt, PROPERTY_JOURNEYS)  # some history first: backfill, then streaming
            defined = True
            with rt.db.read() as session:
                assert positions(rt) == machine.recompute(session, NOW, {})
    if not defined:
        define(rt, PROPERTY_JOURNEYS)
    with rt.db.read() as session:
        assert positions(rt) == machine.recompute(session, NOW, positions(rt))  # a fixed point


def sweep_all(rt: Runtime, now: datetime) -> None:
    """The worker's sweep: the segments' first, then the journeys'."""
    for step in (segments.sweep_step, service.sweep_step):
        after = None
        while True:
            with rt.db.unit_of_work() as session:
                after = step(session, now=now, after=after)
            if after is None:
                break


def backfill_all(rt: Runtime, now: datetime = NOW) -> None:
    for module in (segments, service):
        while True:
            with rt.db.read() as session:
                pending = module.pending_backfills(session)  # type: ignore[attr-defined]
            if not pending:
                break
            with rt.db.unit_of_work() as session:
                module.backfill_step(session, pending[0], now=now)  # type: ignore[attr-defined]


def test_a_journey_follows_a_changed_segment_and_refuses_its_deletion(rt: Runtime) -> None:
    define(rt, {"golden": GOLDEN})
    run(rt, [{"type": "identify", "userId": "ol", "traits": {"email": "o@example.com", "plan": "silver"}}])
    assert where(rt, "ol", "golden") == ("known", "active")
    with rt.db.unit_of_work() as session:
        segments.change(
            session,
            key="gold",
            name=None,
            description=None,
            condition={"trait": "plan", "op": "in", "value": ["gold", "silver"]},
            actor="t",
            now=NOW,
        )
        assert service.pending_backfills(session) == ["golden"]  # the journey reads "gold"
    backfill_all(rt)
    assert where(rt, "ol", "golden") == ("gold", "completed")
    with (
        pytest.raises(segments.SegmentError, match=r"^segment 'gold' is read by journey golden$"),
        rt.db.unit_of_work() as session,
    ):
        segments.remove(session, key="gold", actor="t", now=NOW)


def test_a_journey_follows_a_changed_computed_trait_and_refuses_its_deletion(rt: Runtime) -> None:
    with rt.db.unit_of_work() as session:
        segments.computed_save(
            session,
            key="views",
            name="views",
            definition={"event": "Viewed", "function": "count"},
            actor="t",
            now=NOW,
            create=True,
        )
    define(rt, {"fans": {"stages": [{"key": "fan", "condition": {"computed": "views", "op": "gte", "value": 2}}]}})
    run(rt, [track("pi", "Viewed", 2), track("pi", "Carted", 1)])
    assert where(rt, "pi", "fans") is None
    with rt.db.unit_of_work() as session:
        segments.computed_save(
            session,
            key="views",
            name=None,
            definition={"event": "Carted", "function": "count"},
            actor="t",
            now=NOW,
            create=False,
        )
    backfill_all(rt)
    assert where(rt, "pi", "fans") is None  # one Carted: not yet
    run(rt, [track("pi", "Carted", 0.5)])
    assert where(rt, "pi", "fans") == ("fan", "completed")
    with pytest.raises(segments.SegmentError, match="is read by journey fans"), rt.db.unit_of_work() as session:
        segments.computed_remove(session, key="views")


def test_definitions_changed_between_runs_are_the_ones_the_next_run_evaluates(rt: Runtime) -> None:
    """As when the API or the CLI, in another process, changes them: with no backfill between, the next run
    sees the changed journey, segment and computed trait (one statement reads their stamps)."""
    with rt.db.unit_of_work() as session:
        segments.computed_save(
            session,
            key="views",
            name="views",
            definition={"event": "Viewed", "function": "count"},
            actor="t",
            now=NOW,
            create=True,
        )
    three = [{"key": key, "condition": {"event": key.upper()}} for key in ("a", "b", "c")]
    fans = {"stages": [{"key": "fan", "condition": {"computed": "views", "op": "gte", "value": 2}}]}
    define(rt, {"flow": {"stages": three}, "fans": fans})
    run(
        rt,
        [track("ann", "A", 2), {"type": "identify", "userId": "ann", "traits": {"plan": "gold"}, "timestamp": at(2)}],
    )
    assert where(rt, "ann", "flow") == ("a", "active")
    assert gold_members(rt) == {profile_of(rt, "ann")}
    with rt.db.unit_of_work() as session:
        changed = [{"key": "a", "condition": {"event": "A2"}}, *three[1:]]
        service.change(
            session, key="flow", name=None, description=None, definition={"stages": changed}, actor="t", now=NOW
        )
        platinum = {"trait": "plan", "op": "eq", "value": "platinum"}
        segments.change(session, key="gold", name=None, description=None, condition=platinum, actor="t", now=NOW)
        carted = {"event": "Carted", "function": "count"}
        segments.computed_save(session, key="views", name=None, definition=carted, actor="t", now=NOW, create=False)
    run(
        rt,
        [
            track("bo", "A", 1),
            track("cy", "A2", 1),
            {"type": "identify", "userId": "di", "traits": {"plan": "platinum"}, "timestamp": at(1)},
            track("ed", "Carted", 1),
            track("ed", "Carted", 0.5),
        ],
    )
    assert where(rt, "bo", "flow") is None
    assert where(rt, "cy", "flow") == ("a", "active")
    assert profile_of(rt, "di") in gold_members(rt)
    assert where(rt, "ed", "fans") == ("fan", "completed")


def gold_members(rt: Runtime) -> set[str]:
    with rt.db.read() as session:
        return set(session.scalars(select(SegmentMembership.profile_id).where(SegmentMembership.segment_key == "gold")))


def test_a_journey_reading_a_timed_segment_moves_in_the_sweep(rt: Runtime) -> None:
    with rt.db.unit_of_work() as session:
        segments.create(
            session,
            key="recent",
            name="recent",
            description="",
            condition={"event": "Viewed", "within": "7d"},
            actor="t",
            now=NOW,
        )
    lapse = {
        "stages": [
            {"key": "active", "condition": {"segment": "recent"}},
            {"key": "lapsed", "condition": {"not": {"segment": "recent"}}},
        ],
        "goal": {"event": "Bought"},
    }
    define(rt, {"lapse": lapse})
    run(rt, [track("qu", "Viewed", 6)])
    assert where(rt, "qu", "lapse") == ("active", "active")
    sweep_all(rt, NOW + timedelta(days=2))  # the view is now 8 days old: out of "recent"
    assert where(rt, "qu", "lapse") == ("lapsed", "active")


def test_a_journey_backfill_after_a_bulk_load_refreshes_the_statistics_first(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A journey's backfill walks the profiles as a segment's does, so it refreshes statistics far behind
    the tables first too (PostgreSQL; never on SQLite), and only while they are."""
    bulk_load(rt, engine.STALE_ROWS + 2_000)
    analyzed: list[list[str]] = []
    real = engine.analyze_if_stale

    def watched(session: Any, tables: Any) -> list[str]:
        analyzed.append(real(session, tables))
        return analyzed[-1]

    monkeypatch.setattr(service, "analyze_if_stale", watched)
    with rt.db.unit_of_work() as session:
        service.create(session, key="shop", name="shop", description="", definition=SHOP, actor="t", now=NOW)
    finished = False
    while not finished:  # a transaction per step, as the worker takes them
        with rt.db.unit_of_work() as session:
            finished = service.backfill_step(session, "shop", now=NOW, limit=5_000).finished
    if rt.db.dialect == "postgresql":
        assert analyzed[0] == ["profiles"]
        assert analyzed[1:] == [[]] * (len(analyzed) - 1)
    else:
        assert all(step == [] for step in analyzed)
