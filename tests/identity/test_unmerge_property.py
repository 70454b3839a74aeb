"""Hypothesis: unmerge after merge restores the profiles (identifiers and events), whatever came before."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from accord.db.base import utcnow
from accord.identity import history
from accord.identity.models import Merge
from accord.profiles import service as profiles
from accord.runtime import Runtime
from pipeline.helpers import process, reset, send, snapshot
from pipeline.test_order_independence import events

LINK = "m-link"


def partition(rt: Runtime) -> list[tuple[tuple[tuple[str, str], ...], tuple[str, ...]]]:
    """Identifiers and events of each live profile, without the linking event."""
    return sorted((ids, tuple(m for m in messages if m != LINK)) for ids, *_, messages in snapshot(rt))


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much],
)
@given(original=events(), data=st.data())
def test_unmerge_after_merge_restores_the_profiles(
    rt: Runtime, original: list[dict[str, Any]], data: st.DataObject
) -> None:
    reset(rt)
    send(rt, original)
    process(rt)
    before = partition(rt)
    # Pairs of profiles whose merge the default limits allow (not two user ids), and a key of each.
    pairs = [
        (left, right)
        for i, (keys_i, _) in enumerate(before)
        for j, (keys_j, _) in enumerate(before)
        if i < j and not (any(k[0] == "user_id" for k in keys_i) and any(k[0] == "user_id" for k in keys_j))
        for left in keys_i
        for right in keys_j
        if left[0] != right[0]  # one event carries one value per type
        and {left[0], right[0]} <= {"user_id", "anonymous_id", "email"}
        and {left[0], right[0]} & {"user_id", "anonymous_id"}  # a call needs one of these
    ]
    assume(pairs)
    left, right = data.draw(st.sampled_from(pairs), label="linked keys")
    field = {"user_id": "userId", "anonymous_id": "anonymousId"}
    link: dict[str, Any] = {"type": "identify", "messageId": LINK, "timestamp": "2026-05-02T00:00:00Z", "traits": {}}
    for kind, value in (left, right):
        if kind in field:
            link[field[kind]] = value
        else:
            link["traits"][kind] = value
    send(rt, [link])
    process(rt)
    with rt.db.read() as session:
        merge = session.scalars(select(Merge).where(Merge.message_id == LINK, Merge.kind == "merge")).first()
    assume(merge is not None)  # a limit may refuse the link
    assert merge is not None
    with rt.db.unit_of_work() as session:
        person = profiles.resolve(session, merge.survivor_id)
        assert person is not None
        history.unmerge(session, person, merge_id=merge.id, actor="test", now=utcnow(), lock_rows=False)
    assert partition(rt) == before


def test_unmerge_leaves_out_the_lookups_of_an_identifier_it_separates(rt: Runtime) -> None:
    """Found by the property above: after the unmerge, the link's anonymous id may not join its old profile,
    and the alias lookup derived from it must not join the event to the alias's owner instead."""
    at = "2026-05-01T10:00:00Z"
    original = [
        {"type": "page", "messageId": "m0", "timestamp": at, "userId": "u3", "anonymousId": "d1"},
        {"type": "alias", "messageId": "m1", "timestamp": at, "userId": "u2", "previousId": "d1"},
        {
            "type": "identify",
            "messageId": "m2",
            "timestamp": at,
            "anonymousId": "d4",
            "traits": {"email": "ann@example.com"},
        },
    ]
    reset(rt)
    send(rt, original)
    process(rt)
    before = partition(rt)
    link = {"type": "identify", "messageId": LINK, "timestamp": "2026-05-02T00:00:00Z", "anonymousId": "d1"}
    send(rt, [{**link, "traits": {"email": "ann@example.com"}}])
    process(rt)
    with rt.db.read() as session:
        merge = session.scalars(select(Merge).where(Merge.message_id == LINK, Merge.kind == "merge")).one()
    with rt.db.unit_of_work() as session:
        person = profiles.resolve(session, merge.survivor_id)
        assert person is not None
        history.unmerge(session, person, merge_id=merge.id, actor="test", now=utcnow(), lock_rows=False)
    assert partition(rt) == before
