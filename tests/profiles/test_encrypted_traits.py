"""Personal traits at rest: names, addresses, birth dates and traits a mapping flags `pii: true` are stored
as one ciphertext under the person's data key, never in clear (the database files, a pg_dump); readers
decrypt them (the API, segments streaming and backfilled, the name search), merges and unmerges carry
them, and the migration converts stored profiles."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from alembic import command
from sqlalchemy import select, text

from accord.console import service as console
from accord.db import migrate
from accord.db.base import utcnow
from accord.profiles import private
from accord.profiles import service as profiles
from accord.profiles.models import Profile, ProfileWord
from accord.profiles.private import profile_traits
from accord.runtime import Runtime
from accord.security.crypto import is_ciphertext, key_id_of
from accord.segments import conditions, evaluate, pushdown
from accord.segments import service as segments
from accord.sources import webhooks
from accord.sources.mapping import parse_mapping
from conftest import database_text, found
from pipeline.helpers import process, send

FIRST, LAST = "Zebulon", "Quillfeather"
STREET, BIRTHDAY, LOYALTY = "17 Lanternwick Row", "1981-04-09", "LC-99137-XQ"
PERSON = {
    "firstName": FIRST,
    "lastName": LAST,
    "address": {"street": STREET, "city": "Leeds"},
    "birthday": BIRTHDAY,
    "loyaltyCode": LOYALTY,
    "plan": "gold",
}
SECRETS = (FIRST, LAST, STREET, BIRTHDAY, LOYALTY)
LATER = "2026-06-02T00:00:00Z"  # after the time pipeline.helpers.send gives events
FLAGGING = {
    "mapping": 1,
    "name": "crm",
    "identifiers": [{"field": "userId", "type": "user_id"}],
    "traits": [{"field": "code", "name": "loyaltyCode", "pii": True}],
}


def flag_loyalty_code(rt: Runtime) -> None:
    """A source mapping that flags the trait `loyaltyCode` as personal data."""
    with rt.db.unit_of_work() as session:
        webhooks.put_mapping(
            session, source_id="src_crm", name="crm", mapping=parse_mapping(FLAGGING), actor="test", now=utcnow()
        )


def stored_row(rt: Runtime, user: str) -> tuple[str, dict[str, Any], str | None]:
    with rt.db.read() as session:
        person = profiles.resolve(session, f"user_id:{user}")
        assert person is not None
        return person.id, dict(person.traits), person.traits_enc


def traits_of(rt: Runtime, ref: str) -> dict[str, Any]:
    with rt.db.read() as session:
        person = profiles.resolve(session, ref)
        assert person is not None
        return profile_traits(session, person)


def test_personal_traits_are_never_stored_in_clear(rt: Runtime, tmp_path: Path) -> None:
    flag_loyalty_code(rt)
    send(rt, [{"type": "identify", "userId": "zq", "traits": PERSON}])
    process(rt)
    profile_id, clear, sealed = stored_row(rt, "zq")
    assert clear == {"plan": "gold"}
    assert sealed is not None
    assert is_ciphertext(sealed)
    assert key_id_of(sealed) == profile_id
    assert traits_of(rt, "user_id:zq") == PERSON
    blob = database_text(rt, tmp_path)  # every byte of the database files, or a pg_dump
    assert found(blob, "gold")  # the search sees what is in clear
    assert [secret for secret in SECRETS if found(blob, secret)] == []


def test_a_ciphertext_moved_to_another_profile_does_not_open(rt: Runtime) -> None:
    send(rt, [{"type": "identify", "userId": "zq", "traits": PERSON}, {"type": "identify", "userId": "o"}])
    process(rt)
    zq, _, sealed = stored_row(rt, "zq")
    other, _, _ = stored_row(rt, "o")
    with rt.db.unit_of_work() as session:
        session.execute(text("UPDATE profiles SET traits_enc = :s WHERE id = :id"), {"s": sealed, "id": other})
    assert traits_of(rt, "user_id:o") == {}
    assert traits_of(rt, zq)["lastName"] == LAST


def test_segments_on_personal_traits_stream_and_backfill(rt: Runtime) -> None:
    now = utcnow()
    condition = {
        "all": [{"trait": "lastName", "op": "eq", "value": LAST}, {"trait": "plan", "op": "eq", "value": "gold"}]
    }
    node = conditions.parse(condition)
    personal = private.Personal()
    # An encrypted trait cannot be compared in SQL: the backfill evaluates such a segment in Python.
    assert pushdown.predicate(node, evaluate.PROFILES.c.traits, rt.db.dialect, readable=personal.readable) is None
    assert (
        pushdown.predicate(node.all[1], evaluate.PROFILES.c.traits, rt.db.dialect, readable=personal.readable)
        is not None
    )
    send(rt, [{"type": "identify", "userId": "zq", "traits": PERSON}])
    send(rt, [{"type": "identify", "userId": "other", "traits": {"lastName": "Else", "plan": "gold"}}])
    process(rt)
    with rt.db.unit_of_work() as session:
        segments.create(session, key="q", name="q", description="", condition=condition, actor="t", now=now)
    while True:
        with rt.db.unit_of_work() as session:
            if segments.backfill_step(session, "q", now=now, limit=1).finished:
                break
    zq, _, _ = stored_row(rt, "zq")
    with rt.db.read() as session:
        assert {m.profile_id for m in segments.members(session, "q", after=None, limit=10)} == {zq}
    # Streaming: a new person enters as their identify is processed, and leaves when their name changes.
    send(rt, [{"type": "identify", "userId": "zq2", "traits": {"lastName": LAST, "plan": "gold"}}])
    process(rt)
    zq2, _, _ = stored_row(rt, "zq2")
    with rt.db.read() as session:
        assert {m.profile_id for m in segments.members(session, "q", after=None, limit=10)} == {zq, zq2}
        assert evaluate.recompute(session, now) >= {("q", zq), ("q", zq2)}
    # (pipeline.helpers.send stamps every event with one time: a later one must say so to win)
    send(rt, [{"type": "identify", "userId": "zq", "traits": {"lastName": "Renamed"}, "timestamp": LATER}])
    process(rt)
    with rt.db.read() as session:
        assert {m.profile_id for m in segments.members(session, "q", after=None, limit=10)} == {zq2}


def test_the_name_index_follows_names_merges_and_erasure(rt: Runtime) -> None:
    send(
        rt,
        [
            {"type": "identify", "anonymousId": "d1", "traits": {"name": "Ann Smith"}},
            {"type": "identify", "userId": "ann", "traits": {"email": "ann@example.com"}},
            {"type": "identify", "userId": "anna", "traits": {"firstName": "Anna", "lastName": "Smithers"}},
        ],
    )
    process(rt)

    def search(query: str) -> set[str]:
        with rt.db.read() as session:
            return {f.profile_id for f in console.find_customers(session, query) if f.matched == "name"}

    device = traits_of(rt, "anonymous_id:d1")
    assert device == {"name": "Ann Smith"}
    d1 = stored_row_by(rt, "anonymous_id:d1")
    anna = stored_row_by(rt, "user_id:anna")
    assert search("ann") == {d1}
    assert search("SMITH ann") == {d1}
    assert search("anna smithers") == {anna}
    assert search("smi") == set()  # whole words only
    # No word is stored in clear.
    with rt.db.read() as session:
        words = session.scalars(select(ProfileWord.word)).all()
    assert words
    assert all(w.startswith("bi:") for w in words)
    assert not {"ann", "smith", "anna", "smithers"} & set(words)
    # A merge: the survivor is found by the name of the profile it absorbed.
    send(rt, [{"type": "alias", "userId": "ann", "previousId": "d1"}])
    send(rt, [{"type": "identify", "userId": "ann", "anonymousId": "d1"}])
    process(rt)
    survivor = stored_row_by(rt, "user_id:ann")
    assert stored_row_by(rt, "anonymous_id:d1") == survivor
    assert search("ann smith") == {survivor}
    assert traits_of(rt, "user_id:ann") == {"name": "Ann Smith", "email": "ann@example.com"}
    # A rename drops the old words.
    send(rt, [{"type": "identify", "userId": "ann", "traits": {"name": "Ann Jones"}, "timestamp": LATER}])
    process(rt)
    assert search("smith") == set()
    assert search("jones") == {survivor}
    # Erasure takes the person's words with them.
    from accord.consent.keys import SigningKey
    from accord.rights import service as rights

    with rt.db.unit_of_work() as session:
        person = profiles.resolve(session, "user_id:ann")
        assert person is not None
        rights.erase(session, person, key=SigningKey.generate(), actor="test", now=utcnow())
    with rt.db.read() as session:
        left = set(session.scalars(select(ProfileWord.profile_id)))
    assert left == {anna}


def stored_row_by(rt: Runtime, ref: str) -> str:
    with rt.db.read() as session:
        person = profiles.resolve(session, ref)
        assert person is not None
        return person.id


def test_the_migration_converts_stored_traits_and_back(rt: Runtime) -> None:
    flag_loyalty_code(rt)
    send(rt, [{"type": "identify", "userId": "zq", "traits": PERSON}])
    process(rt)
    config = migrate._config()
    with rt.db.engine.begin() as connection:
        config.attributes["connection"] = connection
        config.attributes["keyring"] = rt.db.keyring
        command.downgrade(config, "0024")
    with rt.db.read() as session:
        (stored,) = session.execute(text("SELECT traits FROM profiles")).scalars().all()
    assert (json.loads(stored) if isinstance(stored, str) else stored) == PERSON  # as the code before stored it
    migrate.upgrade(rt.db)
    profile_id, clear, sealed = stored_row(rt, "zq")
    assert clear == {"plan": "gold"}
    assert sealed is not None
    assert key_id_of(sealed) == profile_id
    assert traits_of(rt, "user_id:zq") == PERSON
    with rt.db.read() as session:
        assert [f.profile_id for f in console.find_customers(session, LAST.lower())] == [profile_id]
        assert session.scalar(select(Profile.traits_enc).where(Profile.id == profile_id)) == sealed
