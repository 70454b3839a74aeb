"""Personal identifiers (email, phone) at rest: a blind index and a ciphertext, found by equality,
sealed under a key of the person who holds them, through merges, unmerges and the migration."""

from __future__ import annotations

from datetime import UTC, datetime

from alembic import command
from sqlalchemy import select, text

from accord.db import migrate
from accord.db.base import utcnow
from accord.identity import history
from accord.identity.blind import reveal_keys
from accord.identity.models import Identity, Merge
from accord.profiles import service as profiles
from accord.runtime import Runtime
from accord.security.crypto import Keyring, is_blind, is_ciphertext, key_id_of
from pipeline.helpers import process, send

EMAIL, PHONE = "ann@example.com", "+442079460958"


def keyring(rt: Runtime) -> Keyring:
    assert rt.db.keyring is not None
    return rt.db.keyring


def raw_identities(rt: Runtime) -> str:
    with rt.db.read() as session:
        return repr(
            session.execute(text("SELECT * FROM identities")).all()
            + session.execute(text("SELECT * FROM merges")).all()
        )


def assert_sealed_by_their_person(rt: Runtime) -> None:
    """Every personal identifier decrypts, under a data key of the person (profile or merged) holding it."""
    with rt.db.read() as session:
        for row in session.scalars(select(Identity).where(Identity.type.in_(["email", "phone"]))):
            assert is_blind(row.value)
            assert row.value_enc is not None
            assert is_ciphertext(row.value_enc)
            if row.profile_id is None:
                continue
            person = profiles.resolve(session, row.profile_id)
            assert person is not None
            assert key_id_of(row.value_enc) in [person.id, *profiles.merged_ids(session, person.id)]


def test_personal_identifiers_are_stored_blind_and_found_by_equality(rt: Runtime) -> None:
    send(
        rt,
        [
            {
                "type": "identify",
                "anonymousId": "a1",
                "traits": {"email": "Ann@Example.COM", "phone": "+44 20 7946 0958"},
            },
            {"type": "identify", "anonymousId": "a2", "traits": {"email": EMAIL}},
        ],
    )
    process(rt)
    stored = raw_identities(rt)
    assert "ann@" not in stored.lower()
    # The number, not four of its digits, which a random uuid or ciphertext holds now and then.
    assert "2079460958" not in stored
    assert "20 7946 0958" not in stored
    assert keyring(rt).blind("email", EMAIL) in stored
    with rt.db.read() as session:
        person = profiles.resolve(session, "email:ANN@example.com")
        assert person is not None
        assert profiles.resolve(session, "phone:+44 20 7946 0958") == person
        assert profiles.resolve(session, "anonymous_id:a2") == person  # merged through the email
        assert profiles.resolve(session, "email:bob@example.com") is None
        assert profiles.resolve(session, f"email:{keyring(rt).blind('email', EMAIL)}") is None  # not a way in
        shown = {(i.type, i.value) for i in profiles.identities(session, person.id)}
    assert shown == {("email", EMAIL), ("phone", PHONE), ("anonymous_id", "a1"), ("anonymous_id", "a2")}
    assert_sealed_by_their_person(rt)


def test_an_unmerge_reseals_what_it_gives_back(rt: Runtime) -> None:
    send(
        rt,
        [
            {"type": "identify", "anonymousId": "a1", "traits": {"email": EMAIL}, "timestamp": "2026-05-01T10:00:00Z"},
            {
                "type": "identify",
                "anonymousId": "b1",
                "traits": {"email": "bob@example.com"},
                "timestamp": "2026-05-01T11:00:00Z",
            },
            {
                "type": "identify",
                "anonymousId": "a1",
                "traits": {"email": "bob@example.com"},
                "timestamp": "2026-05-01T12:00:00Z",
            },
            {"type": "identify", "anonymousId": "b1", "traits": {"phone": PHONE}, "timestamp": "2026-05-01T13:00:00Z"},
        ],
    )
    process(rt)
    assert_sealed_by_their_person(rt)
    with rt.db.unit_of_work() as session:
        merges = session.scalars(select(Merge).where(Merge.kind == "merge").order_by(Merge.id)).all()
        assert merges
        # Which merges happen depends on the events' canonical order (random messageIds); undo the last.
        merge = merges[-1]
        if merge.identity_type in ("email", "phone"):
            assert is_blind(merge.identity_value or "")
            key = (merge.identity_type, merge.identity_value or "")
            assert reveal_keys(session, [key])[key] in (EMAIL, "bob@example.com", PHONE)  # as the history shows it
        person = profiles.resolve(session, merge.survivor_id)
        assert person is not None
        history.unmerge(session, person, merge_id=merge.id, actor="test", now=utcnow(), lock_rows=False)
    with rt.db.read() as session:
        for ref in (f"email:{EMAIL}", "email:bob@example.com", f"phone:{PHONE}"):
            assert profiles.resolve(session, ref) is not None
        split = {profiles.resolve(session, ref) for ref in ("anonymous_id:a1", "anonymous_id:b1", f"phone:{PHONE}")}
        assert len(split) == 2
    assert_sealed_by_their_person(rt)


def test_the_migration_converts_stored_identifiers(rt: Runtime) -> None:
    config = migrate._config()
    with rt.db.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0017")
    now = datetime(2026, 5, 1, tzinfo=UTC)
    stamp = now.replace(tzinfo=None) if rt.db.dialect == "sqlite" else now
    with rt.db.engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO profiles (id, traits, trait_versions, counts, identity_counts, first_seen, last_seen,"
                " created_at, updated_at) VALUES ('p1', '{}', '{}', '{}', '{}', :t, :t, :t, :t)"
            ),
            {"t": stamp},
        )
        for kind, value in (("email", EMAIL), ("phone", PHONE), ("user_id", "u1")):
            connection.execute(
                text(
                    "INSERT INTO identities (type, value, profile_id, home_id, first_seen, message_id)"
                    " VALUES (:k, :v, 'p1', 'p1', :t, 'm1')"
                ),
                {"k": kind, "v": value, "t": stamp},
            )
        connection.execute(
            text(
                "INSERT INTO merges (kind, survivor_id, absorbed_id, identity_type, identity_value, merged_at)"
                " VALUES ('merge', 'p1', 'p0', 'email', :v, :t)"
            ),
            {"v": EMAIL, "t": stamp},
        )
    migrate.upgrade(rt.db)
    stored = raw_identities(rt)
    assert "ann@" not in stored
    # The number, not four of its digits, which a random uuid or ciphertext holds now and then.
    assert "2079460958" not in stored
    assert "20 7946 0958" not in stored
    assert "u1" in stored  # not personal data: kept as it was
    with rt.db.read() as session:
        person = profiles.resolve(session, f"email:{EMAIL}")
        assert person is not None
        assert person.id == "p1"
        assert {(i.type, i.value) for i in profiles.identities(session, "p1")} == {
            ("email", EMAIL),
            ("phone", PHONE),
            ("user_id", "u1"),
        }
    assert_sealed_by_their_person(rt)
    migrate.upgrade(rt.db)  # nothing left to convert: a no-op
