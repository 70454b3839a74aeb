"""Encryption at rest: the field cipher, blind indexes, key files, data keys and `accord keys rotate`."""

from __future__ import annotations

import json
import stat
import threading
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import func, select, text
from typer.testing import CliRunner

from accord.cli import app
from accord.config import Settings
from accord.profiles import service as profiles
from accord.profiles.models import Profile
from accord.runtime import Runtime
from accord.security import datakeys
from accord.security.crypto import Keyring, Undecryptable, aad, is_blind, is_ciphertext
from accord.security.keys import FileKeyProvider, KeyringError, MemoryKeyProvider, load_blind_index_key
from accord.security.models import DataKey
from pipeline.helpers import process, send


def test_a_value_opens_only_where_it_was_sealed(rt: Runtime) -> None:
    with rt.db.unit_of_work() as session:
        keys = datakeys.DataKeys.of(session)
        token = keys.encrypt("p1", b"ann@example.com", aad("identities", "value", "email"))
        assert is_ciphertext(token)
        assert "ann" not in token
        assert keys.decrypt(token, aad("identities", "value", "email")) == b"ann@example.com"
        with pytest.raises(Undecryptable):
            keys.decrypt(token, aad("identities", "value", "phone"))  # moved to another row
        forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
        with pytest.raises(Undecryptable):
            keys.decrypt(forged, aad("identities", "value", "email"))
        with pytest.raises(Undecryptable):
            keys.decrypt("plain text", b"")
        # Each value has its own nonce: equal plaintexts do not give equal ciphertexts.
        assert keys.encrypt("p1", b"x", b"a") != keys.encrypt("p1", b"x", b"a")


def test_a_destroyed_data_key_leaves_nothing_readable(rt: Runtime) -> None:
    with rt.db.unit_of_work() as session:
        token = datakeys.DataKeys.of(session).encrypt("p2", b"secret", b"here")
    with rt.db.unit_of_work() as session:
        assert datakeys.destroy(session, ["p2", "never-made"]) == 1
    with rt.db.read() as session, pytest.raises(Undecryptable):
        datakeys.DataKeys.of(session).decrypt(token, b"here")


def test_a_data_key_another_transaction_made_meanwhile_is_the_one_used(rt: Runtime) -> None:
    """Two transactions make the key of one new profile at once. The second one's insert finds the first
    one's row (on PostgreSQL it waits for it, then INSERT ... RETURNING gives nothing back; SQLite lets one
    writer in at a time): it reads and uses the stored key, so what either seals, both open."""
    opened: list[bytes] = []

    def second() -> None:
        with rt.db.unit_of_work() as session:
            keys = datakeys.DataKeys.of(session)
            keys.create(["p-race"])
            opened.append(keys.decrypt(token, b"row"))

    with rt.db.unit_of_work() as session:
        keys = datakeys.DataKeys.of(session)
        keys.create(["p-race"])
        token = keys.encrypt("p-race", b"sealed by the first", b"row")
        thread = threading.Thread(target=second)
        thread.start()
        if rt.db.dialect == "postgresql":
            _wait_for_a_lock_wait(rt)  # the second's insert waits for this transaction's row
    thread.join(timeout=60)
    assert opened == [b"sealed by the first"]
    with rt.db.read() as session:
        assert session.scalar(select(func.count()).select_from(DataKey).where(DataKey.id == "p-race")) == 1


def _wait_for_a_lock_wait(rt: Runtime) -> None:
    deadline = time.monotonic() + 60
    waiting = text(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
    )
    with rt.db.engine.connect() as connection:
        while not connection.scalar(waiting):
            assert time.monotonic() < deadline, "the second transaction never waited for the first"
            time.sleep(0.05)
            connection.rollback()


def test_data_keys_are_stored_wrapped(rt: Runtime) -> None:
    with rt.db.unit_of_work() as session:
        keys = datakeys.DataKeys.of(session)
        keys.create(["a", "b", "a"])
        keys.create(["a"])  # kept, not replaced
        rows = session.query(DataKey).order_by(DataKey.id).all()
        assert [r.id for r in rows] == ["a", "b"]
        assert all(len(r.wrapped) == 12 + 32 + 16 for r in rows)  # nonce, key, tag: never the key alone
        assert rows[0].kek_id == keyring(rt).provider.current()


def keyring(rt: Runtime) -> Keyring:
    assert rt.db.keyring is not None
    return rt.db.keyring


def test_blind_indexes_are_keyed_and_deterministic() -> None:
    one, other = Keyring.in_memory(), Keyring.in_memory()
    assert one.blind("email", "ann@example.com") == one.blind("email", "ann@example.com")
    assert one.blind("email", "ann@example.com") != one.blind("phone", "ann@example.com")
    assert one.blind("email", "ann@example.com") != other.blind("email", "ann@example.com")
    token = one.blind("email", "ann@example.com")
    assert is_blind(token)
    assert "ann" not in token
    assert not is_blind("bi:ann@example.com")
    assert not is_blind("+441234567890")


def test_key_files_are_created_private_and_shared(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "kek.json"
    first = FileKeyProvider(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    second = FileKeyProvider(path)
    assert first.current() == second.current()
    kek, wrapped = first.wrap(b"k" * 32, context=b"id")
    new = first.begin_rotation()
    assert new != kek
    assert first.begin_rotation() == new
    kek2, wrapped2 = first.wrap(b"k" * 32, context=b"id")
    assert kek2 == new
    assert second.unwrap(kek2, wrapped2, context=b"id") == b"k" * 32  # re-read on an unknown KEK
    with pytest.raises(KeyringError):
        second.unwrap(kek, wrapped, context=b"other")
    first.retire([kek])
    assert FileKeyProvider(path).known() == [new]
    blind = tmp_path / "keys" / "blind.json"
    assert load_blind_index_key(blind) == load_blind_index_key(blind)
    assert stat.S_IMODE(blind.stat().st_mode) == 0o600


@pytest.mark.parametrize("content", [b"", b"{}", b"not json", b'{"current": "x", "keys": {"x": "c2hvcnQ"}}', b"[1]"])
def test_a_broken_key_file_is_refused_by_name(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "kek.json"
    path.write_bytes(content)
    with pytest.raises(KeyringError, match=r"kek\.json"):
        FileKeyProvider(path)
    blind = tmp_path / "blind.json"
    blind.write_bytes(content)
    with pytest.raises(KeyringError, match=r"blind\.json"):
        load_blind_index_key(blind)


def test_the_memory_provider_rotates_like_the_file() -> None:
    provider = MemoryKeyProvider()
    old = provider.current()
    kek, wrapped = provider.wrap(b"d" * 32, context=b"c")
    new = provider.begin_rotation()
    assert provider.unwrap(kek, wrapped, context=b"c") == b"d" * 32
    provider.retire([old, new])
    assert provider.known() == [new]
    with pytest.raises(KeyringError):
        provider.unwrap(kek, wrapped, context=b"c")


def test_rotation_while_reads_and_writes_go_on_loses_nothing(rt: Runtime) -> None:
    ring = keyring(rt)
    sealed: dict[str, str] = {}
    with rt.db.unit_of_work() as session:
        keys = datakeys.DataKeys.of(session)
        for n in range(1200):
            sealed[f"before-{n}"] = keys.encrypt(f"before-{n}", str(n).encode(), b"ad")
    old = ring.provider.current()
    stop = threading.Event()
    errors: list[BaseException] = []

    def traffic() -> None:
        n = 0
        try:
            while not stop.is_set():
                with rt.db.unit_of_work() as session:
                    keys = datakeys.DataKeys.of(session)
                    sealed[f"during-{n}"] = keys.encrypt(f"during-{n}", b"w", b"ad")
                    assert keys.decrypt(sealed[f"before-{n % 1200}"], b"ad") == str(n % 1200).encode()
                n += 1
        except BaseException as error:  # reported by the test thread
            errors.append(error)

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        done = datakeys.rotate(rt.db, grace_seconds=0.2, batch=300)
    finally:
        stop.set()
        thread.join()
    assert not errors
    assert done.kek_id != old
    assert done.rewrapped >= 1200
    assert done.retired == [old]
    assert done.remaining == 0
    assert ring.provider.known() == [done.kek_id]
    # A process that starts now, with only the new KEK, reads everything, old and new.
    fresh = Runtime.create(rt.settings)
    try:
        with fresh.db.read() as session:
            keys = datakeys.DataKeys.of(session)
            for name, token in sealed.items():
                assert keys.decrypt(token, b"ad") in (b"w", name.removeprefix("before-").encode())
            # and the log key the rotation made current
            assert datakeys.count_by_kek(session) == {done.kek_id: len(sealed) + 1}
    finally:
        fresh.close()


def test_keys_rotate_command(settings: Settings, rt: Runtime) -> None:
    with rt.db.unit_of_work() as session:
        token = datakeys.DataKeys.of(session).encrypt(str(uuid.uuid4()), b"v", b"ad")
    env = {"ACCORD_DATA_DIR": str(settings.data_dir)}
    if settings.database_url:
        env["ACCORD_DATABASE_URL"] = settings.database_url
    runner = CliRunner()
    result = runner.invoke(app, ["keys", "rotate", "--grace", "0", "--json"], env=env)
    assert result.exit_code == 0, result.output
    first = json.loads(result.output)
    assert first["rewrapped"] == 1
    assert len(first["retired"]) == 1
    assert first["remaining"] == 0
    again = json.loads(runner.invoke(app, ["keys", "rotate", "--grace", "0", "--json"], env=env).output)
    assert again["kek_id"] != first["kek_id"]
    assert again["rewrapped"] == 2  # and the log key the first rotation made
    with rt.db.read() as session:
        assert datakeys.DataKeys.of(session).decrypt(token, b"ad") == b"v"
    for bad in (["--grace", "-1"], ["--grace", "nan"], ["--grace", "1e9"], ["--bogus"]):
        assert runner.invoke(app, ["keys", "rotate", *bad], env=env).exit_code != 0
    # A key file someone broke: a clear error, not a traceback.
    Path(settings.kek_path()).write_text("{}")
    result = runner.invoke(app, ["keys", "rotate"], env=env)
    assert result.exit_code == 1
    assert "key-encryption key file" in result.output


def test_rotation_while_the_pipeline_writes_and_the_api_reads(rt: Runtime) -> None:
    """Events processed and timelines read during `rotate`: every identifier and payload reads back after,
    in a process that knows only the new KEK."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def traffic() -> None:
        n = 0
        try:
            while not stop.is_set():
                send(rt, [{"type": "identify", "userId": f"u{n}", "traits": {"email": f"p{n}@example.com"}}])
                process(rt)
                with rt.db.read() as session:
                    person = profiles.resolve(session, f"email:p{n // 2}@example.com")
                    assert person is not None
                    assert profiles.timeline(session, person.id).events[0].payload["userId"] == f"u{n // 2}"
                n += 1
        except BaseException as error:  # reported by the test thread
            errors.append(error)

    send(rt, [{"type": "identify", "userId": "u-first", "traits": {"email": "first@example.com"}}])
    process(rt)
    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        datakeys.rotate(rt.db, grace_seconds=0.3, batch=2)
    finally:
        stop.set()
        thread.join()
    assert not errors
    fresh = Runtime.create(rt.settings)
    try:
        with fresh.db.read() as session:
            assert len(datakeys.count_by_kek(session)) == 1
            emails = [
                i.value
                for profile_id in session.scalars(select(Profile.id))
                for i in profiles.identities(session, profile_id)
                if i.type == "email"
            ]
            assert "first@example.com" in emails
            assert all(e.endswith("@example.com") for e in emails)
            for profile_id in session.scalars(select(Profile.id)):
                assert all(e.payload for e in profiles.timeline(session, profile_id).events)
    finally:
        fresh.close()


def test_keys_made_for_new_ids_keep_one_that_is_stored_already(rt: Runtime) -> None:
    """`create(..., new=True)` inserts without reading first; an id that has a key all the same keeps it."""
    with rt.db.unit_of_work() as session:
        token = datakeys.DataKeys.of(session).encrypt("p-old", b"sealed before", b"row")
    with rt.db.unit_of_work() as session:
        keys = datakeys.DataKeys.of(session)
        keys.create(["p-old", "p-new"], new=True)
        assert keys.decrypt(token, b"row") == b"sealed before"
        fresh = keys.encrypt("p-new", b"sealed now", b"row")
    with rt.db.read() as session:
        keys = datakeys.DataKeys.of(session)
        assert keys.decrypt(fresh, b"row") == b"sealed now"
        assert session.scalars(select(DataKey.id).order_by(DataKey.id)).all() == ["p-new", "p-old"]
