"""Streaming evaluation in the pipeline (SQLite and PostgreSQL): each processed run re-evaluates the
segments its events can affect, and the result always equals a full batch recompute."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import event as sql_events
from sqlalchemy import select, text
from sqlalchemy.exc import OperationalError

from accord.db import engine
from accord.db.bulk import insert_rows
from accord.ingest.spec import normalise_request
from accord.pipeline.process import process_events
from accord.runtime import Runtime
from accord.segments import conditions, evaluate, pushdown, service
from accord.segments.models import SegmentMembership, SegmentTransition
from pipeline.helpers import reset, unmerge_the_merge

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
SEGMENTS: dict[str, dict[str, Any]] = {
    "gold": {"trait": "plan", "op": "eq", "value": "gold"},
    "adult": {"trait": "age", "op": "gte", "value": 18},
    "big": {
        "event": "Bought",
        "where": [{"property": "total", "op": "gte", "value": 50}],
        "count": {"gte": 2},
        "within": "30d",
    },
    "rare": {"event": "Viewed", "count": {"lte": 1}},
    "lapsed": {"event": "Bought", "occurrence": "last", "older_than": "7d"},
    "gold-not-big": {"all": [{"segment": "gold"}, {"not": {"segment": "big"}}]},
    "mixed": {
        "any": [
            {"trait": "plan", "op": "in", "value": ["silver", "bronze"]},
            {"event": "Viewed", "between": {"from": "2026-05-01T00:00:00Z", "to": "2026-05-15T00:00:00Z"}},
        ]
    },
    "g-plans": {"trait": "plan", "op": "regex", "value": "^g"},
    "spenders": {"computed": "spend", "op": "gte", "value": 100},
    "mostly-big": {"computed": "usual", "op": "eq", "value": 99},
}
ORDER = ["gold", "adult", "big", "rare", "lapsed", "gold-not-big", "mixed", "g-plans", "spenders", "mostly-big"]
COMPUTED = {
    "spend": {"event": "Bought", "function": "sum", "property": "total", "within": "30d"},
    "usual": {"event": "Bought", "function": "most_frequent", "property": "total"},
}


def run(rt: Runtime, events: list[dict[str, Any]], now: datetime = NOW) -> None:
    items = [
        ("src", e) for e in normalise_request({"batch": events}, endpoint="batch", received_at=now, client_ip=None)
    ]
    with rt.db.unit_of_work() as session:
        process_events(session, items, lock_rows=rt.db.dialect == "postgresql", now=now)


def define(rt: Runtime, keys: list[str], now: datetime = NOW) -> None:
    with rt.db.unit_of_work() as session:
        for key, definition in COMPUTED.items():
            if service.computed_listing(session) and key in {c.key for c in service.computed_listing(session)}:
                continue
            service.computed_save(session, key=key, name=key, definition=definition, actor="t", now=now, create=True)
        for key in keys:
            service.create(session, key=key, name=key, description="", condition=SEGMENTS[key], actor="t", now=now)
    for key in keys:
        while True:
            with rt.db.unit_of_work() as session:
                if service.backfill_step(session, key, now=now, limit=3).finished:
                    break


def stored(rt: Runtime) -> set[tuple[str, str]]:
    with rt.db.read() as session:
        return {(m.segment_key, m.profile_id) for m in session.scalars(select(SegmentMembership))}


def batch(rt: Runtime, now: datetime = NOW) -> set[tuple[str, str]]:
    with rt.db.read() as session:
        return evaluate.recompute(session, now)


def members(rt: Runtime, key: str) -> set[str]:
    return {pid for k, pid in stored(rt) if k == key}


def profile_of(rt: Runtime, user: str) -> str:
    from accord.profiles.service import resolve

    with rt.db.read() as session:
        found = resolve(session, f"user_id:{user}")
        assert found is not None
        return found.id


def at(days: float) -> str:
    return (NOW - timedelta(days=days)).isoformat()


def test_events_move_profiles_in_and_out(rt: Runtime) -> None:
    define(rt, ORDER)
    run(rt, [{"type": "identify", "userId": "ann", "traits": {"plan": "gold", "age": 30}, "timestamp": at(1)}])
    ann = profile_of(rt, "ann")
    assert {k for k, p in stored(rt) if p == ann} == {"gold", "adult", "rare", "gold-not-big", "g-plans"}
    buys = [
        {"type": "track", "userId": "ann", "event": "Bought", "properties": {"total": t}, "timestamp": at(d)}
        for t, d in ((60, 2), (80, 3))
    ]
    run(rt, buys)
    assert {k for k, p in stored(rt) if p == ann} == {"gold", "adult", "rare", "big", "g-plans", "spenders"}
    run(rt, [{"type": "identify", "userId": "ann", "traits": {"plan": "silver"}, "timestamp": at(0.5)}])
    assert {k for k, p in stored(rt) if p == ann} == {"adult", "rare", "big", "mixed", "spenders"}
    with rt.db.read() as session:
        history = [
            (t.segment_key, t.kind) for t in session.scalars(select(SegmentTransition).order_by(SegmentTransition.id))
        ]
    assert set(history[-3:]) == {("gold", "exited"), ("g-plans", "exited"), ("mixed", "entered")}
    assert ("gold-not-big", "exited") in history  # when "big" was entered
    assert stored(rt) == batch(rt)


def test_a_merge_carries_memberships_to_the_survivor(rt: Runtime) -> None:
    define(rt, ["gold", "rare"])
    run(rt, [{"type": "track", "anonymousId": "dev1", "event": "Viewed", "timestamp": at(3)}])
    run(rt, [{"type": "identify", "userId": "bob", "traits": {"plan": "gold"}, "timestamp": at(2)}])
    assert len(members(rt, "rare")) == 2
    run(rt, [{"type": "identify", "userId": "bob", "anonymousId": "dev1", "timestamp": at(1)}])
    bob = profile_of(rt, "bob")
    assert members(rt, "rare") == {bob}
    assert members(rt, "gold") == {bob}
    run(rt, [{"type": "track", "userId": "bob", "event": "Viewed", "timestamp": at(0.5)}])
    assert members(rt, "rare") == set()
    assert stored(rt) == batch(rt)


def test_time_window_exits_happen_in_the_sweep(rt: Runtime) -> None:
    define(rt, ["big", "lapsed"])
    buys = [
        {"type": "track", "userId": "cy", "event": "Bought", "properties": {"total": 99}, "timestamp": at(d)}
        for d in (20, 29)
    ]
    run(rt, buys)
    cy = profile_of(rt, "cy")
    assert members(rt, "big") == {cy}
    assert members(rt, "lapsed") == {cy}
    later = NOW + timedelta(days=1, seconds=1)  # the older buy is now more than 30 days old
    assert stored(rt) != batch(rt, later)
    after = None
    while True:
        with rt.db.unit_of_work() as session:
            after = service.sweep_step(session, now=later, after=after, limit=1)
        if after is None:
            break
    assert members(rt, "big") == set()
    assert members(rt, "lapsed") == {cy}
    assert stored(rt) == batch(rt, later)


def test_the_window_boundary_is_exact_in_storage(rt: Runtime) -> None:
    define(rt, ["big"])
    boundary = NOW - timedelta(days=30)
    buys = [
        {"type": "track", "userId": "di", "event": "Bought", "properties": {"total": 50}, "timestamp": m.isoformat()}
        for m in (boundary, NOW - timedelta(days=1))
    ]
    run(rt, buys)
    assert members(rt, "big") == {profile_of(rt, "di")}  # at exactly now - 30d: inside
    assert batch(rt, NOW + timedelta(microseconds=1)) == set()  # a microsecond later: outside


def test_unrelated_events_leave_segments_alone(rt: Runtime) -> None:
    define(rt, ["gold"])
    run(rt, [{"type": "identify", "userId": "ed", "traits": {"plan": "gold"}, "timestamp": at(3)}])
    with rt.db.unit_of_work() as session:
        # Tamper: if an unrelated event re-evaluated "gold", the membership would come back.
        session.execute(SegmentMembership.__table__.delete())
    run(rt, [{"type": "track", "userId": "ed", "event": "Clicked", "timestamp": at(1)}])
    assert stored(rt) == set()
    run(rt, [{"type": "identify", "userId": "ed", "traits": {"age": 3}, "timestamp": at(1)}])
    assert stored(rt) == set()
    run(rt, [{"type": "identify", "userId": "ed", "traits": {"plan": "gold"}, "timestamp": at(0.5)}])
    assert stored(rt) == {("gold", profile_of(rt, "ed"))}


USERS = st.sampled_from(["u1", "u2", "u3", None])
ANONYMOUS = st.sampled_from(["a1", "a2", "a3", None])
DAYS = st.sampled_from([0, 0.5, 1, 6.99, 7, 7.01, 10, 13, 14, 29.99, 30, 30.01, 45])


@st.composite
def an_event(draw: st.DrawFn) -> dict[str, Any]:
    user, anonymous = draw(USERS), draw(ANONYMOUS)
    if user is None and anonymous is None:
        user = "u1"
    ids = {k: v for k, v in (("userId", user), ("anonymousId", anonymous)) if v is not None}
    moment = at(draw(DAYS))
    if draw(st.booleans()):
        traits = draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "plan": st.sampled_from(["gold", "silver", "bronze", "free", "g"]),
                    "age": st.integers(10, 40),
                },
            )
        )
        return {"type": "identify", **ids, "traits": traits, "timestamp": moment}
    name = draw(st.sampled_from(["Bought", "Viewed", "Other"]))
    total = draw(st.sampled_from([10, 49, 50, 99]))
    return {"type": "track", **ids, "event": name, "properties": {"total": total}, "timestamp": moment}


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    events=st.lists(an_event(), min_size=1, max_size=25),
    cuts=st.lists(st.integers(1, 25), max_size=4),
    defined_after=st.integers(0, 3),
    data=st.data(),
)
def test_streaming_equals_a_batch_recompute(
    rt: Runtime, events: list[dict[str, Any]], cuts: list[int], defined_after: int, data: st.DataObject
) -> None:
    reset(rt)
    for i, event in enumerate(events):
        event["messageId"] = f"m{i}"
    if events and data.draw(st.booleans()):
        events.append(dict(events[0]))  # a resend
    bounds = sorted({0, len(events), *(c for c in cuts if c < len(events))})
    batches = [events[a:b] for a, b in itertools.pairwise(bounds)]
    if defined_after == 0:
        define(rt, ORDER)
    for n, chunk in enumerate(batches, start=1):
        run(rt, chunk)
        if n == defined_after:
            define(rt, ORDER)  # some history first: backfill, then streaming
    if defined_after > len(batches):
        define(rt, ORDER)
    assert stored(rt) == batch(rt)


def test_an_unmerge_re_evaluates_both_sides(rt: Runtime) -> None:

    define(rt, ["gold", "rare"])
    run(rt, [{"type": "track", "anonymousId": "dev9", "event": "Viewed", "timestamp": at(3)}])
    run(
        rt,
        [{"type": "identify", "userId": "fay", "anonymousId": "dev9", "traits": {"plan": "gold"}, "timestamp": at(2)}],
    )
    assert len(stored(rt)) == 2
    unmerge_the_merge(rt, "user_id:fay", NOW)
    assert len(members(rt, "rare")) == 2  # both sides again
    assert stored(rt) == batch(rt)


def test_a_backfill_the_database_evaluates_equals_a_recompute_and_records_each_change(rt: Runtime) -> None:
    """A segment of trait comparisons is backfilled by INSERT ... SELECT (accord.segments.pushdown); after a
    change of its condition, the profiles that left are recorded as exits under the new version."""
    people = [("ann", "gold", 30), ("bob", "silver", 17), ("cy", "gold", 16), ("di", None, 40), ("ed", "gold", 50)]
    run(
        rt,
        [
            {"type": "identify", "userId": user, "traits": {"age": age} | ({"plan": plan} if plan else {})}
            for user, plan, age in people
        ]
        + [{"type": "identify", "anonymousId": "dev-1", "traits": {"plan": "gold", "age": 99}}]
        + [{"type": "alias", "userId": "ed", "previousId": "dev-1"}],
    )
    condition = {
        "all": [{"trait": "plan", "op": "in", "value": ["gold", "silver"]}, {"trait": "age", "op": "gte", "value": 18}]
    }

    def backfill() -> int:
        steps = 0
        while True:
            steps += 1
            with rt.db.unit_of_work() as session:
                if service.backfill_step(session, "adults", now=NOW, limit=2).finished:
                    return steps

    assert pushdown.predicate(conditions.parse(condition), evaluate.PROFILES.c.traits, rt.db.dialect) is not None
    with rt.db.unit_of_work() as session:
        service.create(session, key="adults", name="adults", description="", condition=condition, actor="t", now=NOW)
    assert backfill() > 2  # in chunks of two profiles
    assert members(rt, "adults") == {profile_of(rt, "ann"), profile_of(rt, "ed")}
    assert stored(rt) == batch(rt)

    condition["all"][1] = {"trait": "age", "op": "gte", "value": 40}
    with rt.db.unit_of_work() as session:
        service.change(session, key="adults", name=None, description=None, condition=condition, actor="t", now=NOW)
    backfill()
    assert members(rt, "adults") == {profile_of(rt, "ed")}
    assert stored(rt) == batch(rt)
    with rt.db.read() as session:
        moves = [
            (t.kind, t.profile_id, t.version)
            for t in session.scalars(select(SegmentTransition).order_by(SegmentTransition.id))
            if t.segment_key == "adults"
        ]
        assert service.get(session, "adults").backfill_done == 6  # five people and one merged-away profile
    ann, ed = profile_of(rt, "ann"), profile_of(rt, "ed")
    assert sorted(moves[:2]) == sorted([("entered", ann, 1), ("entered", ed, 1)])
    assert moves[2:] == [("exited", ann, 2)]


def test_an_event_segment_the_database_backfills_equals_a_recompute(rt: Runtime) -> None:
    """A segment of event counts (no property filter) is backfilled by the database too: counts in a window
    as of the backfill's `now`, track events only, and the events a merge moved onto the survivor."""
    run(
        rt,
        [
            *({"type": "track", "userId": "ann", "event": "Viewed", "timestamp": at(d)} for d in (1, 2, 9)),
            *({"type": "track", "userId": "bob", "event": "Viewed", "timestamp": at(d)} for d in (1, 8, 9)),
            {"type": "page", "userId": "cy", "name": "Viewed", "timestamp": at(1)},
            {"type": "track", "userId": "cy", "event": "Viewed", "timestamp": at(3)},
            {"type": "track", "anonymousId": "dev-2", "event": "Viewed", "timestamp": at(2)},
            {"type": "alias", "userId": "cy", "previousId": "dev-2"},
            {"type": "track", "userId": "di", "event": "Bought", "timestamp": at(1)},
        ],
    )
    condition = {"any": [{"event": "Viewed", "count": {"gte": 2}, "within": "7d"}, {"event": "Bought"}]}
    node = conditions.parse(condition)
    where = pushdown.predicate(
        node, evaluate.PROFILES.c.traits, rt.db.dialect, profile_id=evaluate.PROFILES.c.id, now=NOW
    )
    assert where is not None
    with rt.db.unit_of_work() as session:
        service.create(session, key="keen", name="keen", description="", condition=condition, actor="t", now=NOW)
    steps = 0
    while True:
        steps += 1
        with rt.db.unit_of_work() as session:
            if service.backfill_step(session, "keen", now=NOW, limit=2).finished:
                break
    assert steps > 2  # in chunks of two profiles, through the database's path
    # ann: two in the last week; cy: one, and dev-2's merged in; di: bought; bob: one in the week.
    assert members(rt, "keen") == {profile_of(rt, "ann"), profile_of(rt, "cy"), profile_of(rt, "di")}
    assert stored(rt) == batch(rt)


class Killed(Exception):
    """The process dies here."""


def test_a_narrowed_backfill_killed_inside_a_step_goes_on_from_its_last_commit(rt: Runtime) -> None:
    """A backfill step is one transaction. Killed inside one, its memberships, transitions and progress
    are undone with it; a process started again goes on after the last step that committed and ends as a
    recompute would, each member entered once."""
    totals = {"ann": (70, 80), "bob": (10, 90), "cy": (100,), "di": (60, 60), "ed": (55, 65), "fay": (1, 2)}
    run(
        rt,
        [
            {"type": "track", "userId": user, "event": "Bought", "properties": {"total": total}, "timestamp": at(n + 1)}
            for user, spent in totals.items()
            for n, total in enumerate(spent)
        ],
    )
    condition = {
        "event": "Bought",
        "where": [{"property": "total", "op": "gte", "value": 50}],
        "count": {"gte": 2},
        "within": "30d",
    }
    with rt.db.unit_of_work() as session:
        service.create(session, key="big", name="big", description="", condition=condition, actor="t", now=NOW)
    with rt.db.unit_of_work() as session:
        first = service.backfill_step(session, "big", now=NOW, limit=2)
    assert not first.finished
    killed_at = members(rt, "big")

    def killed_step() -> None:
        with rt.db.unit_of_work() as session:
            raise Killed(service.backfill_step(session, "big", now=NOW, limit=2).done)

    with pytest.raises(Killed) as killed:
        killed_step()
    assert killed.value.args[0] > first.done  # it walked on before it died
    assert members(rt, "big") == killed_at
    with rt.db.read() as session:
        assert service.get(session, "big").backfill_done == first.done

    again = Runtime.create(rt.settings)
    try:
        while True:
            with again.db.unit_of_work() as session:
                if service.backfill_step(session, "big", now=NOW, limit=2).finished:
                    break
        assert members(again, "big") == {profile_of(again, user) for user in ("ann", "di", "ed")}
        assert stored(again) == batch(again)
        with again.db.read() as session:
            entered = [
                t.profile_id
                for t in session.scalars(select(SegmentTransition))
                if t.segment_key == "big" and t.kind == "entered"
            ]
            assert service.get(session, "big").backfill_done == len(totals)
        assert sorted(entered) == sorted(members(again, "big"))
    finally:
        again.close()


def test_a_backfill_with_property_filters_evaluates_only_whom_it_may_admit_and_equals_a_recompute(
    rt: Runtime,
) -> None:
    """Property filters are evaluated in Python (event properties are sealed), but only for the profiles
    the database cannot rule out (enough events of the name in the window, whatever their properties) and
    for the segment's members; after a change of its condition, a member ruled out leaves."""
    bought = [("ann", (70, 80)), ("bob", (10, 90)), ("cy", (100,)), ("ed", (60, 60, 70))]
    run(
        rt,
        [
            {"type": "track", "userId": user, "event": "Bought", "properties": {"total": total}, "timestamp": at(n + 1)}
            for user, totals in bought
            for n, total in enumerate(totals)
        ]
        + [
            {"type": "track", "userId": "fay", "event": "Bought", "properties": {"total": 99}, "timestamp": at(d)}
            for d in (40, 41)  # outside the window
        ]
        + [{"type": "identify", "userId": "di", "traits": {"plan": "gold"}}],
    )
    condition: dict[str, Any] = {
        "event": "Bought",
        "where": [{"property": "total", "op": "gte", "value": 50}],
        "count": {"gte": 2},
        "within": "30d",
    }
    p = evaluate.PROFILES.c

    def may_belong(limit: int = 100) -> set[str]:
        node = conditions.parse(condition)
        assert pushdown.predicate(node, p.traits, rt.db.dialect, profile_id=p.id, now=NOW) is None  # Python's
        narrowed = pushdown.candidates(node, p.traits, rt.db.dialect, profile_id=p.id, now=NOW)
        assert narrowed is not None
        with rt.db.unit_of_work() as session:
            ids, found = evaluate.candidates_range(session, "big", narrowed, after=None, walk=100, limit=limit)
            everyone = sorted(session.scalars(select(p.id)))
        assert len(everyone) == 6
        if len(ids) < limit or ids[-1] == everyone[-1]:  # the whole range
            assert (found.walked, found.last, found.end) == (6, everyone[-1], True)
        else:  # cut short after the last one to evaluate
            assert (found.walked, found.last, found.end) == (everyone.index(ids[-1]) + 1, ids[-1], False)
        return set(ids)

    def backfill() -> None:
        while True:
            with rt.db.unit_of_work() as session:
                if service.backfill_step(session, "big", now=NOW, limit=2).finished:
                    return

    ann, bob, ed = profile_of(rt, "ann"), profile_of(rt, "bob"), profile_of(rt, "ed")
    assert may_belong() == {ann, bob, ed}  # two or more Bought in 30 days: not cy, di or fay
    assert len(may_belong(limit=2)) == 2
    with rt.db.unit_of_work() as session:
        service.create(session, key="big", name="big", description="", condition=condition, actor="t", now=NOW)
    backfill()
    assert members(rt, "big") == {ann, ed}
    assert stored(rt) == batch(rt)

    condition["count"] = {"gte": 3}
    assert may_belong() == {ann, ed}  # ed has three; ann is ruled out, but a member until evaluated
    with rt.db.unit_of_work() as session:
        service.change(session, key="big", name=None, description=None, condition=condition, actor="t", now=NOW)
    backfill()
    assert members(rt, "big") == {ed}
    assert stored(rt) == batch(rt)
    assert may_belong() == {ed}
    with rt.db.read() as session:
        moves = [
            (t.kind, t.profile_id, t.version)
            for t in session.scalars(select(SegmentTransition).order_by(SegmentTransition.id))
            if t.segment_key == "big"
        ]
    assert sorted(moves[:2]) == sorted([("entered", ann, 1), ("entered", ed, 1)])
    assert moves[2:] == [("exited", ann, 2)]


def test_one_load_of_facts_serves_every_evaluation_it_covers(rt: Runtime) -> None:
    """The pipeline's journeys reuse what its segments read: the same facts as a load of their own, and
    a load that needs more (another event name, properties) reads again."""
    define(rt, ["gold", "big", "rare"])
    run(
        rt,
        [
            {"type": "identify", "userId": "ann", "traits": {"plan": "gold"}, "timestamp": at(1)},
            {"type": "track", "userId": "ann", "event": "Bought", "properties": {"total": 70}, "timestamp": at(2)},
            {"type": "track", "userId": "ann", "event": "Viewed", "timestamp": at(3)},
            {"type": "identify", "userId": "bob", "traits": {"plan": "tin"}, "timestamp": at(1)},
        ],
    )
    ann, bob = profile_of(rt, "ann"), profile_of(rt, "bob")
    with rt.db.read() as session:
        active = evaluate.active(session)
        big, rare, gold = active.by_key["big"], active.by_key["rare"], active.by_key["gold"]
        cache = evaluate.FactsCache()
        first = evaluate.load_facts(session, [ann, bob, "no-such-profile"], [big, rare], NOW, cache=cache)
        again = evaluate.load_facts(session, [ann, bob], [big], NOW, cache=cache)
        assert (cache.hits, cache.misses) == (2, 3)
        alone = evaluate.load_facts(session, [ann, bob], [big], NOW)
        for pid in (ann, bob):
            assert dict(again[pid].traits) == dict(alone[pid].traits) == dict(first[pid].traits)
            assert again[pid].events.get("Bought") == alone[pid].events.get("Bought")  # what "big" reads
        assert again[ann].events["Bought"][0][1] == {"total": 70}  # the properties, decrypted
        assert set(first) == {ann, bob}
        # "gold" reads no event: covered. A condition on an event nobody loaded is not.
        evaluate.load_facts(session, [ann], [gold], NOW, cache=cache)
        assert (cache.hits, cache.misses) == (3, 3)
        returned = evaluate.compile_segments([("r", 1, {"event": "Returned", "count": {"gte": 1}})]).by_key["r"]
        evaluate.load_facts(session, [ann], [returned], NOW, cache=cache)
        assert (cache.hits, cache.misses) == (3, 4)


def test_a_backfill_asks_the_membership_key_once_per_profile(rt: Runtime) -> None:
    """PostgreSQL turned the backfill's "not a member yet" into a join, and statistics taken before the new
    segment had members made it a nested loop comparing every profile of a range with every member so far:
    a 200,000-profile backfill took 74.6 s instead of 2.6. Its plan now asks the membership key per profile,
    whatever the statistics say, and the backfill's result is the batch recompute's."""
    run(rt, [{"type": "identify", "userId": u, "traits": {"age": a}} for u, a in (("ann", 30), ("bo", 12), ("cy", 50))])
    entries: list[tuple[str, Any]] = []

    def seen(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if "INSERT INTO segment_transitions" in statement and "entered" in str(parameters):
            entries.append((statement, parameters))

    sql_events.listen(rt.db.engine, "before_cursor_execute", seen)
    try:
        condition = {"trait": "age", "op": "gte", "value": 18}
        with rt.db.unit_of_work() as session:
            service.create(session, key="adults", name="", description="", condition=condition, actor="t", now=NOW)
        with rt.db.unit_of_work() as session:
            while not service.backfill_step(session, "adults", now=NOW, limit=2).finished:
                pass
    finally:
        sql_events.remove(rt.db.engine, "before_cursor_execute", seen)
    assert members(rt, "adults") == {profile_of(rt, "ann"), profile_of(rt, "cy")}
    assert stored(rt) == batch(rt)
    assert entries
    if rt.db.dialect == "postgresql":
        with rt.db.engine.connect() as connection:
            for statement, parameters in entries:
                cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
                plan = "\n".join(row[0] for row in cursor.execute("EXPLAIN " + statement, parameters))
                assert "Anti Join" not in plan, plan
                assert "SubPlan" in plan, plan  # asked per profile, through an index of the memberships
                assert "Index Scan using" in plan.rsplit("SubPlan", 1)[1], plan


def bulk_load(rt: Runtime, count: int) -> list[dict[str, Any]]:
    """`count` profiles (ages 0 to 89) written straight into the store, as a first import would, with
    PostgreSQL's row counts reported at once; returns their rows."""
    rows = [
        {
            "id": f"bulk-{n:06d}",
            "merged_into": None,
            "traits": {"age": n % 90},
            "trait_versions": {},
            "counts": {},
            "identity_counts": {},
            "cluster_id": None,
            "first_seen": NOW,
            "last_seen": NOW,
            "created_at": NOW,
            "updated_at": NOW,
        }
        for n in range(count)
    ]
    with rt.db.unit_of_work() as session:
        insert_rows(session, evaluate.PROFILES, rows)
        if rt.db.dialect == "postgresql":
            session.execute(text("SELECT pg_stat_force_next_flush()"))  # the counts, at this commit
    return rows


def test_a_backfill_after_a_bulk_load_refreshes_the_statistics_first(rt: Runtime) -> None:
    """PostgreSQL planned each backfill step from statistics taken while the tables were small, and read and
    sorted every profile after each range's boundary. A step first analyzes the profiles and events when
    far more rows changed since their last ANALYZE than autovacuum lets pass; not again while they are
    fresh; never on SQLite."""
    rows = bulk_load(rt, engine.STALE_ROWS + 2_000)
    condition = {"trait": "age", "op": "gte", "value": 18}
    with rt.db.unit_of_work() as session:
        service.create(session, key="adults", name="", description="", condition=condition, actor="t", now=NOW)
    analyzed: list[list[str]] = []
    real = engine.analyze_if_stale

    def watched(session: Any, tables: Any) -> list[str]:
        analyzed.append(real(session, tables))
        return analyzed[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(service, "analyze_if_stale", watched)
        finished = False
        while not finished:  # a transaction per step, as the worker takes them
            with rt.db.unit_of_work() as session:
                finished = service.backfill_step(session, "adults", now=NOW, limit=5_000).finished
    assert len(members(rt, "adults")) == sum(1 for n in range(len(rows)) if n % 90 >= 18)
    if rt.db.dialect == "postgresql":
        assert analyzed[0] == ["profiles"]  # the bulk load; events did not change
        assert analyzed[1:] == [[]] * (len(analyzed) - 1)  # fresh from then on
        with rt.db.read() as session:
            last = session.scalar(text("SELECT last_analyze FROM pg_stat_user_tables WHERE relname = 'profiles'"))
        assert last is not None
    else:
        assert all(step == [] for step in analyzed)


def locked(rt: Runtime, profile_ids: list[str]) -> set[str]:
    """Which of these profiles another transaction holds locked now (asked without waiting)."""
    held = set()
    for profile_id in profile_ids:
        with rt.db.engine.connect() as connection:
            try:
                connection.execute(
                    text("SELECT id FROM profiles WHERE id = :id FOR UPDATE NOWAIT"), {"id": profile_id}
                ).all()
            except OperationalError as error:
                if getattr(error.orig, "sqlstate", None) != "55P03":  # lock_not_available; anything else fails
                    raise
                held.add(profile_id)
            connection.rollback()
    return held


@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_narrowed_backfill_step_locks_only_whom_it_evaluates_and_others_are_written_meanwhile(
    rt: Runtime,
) -> None:
    """A step of a segment evaluated in Python for the profiles the database cannot rule out locks those
    profiles, not every profile of its range: each lock writes its row's page, and locking every profile
    walked was most of such a backfill's time on PostgreSQL. A profile left unlocked is written by the
    pipeline while the step is open, without waiting for it; the pipeline evaluates the segment for it,
    and once both have committed the memberships are the batch recompute's, each entry recorded once."""
    condition = {
        "all": [
            {"trait": "plan", "op": "eq", "value": "gold"},
            {"event": "Bought", "where": [{"property": "total", "op": "gte", "value": 50}], "count": {"gte": 1}},
        ]
    }
    # A day ago: the pipeline's change below is later (a trait's latest value wins).
    bought = [("ann", "gold", 80), ("bob", "gold", 10), ("cy", "free", None)]
    run(
        rt,
        [{"type": "identify", "userId": u, "traits": {"plan": p}, "timestamp": at(1)} for u, p, _ in bought]
        + [
            {"type": "track", "userId": u, "event": "Bought", "properties": {"total": t}, "timestamp": at(1)}
            for u, _, t in bought
            if t is not None
        ],
    )
    ann, bob, cy = profile_of(rt, "ann"), profile_of(rt, "bob"), profile_of(rt, "cy")
    with rt.db.unit_of_work() as session:
        service.create(session, key="golds", name="", description="", condition=condition, actor="t", now=NOW)
    with rt.db.unit_of_work() as session:
        assert service.backfill_step(session, "golds", now=NOW).finished
        # Gold with a purchase, both evaluated; bob's purchase is too small. Not cy (free, none).
        assert locked(rt, [ann, bob, cy]) == {ann, bob}
        # Meanwhile cy turns gold and buys; the pipeline locks cy and evaluates the segment itself.
        with rt.db.unit_of_work() as other:
            other.execute(text("SET LOCAL lock_timeout = '10s'"))  # an error, not a hang, if it had to wait
            items = normalise_request(
                {
                    "batch": [
                        {"type": "identify", "userId": "cy", "traits": {"plan": "gold"}},
                        {"type": "track", "userId": "cy", "event": "Bought", "properties": {"total": 90}},
                    ]
                },
                endpoint="batch",
                received_at=NOW,
                client_ip=None,
            )
            process_events(other, [("src", e) for e in items], lock_rows=True, now=NOW)
    assert members(rt, "golds") == {ann, cy}
    assert stored(rt) == batch(rt)
    with rt.db.read() as session:
        entries = [
            t.profile_id
            for t in session.scalars(select(SegmentTransition))
            if t.segment_key == "golds" and t.kind == "entered"
        ]
    assert sorted(entries) == sorted(members(rt, "golds"))
