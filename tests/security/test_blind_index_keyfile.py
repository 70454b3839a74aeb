"""A process refuses to start with a blind-index key file other than the one the stored identifiers were
indexed with, instead of making a new key under which no returning customer is found again (each would
get a new profile)."""

from __future__ import annotations

import logging
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import select, text

from accord.config import Settings
from accord.db import migrate
from accord.db.engine import Database
from accord.identity.models import Identity
from accord.runtime import Runtime
from accord.security import datakeys
from accord.security.keys import KeyringError, load_blind_index_key
from pipeline.helpers import process, send, use_rules
from security.test_keyfile import accord_command

ADA, BOB = "ada@example.com", "bob@example.com"


def _store(settings: Settings, people: dict[str, str]) -> dict[str, str]:
    """Store each person's email (user id -> email) through the pipeline; their profile ids by user id."""
    rt = Runtime.create(settings)
    try:
        send(
            rt,
            [
                {"type": "identify", "userId": user, "messageId": f"m-{user}", "traits": {"email": email}}
                for user, email in people.items()
            ],
        )
        assert process(rt) == len(people)
        with rt.db.read() as session:
            rows = session.execute(select(Identity.value, Identity.profile_id).where(Identity.type == "user_id"))
            found = dict(rows.all())
    finally:
        rt.close()
    return {user: str(found[user]) for user in people}


def _blind_values(settings: Settings) -> list[str]:
    db = Database.from_settings(settings)
    try:
        with db.read() as session:
            return list(session.scalars(select(Identity.value).where(Identity.type == "email")))
    finally:
        db.dispose()


def _install_another_key(settings: Settings, tmp_path: Path) -> Path:
    """Another installation's blind-index key file in place of this one's; returns where it came from."""
    other = tmp_path / "other" / "blind-index.json"
    load_blind_index_key(other)
    shutil.copy(other, settings.blind_index_key_path())
    return other


def _refused(settings: Settings) -> str:
    with pytest.raises(KeyringError) as refused:
        Database.from_settings(settings)
    return str(refused.value)


def test_the_right_key_file_opens_the_database(settings: Settings, rt: Runtime) -> None:
    _store(settings, {"u1": ADA})
    Database.from_settings(settings).dispose()  # the same file: no complaint


def test_a_missing_key_file_is_refused_and_not_left_behind(
    settings: Settings, rt: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    _store(settings, {"u1": ADA})
    stored = _blind_values(settings)
    path = settings.blind_index_key_path()
    path.unlink()

    with caplog.at_level(logging.DEBUG):
        message = _refused(settings)

    assert str(path) in message
    assert "was missing" in message
    assert "ACCORD_BLIND_INDEX_KEY_FILE" in message
    for secret in (ADA, "ada@", *stored):  # neither the identifier nor its blind index
        assert secret not in message
        assert secret not in caplog.text
    assert not path.exists()  # the new key made meanwhile is gone: restoring is all it takes


def test_another_installations_key_file_is_refused_and_kept(settings: Settings, rt: Runtime, tmp_path: Path) -> None:
    _store(settings, {"u1": ADA, "u2": BOB})
    other = _install_another_key(settings, tmp_path)

    message = _refused(settings)

    assert "holds another key" in message
    assert "none of the 2 stored identifier(s) checked" in message
    assert load_blind_index_key(settings.blind_index_key_path()) == load_blind_index_key(other)  # not touched


def test_identifiers_of_a_type_the_rules_make_personal_are_checked(settings: Settings, rt: Runtime) -> None:
    use_rules(rt, {"identifiers": [{"type": "user_id", "limit": 1}, {"type": "work_mail", "normalise": "email"}]})
    external = [{"type": "work_mail", "id": ADA}]
    send(rt, [{"type": "identify", "userId": "u1", "messageId": "m1", "context": {"externalIds": external}}])
    assert process(rt) == 1
    with rt.db.read() as session:
        assert session.scalar(select(Identity.value_enc).where(Identity.type == "work_mail")) is not None
        assert session.scalar(select(Identity.value_enc).where(Identity.type == "email")) is None  # none stored
    Database.from_settings(settings).dispose()

    settings.blind_index_key_path().unlink()
    assert "none of the 1 stored identifier(s) checked" in _refused(settings)


def test_without_personal_identifiers_names_are_checked(settings: Settings, rt: Runtime, tmp_path: Path) -> None:
    """Customers known by user id alone, with names: their name words (and matching keys) are blinded under
    the same key, so another key file would lose them as surely as an email."""
    names = {"u1": ("Ada", "Lovelace"), "u2": ("Bob", "Byte")}
    send(
        rt,
        [
            {"type": "identify", "userId": user, "messageId": f"m-{user}", "traits": {"firstName": a, "lastName": b}}
            for user, (a, b) in names.items()
        ],
    )
    assert process(rt) == 2
    with rt.db.read() as session:
        assert session.scalar(text("SELECT count(*) FROM identities WHERE value_enc IS NOT NULL")) == 0
        assert session.scalar(text("SELECT count(*) FROM profile_words")) == 4
    Database.from_settings(settings).dispose()  # the right file: the names match

    _install_another_key(settings, tmp_path)
    message = _refused(settings)
    assert "none of the 2 stored name(s) checked" in message
    assert "found by its name" in message
    for secret in ("Ada", "Lovelace", "ada", "lovelace"):
        assert secret not in message

    settings.blind_index_key_path().unlink()
    assert "was missing" in _refused(settings)
    assert not settings.blind_index_key_path().exists()


def test_names_whose_data_key_was_destroyed_are_skipped(settings: Settings, rt: Runtime) -> None:
    send(rt, [{"type": "identify", "userId": "u1", "messageId": "m-u1", "traits": {"firstName": "Ada"}}])
    assert process(rt) == 1
    with rt.db.unit_of_work() as session:
        profile_id = session.scalar(select(Identity.profile_id).where(Identity.value == "u1"))
        assert datakeys.destroy(session, [str(profile_id)]) == 1  # an erasure, half done: the words are left
    settings.blind_index_key_path().unlink()
    Database.from_settings(settings).dispose()  # the name does not open: nothing to compare
    assert settings.blind_index_key_path().exists()


def test_a_new_database_gets_a_new_key_file(settings: Settings) -> None:
    path = settings.blind_index_key_path()
    assert not path.exists()
    Database.from_settings(settings).dispose()  # before the first migration
    assert path.exists()
    rt = Runtime.create(settings)
    migrate.upgrade(rt.db)
    rt.close()
    path.unlink()
    Database.from_settings(settings).dispose()  # migrated, but no identifier stored yet
    assert path.exists()


def test_identifiers_whose_data_key_was_destroyed_are_skipped(settings: Settings, rt: Runtime) -> None:
    profiles = _store(settings, {"u1": ADA, "u2": BOB})
    with rt.db.unit_of_work() as session:
        assert datakeys.destroy(session, [profiles["u1"]]) == 1  # Ada's erasure, half done: her row is left
    Database.from_settings(settings).dispose()  # Bob's identifier opens and matches

    path = settings.blind_index_key_path()
    path.unlink()
    assert "none of the 1 stored identifier(s) checked" in _refused(settings)  # Bob's; Ada's is skipped

    with rt.db.unit_of_work() as session:
        datakeys.destroy(session, [profiles["u2"]])
    Database.from_settings(settings).dispose()  # no identifier opens: nothing to check against
    assert path.exists()


def test_a_database_from_before_sealed_identifiers_is_not_checked(settings: Settings, rt: Runtime) -> None:
    config = migrate._config()
    with rt.db.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0017")
    try:
        now = datetime(2026, 5, 1, tzinfo=UTC)
        stamp = now.replace(tzinfo=None) if rt.db.dialect == "sqlite" else now
        with rt.db.engine.begin() as connection:
            connection.execute(
                text("INSERT INTO identities (type, value, first_seen, message_id) VALUES ('email', :v, :t, 'm1')"),
                {"v": ADA, "t": stamp},
            )
        settings.blind_index_key_path().unlink()
        Database.from_settings(settings).dispose()  # values in clear: the migration indexes them under this key
    finally:
        migrate.upgrade(rt.db)


def test_a_missing_kek_file_takes_the_blind_index_key_file_made_beside_it_away(settings: Settings, rt: Runtime) -> None:
    _store(settings, {"u1": ADA})
    settings.kek_path().unlink()
    settings.blind_index_key_path().unlink()

    assert "key-encryption key file" in _refused(settings)

    assert not settings.kek_path().exists()
    assert not settings.blind_index_key_path().exists()


def test_the_command_line_says_so_without_a_traceback(settings: Settings, rt: Runtime) -> None:
    _store(settings, {"u1": ADA})
    settings.blind_index_key_path().unlink()
    done = accord_command(settings, "source", "list")

    assert done.returncode == 1
    assert "blind-index key file" in done.stdout
    assert "was missing" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr
    assert "ada@" not in done.stdout + done.stderr
