"""What a worker caches of the configuration (the identity rules, which traits are personal, the match
model's settings) is checked against the stored stamps at the start of every run, all three in one read:
a change another process makes takes effect on the worker's next run."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from accord.db.base import utcnow
from accord.identity.matching import DEFAULT_SETTINGS
from accord.identity.models import Identity, MatchKey, MatchModel
from accord.identity.rules import DEFAULT_DOCUMENT
from accord.identity.service import set_rules
from accord.profiles import service as profiles
from accord.runtime import Runtime
from accord.sources import webhooks
from accord.sources.mapping import parse_mapping
from pipeline.helpers import process, send, use_rules

FLAGGING = {
    "mapping": 1,
    "name": "crm",
    "identifiers": [{"field": "userId", "type": "user_id"}],
    "traits": [{"field": "code", "name": "loyaltyCode", "pii": True}],
}
PERSON = {"firstName": "Wilhelmina", "lastName": "Ostrowska", "loyaltyCode": "LC-1", "plan": "gold"}


def stored(rt: Runtime, ref: str) -> tuple[str, dict[str, Any], str | None]:
    with rt.db.read() as session:
        person = profiles.resolve(session, ref)
        assert person is not None
        return person.id, dict(person.traits), person.traits_enc


def test_a_change_another_process_made_is_used_by_the_next_run(rt: Runtime) -> None:
    use_rules(rt, DEFAULT_DOCUMENT)
    send(rt, [{"type": "identify", "userId": "first", "traits": PERSON}])
    assert process(rt) == 1  # the worker has read and cached the configuration in force
    _, clear, _ = stored(rt, "user_id:first")
    assert clear["loyaltyCode"] == "LC-1"
    with rt.db.read() as session:
        assert session.scalars(select(MatchKey.key)).all() == []  # no model: no blocking index

    # Another process (its own engine and connections) blocks a user id, flags a trait as personal data
    # and trains a model. It never touches this process's caches.
    other = Runtime.create(rt.settings)
    try:
        with other.db.unit_of_work() as session:
            set_rules(session, {**DEFAULT_DOCUMENT, "blocked": ["^blocked$"]}, actor="test", now=utcnow())
            webhooks.put_mapping(
                session, source_id="src_crm", name="crm", mapping=parse_mapping(FLAGGING), actor="test", now=utcnow()
            )
            levels = [[-1.0, 1.0] for _ in DEFAULT_SETTINGS.fields]
            document = {"settings": DEFAULT_SETTINGS.document(), "weights": {"prior": 0.01, "levels": levels}}
            session.add(MatchModel(version=1, document=document, created_at=datetime.now(UTC), actor="test"))
    finally:
        other.close()

    send(rt, [{"type": "identify", "userId": "blocked", "anonymousId": "anon-2", "traits": PERSON}])
    assert process(rt) == 1
    profile_id, clear, sealed = stored(rt, "anonymous_id:anon-2")
    with rt.db.read() as session:
        assert session.scalars(select(Identity.type).where(Identity.profile_id == profile_id)).all() == [
            "anonymous_id"
        ]  # the new rules: the blocked user id is not an identifier
        assert session.scalars(select(MatchKey.key).where(MatchKey.profile_id == profile_id)).all() != []
    assert "loyaltyCode" not in clear  # the new mapping: sealed with the other personal traits
    assert sealed is not None
