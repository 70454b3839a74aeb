"""The timeline at rest: payloads encrypted under the person's data key, readable through the API and the
re-derivations, unreadable everywhere once the person's keys are destroyed (crypto-shredding)."""

from __future__ import annotations

import json
from typing import Any

from alembic import command
from sqlalchemy import select, text

from accord.consent.keys import SigningKey
from accord.db import migrate
from accord.db.base import utcnow
from accord.profiles import service as profiles
from accord.profiles.models import ProfileEvent
from accord.profiles.sealed import is_sealed, open_payload, sealed_by
from accord.rights import service as rights
from accord.runtime import Runtime
from accord.security.datakeys import DataKeys
from pipeline.helpers import process, send

SECRET = "recording-7731-secret"


def raw_events(rt: Runtime) -> list[tuple[Any, ...]]:
    with rt.db.read() as session:
        rows = session.execute(text("SELECT source_id, message_id, profile_id, payload FROM events")).all()
    # SQLite hands the JSON column back as text through a plain SELECT.
    return [(*row[:3], json.loads(row[3]) if isinstance(row[3], str) else row[3]) for row in rows]


def test_payloads_are_sealed_and_read_back(rt: Runtime) -> None:
    send(
        rt,
        [
            {"type": "identify", "userId": "u1", "anonymousId": "d1", "traits": {"plan": "pro"}},
            {"type": "track", "anonymousId": "d1", "event": "Called", "properties": {"recording": SECRET}},
            {"type": "track", "anonymousId": "d2", "event": "Viewed", "properties": {"page": "/x"}},
        ],
    )
    process(rt)
    stored = raw_events(rt)
    assert len(stored) == 3
    assert SECRET not in repr(stored)
    assert "Viewed" not in repr([row[3] for row in stored])  # only the indexed columns stay readable
    with rt.db.read() as session:
        for profile_id, payload in session.execute(select(ProfileEvent.profile_id, ProfileEvent.payload)):
            assert is_sealed(payload)
            assert sealed_by(payload) == profile_id
        person = profiles.resolve(session, "user_id:u1")
        assert person is not None
        page = profiles.timeline(session, person.id)
        called = [e for e in page.events if e.event == "Called"]
        assert called[0].payload["properties"] == {"recording": SECRET}
    # A sealed payload copied to another row does not open there.
    with rt.db.read() as session:
        keys = DataKeys.of(session)
        (a_source, a_message, _, a_payload), (_, b_message, _, _) = stored[0], stored[1]
        assert open_payload(keys, a_source, a_message, a_payload)["messageId"] == a_message
        assert open_payload(keys, a_source, b_message, a_payload) == {}


def test_erasure_shreds_copies_taken_before_it(rt: Runtime) -> None:
    send(
        rt,
        [
            {"type": "identify", "userId": "ann", "traits": {"email": "ann@example.com"}},
            {"type": "track", "userId": "ann", "event": "Called", "properties": {"recording": SECRET}},
            {"type": "track", "userId": "bob", "event": "Called", "properties": {"recording": "bob's"}},
        ],
    )
    process(rt)
    backup = raw_events(rt)  # what a backup taken now holds
    with rt.db.unit_of_work() as session:
        ann = profiles.resolve(session, "email:ann@example.com")
        assert ann is not None
        done = rights.erase(session, ann, key=SigningKey.generate(), actor="test", now=utcnow())
        assert done.data_keys == 1
    with rt.db.read() as session:
        keys = DataKeys.of(session)
        opened = {
            message_id: open_payload(keys, source_id, message_id, payload)
            for source_id, message_id, profile_id, payload in backup
        }
    ann_rows = [row[1] for row in backup if row[2] == ann.id]
    assert len(ann_rows) == 2
    assert all(opened[m] == {} for m in ann_rows)  # unreadable: the key is gone
    others = [opened[row[1]] for row in backup if row[2] != ann.id]
    assert [o["properties"] for o in others] == [{"recording": "bob's"}]


def test_the_migration_seals_a_stored_timeline_and_back(rt: Runtime) -> None:
    send(rt, [{"type": "track", "userId": "u1", "event": "Called", "properties": {"recording": SECRET}}])
    process(rt)
    config = migrate._config()
    with rt.db.engine.begin() as connection:
        config.attributes["connection"] = connection
        config.attributes["keyring"] = rt.db.keyring
        command.downgrade(config, "0018")
    assert SECRET in repr(raw_events(rt))  # as the code before encryption stored it
    migrate.upgrade(rt.db)
    assert SECRET not in repr(raw_events(rt))
    with rt.db.read() as session:
        person = profiles.resolve(session, "user_id:u1")
        assert person is not None
        assert profiles.timeline(session, person.id).events[0].payload["properties"] == {"recording": SECRET}
