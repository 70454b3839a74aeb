"""A process refuses to start with a key-encryption key file that cannot open the database's data keys,
instead of making a new key and writing new data under it while the old stays unreadable."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from accord.config import Settings
from accord.db.engine import Database
from accord.runtime import Runtime
from accord.security.keyfile import kek_ids_in_use
from accord.security.keys import FileKeyProvider, KeyringError
from pipeline.helpers import process, send


def _with_personal_data(settings: Settings) -> list[str]:
    """Store one person's event (a data key is made for the profile) and return the KEK ids in use."""
    rt = Runtime.create(settings)
    try:
        send(rt, [{"type": "identify", "userId": "u1", "messageId": "m1", "traits": {"email": "ada@example.com"}}])
        assert process(rt) == 1
        in_use = kek_ids_in_use(rt.db.engine)
    finally:
        rt.close()
    assert in_use == FileKeyProvider(settings.kek_path()).known()
    return in_use


def test_the_right_key_file_opens_the_database(settings: Settings, rt: Runtime) -> None:
    _with_personal_data(settings)
    Database.from_settings(settings).dispose()  # the same file: no complaint


def test_a_missing_key_file_is_refused_and_not_left_behind(settings: Settings, rt: Runtime) -> None:
    in_use = _with_personal_data(settings)
    settings.kek_path().unlink()

    with pytest.raises(KeyringError) as refused:
        Database.from_settings(settings)

    message = str(refused.value)
    assert str(settings.kek_path()) in message
    assert "was missing" in message
    assert in_use[0][:12] in message
    assert not settings.kek_path().exists()  # the new key made meanwhile is gone: restoring is all it takes


def test_another_installations_key_file_is_refused_and_kept(settings: Settings, rt: Runtime, tmp_path: Path) -> None:
    _with_personal_data(settings)
    other = FileKeyProvider(tmp_path / "other" / "kek.json")
    shutil.copy(other.path, settings.kek_path())

    with pytest.raises(KeyringError, match="holds other keys"):
        Database.from_settings(settings)

    assert FileKeyProvider(settings.kek_path()).known() == other.known()  # not touched


def test_a_new_database_gets_a_new_key_file(settings: Settings) -> None:
    assert not settings.kek_path().exists()
    db = Database.from_settings(settings)  # before the first migration, and after it with no data key
    db.dispose()
    assert settings.kek_path().exists()
    rt = Runtime.create(settings)
    rt.close()


def accord_command(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """`accord *args` in a process of its own, on `settings`' data directory and database."""
    env = {**os.environ, "ACCORD_DATA_DIR": str(settings.data_dir)}
    if settings.database_url:
        env["ACCORD_DATABASE_URL"] = settings.database_url
    return subprocess.run(
        [sys.executable, "-m", "accord", *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_the_command_line_says_so_without_a_traceback(settings: Settings, rt: Runtime) -> None:
    _with_personal_data(settings)
    settings.kek_path().unlink()
    done = accord_command(settings, "source", "list")

    assert done.returncode == 1
    assert "was missing" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr
