"""Long histories kept by the worker from one run to the next (`accord.segments.histories`), on SQLite and
PostgreSQL: a run reads and opens only the events added since, and whatever else changed a profile's
events (a deletion, a merge or unmerge moving them, an event stored with an id below the others) fails
the check, so the history is read whole again. Streaming with histories kept always equals a full batch
recompute."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import DBAPIError

from accord.db.engine import Database, conflicted
from accord.ingest.spec import normalise_request
from accord.pipeline.process import StaleRead, process_events
from accord.pipeline.worker import Worker
from accord.profiles.models import ProfileEvent
from accord.runtime import Runtime
from accord.security.datakeys import DataKeys
from accord.segments import histories, service
from accord.segments.evaluate import EVENTS
from pipeline.helpers import reset, unmerge_the_merge
from segments.test_streaming import NOW, ORDER, an_event, at, batch, define, profile_of, run, stored


@pytest.fixture
def kept(rt: Runtime) -> Iterator[histories.Histories]:
    """The histories the pipeline keeps for this database, keeping every history (of one event or more)."""
    with rt.db.read() as session:
        found = histories.of(session)
    found.forget()
    found.min_events, before = 1, found.min_events
    found.reads = {"unchanged": 0, "added": 0, "whole": 0}
    try:
        yield found
    finally:
        found.min_events = before
        found._clock = time.monotonic
        found.forget()


def bought(user: str, n: int, days: float = 1, total: int = 60, first: int = 0) -> list[dict[str, Any]]:
    return [
        {
            "type": "track",
            "userId": user,
            "event": "Bought",
            "properties": {"total": total},
            "timestamp": at(days),
            "messageId": f"{user}-{first + i}",
        }
        for i in range(n)
    ]


def test_a_history_is_read_whole_once_then_only_what_was_added(rt: Runtime, kept: histories.Histories) -> None:
    define(rt, ORDER)
    run(rt, bought("ann", 3))
    assert kept.reads["whole"] >= 1
    assert len(kept) == 1
    whole = kept.reads["whole"]
    run(rt, bought("ann", 2, first=3))
    assert kept.reads["whole"] == whole  # the two new events were read, not the five
    assert kept.reads["added"] >= 1
    run(rt, [{"type": "identify", "userId": "ann", "traits": {"plan": "gold"}, "timestamp": at(0)}])
    assert kept.reads["whole"] == whole  # an event of no name a segment reads: nothing to open
    assert stored(rt) == batch(rt)
    assert ("big", profile_of(rt, "ann")) in stored(rt)


def test_an_event_deleted_elsewhere_is_seen_at_once(rt: Runtime, kept: histories.Histories) -> None:
    define(rt, ["big"])
    run(rt, bought("bea", 2))
    pid = profile_of(rt, "bea")
    assert ("big", pid) in stored(rt)
    with rt.db.unit_of_work() as session:  # as an erasure of one event, by another process
        first = session.scalar(select(func.min(ProfileEvent.id)).where(ProfileEvent.profile_id == pid))
        session.execute(delete(ProfileEvent).where(ProfileEvent.id == first))
    whole = kept.reads["whole"]
    run(rt, bought("bea", 1, total=10, first=2))  # a purchase the segment does not count
    assert kept.reads["whole"] == whole + 1  # the check failed: read whole again
    assert ("big", pid) not in stored(rt)  # one purchase left of the two the segment needs
    assert stored(rt) == batch(rt)


def test_an_event_stored_below_the_highest_id_is_seen(rt: Runtime, kept: histories.Histories) -> None:
    """Another PostgreSQL worker's transaction can commit an event after one with a later id."""
    define(rt, ["big"])
    run(rt, bought("cy", 1))
    pid = profile_of(rt, "cy")
    assert ("big", pid) not in stored(rt)
    with rt.db.unit_of_work() as session:
        row = session.scalars(select(ProfileEvent).where(ProfileEvent.profile_id == pid)).one()
        session.execute(
            insert(EVENTS),
            [
                {
                    "id": -1,
                    "profile_id": pid,
                    "source_id": row.source_id,
                    "message_id": "cy-late",
                    "type": "track",
                    "event": "Bought",
                    "timestamp": NOW - timedelta(days=1),
                    "received_at": NOW,
                    "payload": {"properties": {"total": 70}},
                }
            ],
        )
    whole = kept.reads["whole"]
    run(rt, bought("cy", 1, total=10, first=1))  # a purchase the segment does not count
    assert kept.reads["whole"] == whole + 1
    assert ("big", pid) in stored(rt)  # the late purchase counts
    assert stored(rt) == batch(rt)


def test_events_a_merge_moves_in_are_seen(rt: Runtime, kept: histories.Histories) -> None:
    define(rt, ["big"])
    run(rt, bought("dee", 1))
    run(
        rt,
        [
            {
                "type": "track",
                "anonymousId": "dev-d",
                "event": "Bought",
                "properties": {"total": 80},
                "timestamp": at(2),
                "messageId": "anon-1",
            }
        ],
    )
    assert not stored(rt)
    run(rt, [{"type": "identify", "userId": "dee", "anonymousId": "dev-d", "timestamp": at(0), "messageId": "login"}])
    assert ("big", profile_of(rt, "dee")) in stored(rt)  # the anonymous purchase moved in: two now
    assert stored(rt) == batch(rt)


def test_events_swapped_between_profiles_with_equal_id_sums_are_seen(rt: Runtime, kept: histories.Histories) -> None:
    """Two of eve's small purchases go to fay and two of fay's big ones come to eve, chosen so that eve keeps
    her count, her highest id and the sum of her ids: a token of plain sums took the history kept for her
    for hers still, and left her out of the segment."""
    define(rt, ["big"])
    run(rt, bought("eve", 3, total=10))
    run(rt, bought("fay", 3, total=90))
    run(rt, bought("eve", 3, total=10, first=3))
    eve, fay = profile_of(rt, "eve"), profile_of(rt, "fay")
    assert ("big", eve) not in stored(rt)
    assert len(kept) == 2  # both histories are kept

    def ids(pid: str) -> list[int]:
        with rt.db.read() as session:
            return list(session.scalars(select(ProfileEvent.id).where(ProfileEvent.profile_id == pid)))

    theirs, hers = ids(fay), ids(eve)
    given_up, taken = next(
        (out, into)
        for out in itertools.combinations([i for i in hers if i != max(hers)], 2)
        for into in itertools.combinations(theirs, 2)
        if sum(out) == sum(into)
    )
    with rt.db.unit_of_work() as session:  # as another process's merges and unmerges might leave them
        for pid, moved in ((fay, given_up), (eve, taken)):
            session.execute(update(ProfileEvent).where(ProfileEvent.id.in_(moved)).values(profile_id=pid))
    assert sorted(ids(eve)) == sorted(set(hers) - set(given_up) | set(taken))
    assert (len(ids(eve)), max(ids(eve)), sum(ids(eve))) == (len(hers), max(hers), sum(hers))
    whole = kept.reads["whole"]
    run(rt, bought("eve", 1, total=10, first=6))  # a purchase the segment does not count
    assert kept.reads["whole"] == whole + 1  # the check failed: read whole again
    assert ("big", eve) in stored(rt)  # fay's two big purchases are hers now
    run(rt, bought("fay", 1, total=10, first=3))
    assert stored(rt) == batch(rt)


def test_a_rolled_back_run_keeps_nothing(rt: Runtime, kept: histories.Histories) -> None:
    define(rt, ["big"])

    class Boom(Exception):
        pass

    body = {"batch": bought("eve", 2)}
    items = [("src", e) for e in normalise_request(body, endpoint="batch", received_at=NOW, client_ip=None)]

    def fail_after_processing() -> None:
        with rt.db.unit_of_work() as session:
            process_events(session, items, lock_rows=rt.db.dialect == "postgresql", now=NOW)
            assert kept.reads["whole"] >= 1  # read in the transaction ...
            raise Boom

    with pytest.raises(Boom):
        fail_after_processing()
    assert len(kept) == 0  # ... and not kept: those events were never stored
    run(rt, bought("eve", 2))
    assert len(kept) == 1
    assert stored(rt) == batch(rt)


def test_a_short_history_is_not_kept(rt: Runtime, kept: histories.Histories) -> None:
    kept.min_events = 3
    define(rt, ["big"])
    run(rt, bought("fox", 2))
    assert len(kept) == 0
    run(rt, bought("fox", 1, first=2))
    assert len(kept) == 1


def test_the_least_recently_used_go_first_past_the_bound_and_unused_ones_after_the_ttl(rt: Runtime) -> None:
    now = [0.0]
    kept = histories.Histories(min_events=1, max_events=5, ttl=60.0, clock=lambda: now[0])
    define(rt, ["big"])
    for user in ("gus", "hal", "ivy"):
        run(rt, bought(user, 2))
    ids = [profile_of(rt, user) for user in ("gus", "hal", "ivy")]
    names = frozenset({"Bought"})

    def read(pid: str) -> None:
        with rt.db.unit_of_work() as session:
            events = kept.read(session, session.connection(), pid, names, True, DataKeys.of(session))
            assert [props for _, props in events["Bought"]] == [{"total": 60}, {"total": 60}]

    read(ids[0])
    read(ids[1])
    assert [kept.covers(pid, names, True) for pid in ids] == [True, True, False]
    read(ids[2])  # six events past a bound of five: the least recently used goes
    assert [kept.covers(pid, names, True) for pid in ids] == [False, True, True]
    assert not kept.covers(ids[1], frozenset({"Bought", "Viewed"}), True)  # more names than kept
    now[0] = 61.0
    assert not kept.covers(ids[1], names, True)  # unused for longer than the ttl: forgotten
    assert len(kept) == 1  # ivy's, until it is looked at or something is kept
    read(ids[0])
    assert [kept.covers(pid, names, True) for pid in ids] == [True, False, False]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    events=st.lists(an_event(), min_size=1, max_size=25),
    cuts=st.lists(st.integers(1, 25), max_size=4),
    data=st.data(),
)
def test_streaming_with_kept_histories_equals_a_batch_recompute(
    rt: Runtime, kept: histories.Histories, events: list[dict[str, Any]], cuts: list[int], data: st.DataObject
) -> None:
    reset(rt)
    kept.forget()
    for i, event in enumerate(events):
        event["messageId"] = f"m{i}"
    if data.draw(st.booleans()):
        events.append(dict(events[0]))  # a resend
    bounds = sorted({0, len(events), *(c for c in cuts if c < len(events))})
    define(rt, ORDER)
    for a, b in itertools.pairwise(bounds):
        run(rt, events[a:b])
        assert stored(rt) == batch(rt)


def test_an_unmerge_moves_events_back_and_both_sides_are_right(rt: Runtime, kept: histories.Histories) -> None:

    define(rt, ["big"])
    anonymous = [dict(e, anonymousId="dev-j", messageId=f"j-anon-{i}") for i, e in enumerate(bought("x", 2))]
    for event in anonymous:
        del event["userId"]
    run(rt, anonymous)  # the anonymous profile is in "big", its history kept
    run(rt, bought("jo", 1, total=10))
    run(rt, [{"type": "identify", "userId": "jo", "anonymousId": "dev-j", "timestamp": at(0), "messageId": "j-in"}])
    assert ("big", profile_of(rt, "jo")) in stored(rt)
    unmerge_the_merge(rt, "user_id:jo", NOW)
    run(rt, bought("jo", 1, total=10, first=1))  # jo's own purchases only: out of "big" again
    run(rt, [dict(anonymous[0], messageId="j-anon-9", properties={"total": 10})])
    assert ("big", profile_of(rt, "jo")) not in stored(rt)
    assert stored(rt) == batch(rt)
    assert len([key for key, _ in stored(rt) if key == "big"]) == 1  # the anonymous profile, restored


def test_the_setting_bounds_what_a_process_keeps(rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCORD_SEGMENT_HISTORY_EVENTS", "0")
    with rt.db.read() as session:
        histories._registry.pop(str(session.get_bind().engine.url), None)
        kept = histories.of(session)
    try:
        assert kept.max_events == 0
        kept.min_events = 1
        define(rt, ["big"])
        run(rt, bought("kim", 3))
        assert len(kept) == 0  # 0: nothing kept, every history read whole
        assert stored(rt) == batch(rt)
    finally:
        with rt.db.read() as session:
            histories._registry.pop(str(session.get_bind().engine.url), None)


@pytest.mark.parametrize("value", ["-1", "many"])
def test_the_setting_refuses_what_is_not_a_count(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from accord.config import Settings

    monkeypatch.setenv("ACCORD_SEGMENT_HISTORY_EVENTS", value)
    with pytest.raises(ValidationError, match="segment_history_events"):
        Settings()


def test_an_idle_worker_forgets_what_is_past_its_time(rt: Runtime, kept: histories.Histories) -> None:

    define(rt, ["big"])
    run(rt, bought("lou", 2))
    assert len(kept) == 1
    kept._clock = lambda: time.monotonic() + 3600  # an hour later: past the ttl
    stop = threading.Event()
    worker = Worker(db=rt.db, log=rt.log, poll_interval=0.01)
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while len(kept) and time.monotonic() < deadline:  # no run comes: the idle loop prunes
            time.sleep(0.01)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert len(kept) == 0


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)  # SQLite runs one worker per database
def test_two_workers_keeping_one_customers_history_see_each_others_events(
    rt: Runtime, kept: histories.Histories
) -> None:
    """Two worker processes on PostgreSQL each keep their own histories. Here the second is a Database of
    its own URL (so its own kept histories, as another process has), and the two take turns on one
    customer, then run at once: each run's check finds what the other committed, so exact counts stay
    right after every turn."""
    exact = {
        "nine": {"event": "Bought", "where": [{"property": "total", "op": "gte", "value": 50}], "count": {"eq": 9}},
        "twelve": {"event": "Bought", "count": {"eq": 12}},
    }
    with rt.db.unit_of_work() as session:
        for key, condition in exact.items():
            service.create(session, key=key, name=key, description="", condition=condition, actor="t", now=NOW)
            while not service.backfill_step(session, key, now=NOW).finished:
                pass
    second = Database(f"{rt.db.url}{'&' if '?' in rt.db.url else '?'}application_name=second", keyring=rt.db.keyring)
    try:
        with second.read() as session:
            theirs = histories.of(session)
        assert theirs is not kept
        theirs.forget()
        theirs.min_events, before = 1, theirs.min_events
        try:
            for turn in range(6):
                db = rt.db if turn % 2 == 0 else second
                events = normalise_request(
                    {"batch": bought("cy", 3, first=3 * turn)}, endpoint="batch", received_at=NOW, client_ip=None
                )
                with db.unit_of_work() as session:
                    process_events(session, [("src", e) for e in events], lock_rows=True, now=NOW)
                assert stored(rt) == batch(rt), turn
                cy = profile_of(rt, "cy")
                assert (("nine", cy) in stored(rt)) is (turn == 2)
                assert (("twelve", cy) in stored(rt)) is (turn == 3)
            # On its later turns each read what the other had added since, not the whole history again.
            assert kept.reads["added"] >= 2
            assert theirs.reads["added"] >= 2

            errors: list[BaseException] = []

            def at_once(db: Database, first: int) -> None:
                """Five runs of one event each, retried as the worker retries a run the other conflicted with."""
                try:
                    for step in range(5):
                        events = normalise_request(
                            {"batch": bought("cy", 1, first=first + step)},
                            endpoint="batch",
                            received_at=NOW,
                            client_ip=None,
                        )
                        for attempt in itertools.count():
                            try:
                                with db.unit_of_work() as session:
                                    process_events(session, [("src", e) for e in events], lock_rows=True, now=NOW)
                                break
                            except (StaleRead, DBAPIError) as error:
                                if attempt == 8 or (isinstance(error, DBAPIError) and not conflicted(error)):
                                    raise
                except BaseException as error:
                    errors.append(error)

            threads = [
                threading.Thread(target=at_once, args=(db, first)) for db, first in ((rt.db, 100), (second, 200))
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=60)
            assert not errors
            with rt.db.read() as session:
                assert session.scalar(select(func.count()).select_from(ProfileEvent)) == 28
            assert stored(rt) == batch(rt)
        finally:
            theirs.min_events = before
            theirs.forget()
    finally:
        second.dispose()
