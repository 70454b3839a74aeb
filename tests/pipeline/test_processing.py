"""The worker's effects: stitching, merges, traits, counts, dedupe, quarantine. Both databases."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from accord.identity.models import Merge
from accord.ingest import quarantine
from accord.ingest.models import QuarantinedEvent
from accord.log.port import NewRecord
from accord.profiles import service as profiles
from accord.profiles.models import ProfileEvent
from accord.runtime import Runtime
from accord.security.datakeys import DataKeys
from pipeline.helpers import RECEIVED, process, reset, send, snapshot, use_rules


def profile(rt: Runtime, ref: str) -> Any:
    with rt.db.read() as session:
        found = profiles.resolve(session, ref)
        assert found is not None, f"no profile for {ref}"
        ids = {(i.type, i.value) for i in profiles.identities(session, found.id)}
        return found, ids


def test_anonymous_then_identified_is_one_profile(rt: Runtime) -> None:
    send(
        rt,
        [
            {"type": "page", "anonymousId": "anon-1", "name": "Home", "timestamp": "2026-05-01T10:00:00Z"},
            {"type": "track", "anonymousId": "anon-1", "event": "Product Viewed", "timestamp": "2026-05-01T10:01:00Z"},
            {
                "type": "identify",
                "anonymousId": "anon-1",
                "userId": "42",
                "traits": {"email": " Ann@Example.COM "},
                "timestamp": "2026-05-01T10:02:00Z",
            },
        ],
    )
    assert process(rt) == 3
    found, ids = profile(rt, "email:ann@example.com")
    assert ids == {("anonymous_id", "anon-1"), ("user_id", "42"), ("email", "ann@example.com")}
    assert found.counts == {"types": {"page": 1, "track": 1, "identify": 1}, "events": {"Product Viewed": 1}}
    assert found.first_seen.isoformat() == "2026-05-01T10:00:00+00:00"
    assert found.last_seen.isoformat() == "2026-05-01T10:02:00+00:00"


def test_event_linking_two_profiles_merges_them_and_old_id_resolves(rt: Runtime) -> None:
    send(
        rt,
        [
            {"type": "track", "anonymousId": "phone-1", "event": "App Opened", "timestamp": "2026-05-01T10:00:00Z"},
            {"type": "identify", "userId": "u7", "traits": {"plan": "gold"}, "timestamp": "2026-05-01T11:00:00Z"},
        ],
    )
    process(rt)
    absorbed_candidates = {profile(rt, "anonymous_id:phone-1")[0].id, profile(rt, "user_id:u7")[0].id}
    assert len(absorbed_candidates) == 2
    send(rt, [{"type": "identify", "userId": "u7", "anonymousId": "phone-1", "timestamp": "2026-05-02T09:00:00Z"}])
    process(rt)
    survivor, ids = profile(rt, "user_id:u7")
    assert ids == {("anonymous_id", "phone-1"), ("user_id", "u7")}
    assert survivor.counts["types"] == {"track": 1, "identify": 2}
    for old_id in absorbed_candidates:
        assert profile(rt, old_id)[0].id == survivor.id
    with rt.db.read() as session:
        merges = session.scalars(select(Merge)).all()
        timeline = session.scalars(select(ProfileEvent.profile_id)).all()
    assert len(merges) == 1
    assert merges[0].survivor_id == survivor.id
    assert set(timeline) == {survivor.id}


def test_alias_links_previous_id_in_either_order(rt: Runtime) -> None:
    # Aliasing one user id to another joins two user ids: the default limit of 1 refuses that.
    use_rules(rt, {"identifiers": [{"type": "user_id", "limit": 2}, {"type": "anonymous_id"}, {"type": "alias"}]})
    send(rt, [{"type": "alias", "previousId": "old-user", "userId": "new-user", "timestamp": "2026-05-01T10:00:00Z"}])
    process(rt)
    send(rt, [{"type": "track", "userId": "old-user", "event": "Late", "timestamp": "2026-05-01T11:00:00Z"}])
    send(rt, [{"type": "track", "anonymousId": "anon-9", "event": "Early", "timestamp": "2026-04-01T11:00:00Z"}])
    send(rt, [{"type": "alias", "previousId": "anon-9", "userId": "new-user", "timestamp": "2026-05-01T12:00:00Z"}])
    process(rt)
    found, ids = profile(rt, "user_id:new-user")
    assert ("user_id", "old-user") in ids
    assert ("anonymous_id", "anon-9") in ids
    assert found.counts["events"] == {"Late": 1, "Early": 1}


def test_traits_last_writer_wins_by_event_time_not_arrival(rt: Runtime) -> None:
    send(rt, [{"type": "identify", "userId": "u1", "traits": {"plan": "gold"}, "timestamp": "2026-05-02T00:00:00Z"}])
    send(
        rt,
        [
            {
                "type": "identify",
                "userId": "u1",
                "traits": {"plan": "free", "city": "Oslo"},
                "timestamp": "2026-05-01T00:00:00Z",
            }
        ],
    )
    process(rt)
    found, _ = profile(rt, "user_id:u1")
    assert found.traits == {"plan": "gold", "city": "Oslo"}


def test_equal_times_are_ordered_by_message_id(rt: Runtime) -> None:
    at = "2026-05-01T00:00:00Z"
    send(rt, [{"type": "identify", "userId": "u1", "traits": {"plan": "b"}, "messageId": "m-b", "timestamp": at}])
    send(rt, [{"type": "identify", "userId": "u1", "traits": {"plan": "a"}, "messageId": "m-a", "timestamp": at}])
    process(rt)
    assert profile(rt, "user_id:u1")[0].traits["plan"] == "b"


def test_resent_message_is_stored_and_counted_once(rt: Runtime) -> None:
    event = {"type": "track", "userId": "u1", "event": "Paid", "messageId": "once"}
    send(rt, [event, event])
    send(rt, [event])
    process(rt)
    process(rt)
    found, _ = profile(rt, "user_id:u1")
    assert found.counts["events"] == {"Paid": 1}
    with rt.db.read() as session:
        assert session.scalar(select(func.count()).select_from(ProfileEvent)) == 1


def test_same_message_id_from_another_source_is_another_event(rt: Runtime) -> None:
    event = {"type": "track", "userId": "u1", "event": "Paid", "messageId": "same"}
    send(rt, [event], source_id="src_a")
    send(rt, [event], source_id="src_b")
    process(rt)
    assert profile(rt, "user_id:u1")[0].counts["events"] == {"Paid": 2}


def test_placeholder_ids_do_not_merge_strangers(rt: Runtime) -> None:
    send(
        rt,
        [
            {"type": "identify", "userId": "u1", "anonymousId": "undefined", "traits": {"email": "null"}},
            {"type": "identify", "userId": "u2", "anonymousId": "undefined", "traits": {"email": "null"}},
        ],
    )
    process(rt)
    assert profile(rt, "user_id:u1")[0].id != profile(rt, "user_id:u2")[0].id


def test_event_with_only_placeholder_ids_is_quarantined_then_replayed(rt: Runtime) -> None:
    send(
        rt,
        [
            {"type": "track", "anonymousId": "null", "event": "Ghost", "messageId": "ghost-1"},
            {"type": "track", "anonymousId": "real", "event": "Fine"},
        ],
    )
    process(rt)
    assert profile(rt, "anonymous_id:real")[0].counts["events"] == {"Fine": 1}
    with rt.db.read() as session:
        waiting, keys = quarantine.waiting(session), DataKeys.of(session)
        assert [(q.message_id, "no usable identifier" in quarantine.error_of(keys, q)) for q in waiting] == [
            ("ghost-1", True)
        ]
    # A replay re-sends it; it fails again and stays visible, with its attempts counted.
    assert quarantine.replay(rt.db, rt.log) == 1
    process(rt)
    with rt.db.read() as session:
        row = session.scalars(select(QuarantinedEvent)).one()
    assert row.attempts == 2
    assert row.replayed_at is None


def test_quarantined_event_does_not_block_the_ones_behind_it(rt: Runtime) -> None:
    bad = {"type": "track", "anonymousId": "a", "event": "X", "messageId": "bad", "timestamp": "not a time"}
    # Bypass the gateway's checks, as a corrupted log record or a future bug would.
    rt.log.append(NewRecord(source_id="src_test", received_at=RECEIVED, events=[bad]))
    send(rt, [{"type": "track", "anonymousId": "a", "event": "After"}])
    process(rt)
    assert profile(rt, "anonymous_id:a")[0].counts["events"] == {"After": 1}
    with rt.db.read() as session:
        assert [q.message_id for q in quarantine.waiting(session)] == ["bad"]


def test_one_by_one_processing_stitches_a_chain(rt: Runtime) -> None:
    events = [
        {
            "type": "identify",
            "userId": f"u{i % 7}",
            "anonymousId": f"a{i % 11}",
            "traits": {"n": i},
            "timestamp": f"2026-05-01T10:{i % 60:02d}:00Z",
            "messageId": f"m{i}",
        }
        for i in range(120)
    ]
    send(rt, events)
    process(rt, batch_size=1)
    one_by_one = snapshot(rt)
    reset(rt)
    send(rt, events)
    process(rt)
    assert snapshot(rt) == one_by_one
    # i links u(i%7) with a(i%11): a connected graph, but a profile holds one user id, so 7 profiles
    # share the 18 identifiers, each device with the user who used it first.
    assert len(one_by_one) == 7
    assert sum(len(p[0]) for p in one_by_one) == 18


def test_group_traits_describe_the_company_not_the_person(rt: Runtime) -> None:
    send(
        rt,
        [
            {"type": "group", "userId": "u1", "groupId": "acme", "traits": {"email": "billing@acme.com"}},
            {"type": "group", "userId": "u2", "groupId": "acme", "traits": {"email": "billing@acme.com"}},
        ],
    )
    process(rt)
    first, first_ids = profile(rt, "user_id:u1")
    second, _ = profile(rt, "user_id:u2")
    assert first.id != second.id
    assert first_ids == {("user_id", "u1")}
    assert first.traits == {}


def test_alias_of_an_anonymous_id_links_it_under_the_default_rules(rt: Runtime) -> None:
    send(rt, [{"type": "track", "anonymousId": "anon-9", "event": "Early", "timestamp": "2026-04-01T11:00:00Z"}])
    send(rt, [{"type": "alias", "previousId": "anon-9", "userId": "u1", "timestamp": "2026-05-01T12:00:00Z"}])
    process(rt)
    found, ids = profile(rt, "user_id:u1")
    assert ("anonymous_id", "anon-9") in ids
    assert found.counts["events"] == {"Early": 1}


def test_alias_of_another_user_id_is_refused_by_the_default_limit(rt: Runtime) -> None:
    send(rt, [{"type": "track", "userId": "old-user", "event": "Old", "timestamp": "2026-04-01T11:00:00Z"}])
    send(rt, [{"type": "alias", "previousId": "old-user", "userId": "new-user", "timestamp": "2026-05-01T12:00:00Z"}])
    process(rt)
    assert profile(rt, "user_id:old-user")[0].id != profile(rt, "user_id:new-user")[0].id
