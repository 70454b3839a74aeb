"""Hypothesis: merges decided by probabilistic matching are events like any other. Mixed with ordinary
events, in any order, duplicated and batched any way, they give the same partition; and unmerging one
restores the profiles as they were before it."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from accord.db.base import utcnow
from accord.identity import history
from accord.identity.linkage import MATCH_EVENT, MATCH_SOURCE
from accord.identity.models import Merge
from accord.log.port import NewRecord
from accord.profiles import service as profiles
from accord.runtime import Runtime
from pipeline.helpers import RECEIVED, process, reset, send, snapshot
from pipeline.test_order_independence import DEVICES, TIMES, USERS, events

LATER = "2026-05-02T00:00:00Z"  # after every event of `events()`
KEYS = [("user_id", u) for u in USERS] + [("anonymous_id", d) for d in DEVICES]


@st.composite
def links(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Link events as the matching service writes them (only Accord can: the gateway drops `_accord`)."""
    made = []
    for index in range(draw(st.integers(min_value=1, max_value=3))):
        pair = draw(st.lists(st.sampled_from(KEYS), min_size=2, max_size=2, unique=True))
        moment = draw(st.sampled_from(TIMES))
        made.append(
            {
                "type": "track",
                "event": MATCH_EVENT,
                "messageId": f"match-{index}",
                "timestamp": moment,
                "receivedAt": moment,
                "properties": {"review_id": index},
                "context": {},
                "_accord": {"link": [list(key) for key in pair]},
            }
        )
    return made


def feed(rt: Runtime, stream: list[tuple[str, dict[str, Any]]], size: int) -> None:
    for start in range(0, len(stream), size):
        chunk = stream[start : start + size]
        for source, event in chunk:
            if source == MATCH_SOURCE:
                rt.log.append(NewRecord(source_id=MATCH_SOURCE, received_at=RECEIVED, events=[event]))
            else:
                send(rt, [event])


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(original=events(), matched=links(), data=st.data())
def test_matched_merges_commute_with_every_other_event(
    rt: Runtime, original: list[dict[str, Any]], matched: list[dict[str, Any]], data: st.DataObject
) -> None:
    tagged = [("src_test", e) for e in original] + [(MATCH_SOURCE, e) for e in matched]
    reset(rt)
    feed(rt, tagged, len(tagged))
    process(rt)
    expected = snapshot(rt)

    reset(rt)
    repeats = data.draw(st.lists(st.sampled_from(tagged), max_size=5), label="duplicates")
    stream = data.draw(st.permutations(tagged + repeats), label="stream")
    feed(rt, stream, data.draw(st.integers(min_value=1, max_value=6), label="record size"))
    process(rt, batch_size=data.draw(st.sampled_from([1, 3, 500]), label="worker batch"))
    assert snapshot(rt) == expected


def partition(rt: Runtime, without: str) -> list[tuple[Any, ...]]:
    return sorted((ids, tuple(m for m in messages if m != without)) for ids, *_, messages in snapshot(rt))


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much],
)
@given(original=events(), matched=links())
def test_unmerging_a_matched_merge_restores_the_profiles(
    rt: Runtime, original: list[dict[str, Any]], matched: list[dict[str, Any]]
) -> None:
    reset(rt)
    send(rt, original)
    process(rt)
    link = matched[0]
    before = partition(rt, link["messageId"])
    held = {key for keys, _ in before for key in keys}
    assume(all(tuple(key) in held for key in link["_accord"]["link"]))  # matching links existing profiles only
    rt.log.append(
        NewRecord(
            source_id=MATCH_SOURCE, received_at=RECEIVED, events=[{**link, "timestamp": LATER, "receivedAt": LATER}]
        )
    )
    process(rt)
    with rt.db.read() as session:
        merge = session.scalars(
            select(Merge).where(Merge.message_id == link["messageId"], Merge.kind == "merge")
        ).first()
    assume(merge is not None)  # the two keys may be one profile already, or a limit may refuse the link
    assert merge is not None
    with rt.db.unit_of_work() as session:
        person = profiles.resolve(session, merge.survivor_id)
        assert person is not None
        history.unmerge(session, person, merge_id=merge.id, actor="test", now=utcnow(), lock_rows=False)
    assert partition(rt, link["messageId"]) == before
