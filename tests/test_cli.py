"""The `accord` command: each subcommand against a real database, with good and bad arguments."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from accord.cli import app
from accord.config import Settings
from accord.db import migrate
from accord.runtime import Runtime
from accord.security.service import authenticate
from accord.sources.service import find_by_write_key
from pipeline.helpers import process, send


@pytest.fixture
def env(settings: Settings) -> dict[str, str]:
    values = {"ACCORD_DATA_DIR": str(settings.data_dir)}
    if settings.database_url:
        values["ACCORD_DATABASE_URL"] = settings.database_url
    return values


def run(env: dict[str, str], *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env=env)
    return result.exit_code, result.output


def test_migrate_creates_the_schema(env: dict[str, str], settings: Settings) -> None:
    code, output = run(env, "migrate")
    assert code == 0, output
    assert f"schema at revision {migrate.head_revision()}" in output
    rt = Runtime.create(settings)
    assert migrate.is_current(rt.db)
    rt.close()


def test_source_create_prints_a_working_write_key(env: dict[str, str], settings: Settings) -> None:
    code, output = run(env, "source", "create", "website", "--json")
    assert code == 0, output
    created = json.loads(output)
    assert set(created) == {"id", "name", "write_key"}
    rt = Runtime.create(settings)
    with rt.db.read() as session:
        source = find_by_write_key(session, created["write_key"])
        assert source is not None
        assert source.id == created["id"]
        assert created["write_key"] not in source.write_key_hash  # stored hashed
    rt.close()


def test_source_names_are_unique_and_bounded(env: dict[str, str]) -> None:
    assert run(env, "source", "create", "app")[0] == 0
    code, output = run(env, "source", "create", "app")
    assert code == 1
    assert "exists already" in output
    code, output = run(env, "source", "create", "x" * 201)
    assert code == 1
    assert "1 to 200" in output


def test_source_disable_and_enable(env: dict[str, str], settings: Settings) -> None:
    created = json.loads(run(env, "source", "create", "kiosk", "--json")[1])
    assert run(env, "source", "disable", "kiosk")[0] == 0
    listed = json.loads(run(env, "source", "list", "--json")[1])
    assert [(s["name"], s["enabled"]) for s in listed] == [("kiosk", False)]
    assert run(env, "source", "enable", "kiosk")[0] == 0
    assert run(env, "source", "disable", "nope")[0] == 1
    rt = Runtime.create(settings)
    with rt.db.read() as session:
        source = find_by_write_key(session, created["write_key"])
        assert source is not None
        assert source.enabled
    rt.close()


def test_token_create_and_revoke(env: dict[str, str], settings: Settings) -> None:
    code, output = run(env, "token", "create", "--role", "admin", "--json")
    assert code == 0, output
    created = json.loads(output)
    assert created["role"] == "admin"
    rt = Runtime.create(settings)
    with rt.db.read() as session:
        assert authenticate(session, created["token"]) is not None
    assert run(env, "token", "revoke", created["id"])[0] == 0
    with rt.db.read() as session:
        assert authenticate(session, created["token"]) is None
    rt.close()
    assert run(env, "token", "revoke", "tok_missing")[0] == 1


@pytest.mark.parametrize("role", ["root", "", "ADMIN"])
def test_token_create_refuses_unknown_roles(env: dict[str, str], role: str) -> None:
    code, output = run(env, "token", "create", "--role", role)
    assert code == 1
    assert "role must be one of" in output


def test_quarantine_list_and_replay(env: dict[str, str], rt: Runtime) -> None:
    send(rt, [{"type": "track", "anonymousId": "undefined", "event": "Lost", "messageId": "q-1"}])
    process(rt)
    code, output = run(env, "quarantine", "list", "--json")
    assert code == 0, output
    rows = json.loads(output)
    assert [r["message_id"] for r in rows] == ["q-1"]
    assert "no usable identifier" in rows[0]["error"]
    code, output = run(env, "quarantine", "replay", "--json")
    assert code == 0, output
    assert json.loads(output) == {"replayed": 1}
    assert rt.log.pending() == 1


def test_demo_against_nothing_fails_clearly(env: dict[str, str]) -> None:
    code, output = run(env, "demo", "--url", "http://127.0.0.1:9", "--customers", "1", "--write-key", "wk_x")
    assert code != 0
    assert "Start Accord first" in output or "reach" in output.lower()


def test_help_lists_every_command() -> None:
    output = CliRunner().invoke(app, ["--help"]).output
    for command in ("up", "serve", "worker", "migrate", "source", "token", "quarantine", "demo"):
        assert command in output


@pytest.mark.parametrize("name", ["Robert'); DROP TABLE sources;--", "商店 🛒", "  padded  "])
def test_hostile_source_names_are_stored_verbatim(env: dict[str, str], name: str) -> None:
    code, output = run(env, "source", "create", name, "--json")
    assert code == 0, output
    assert json.loads(output)["name"] == name.strip()
    listed = json.loads(run(env, "source", "list", "--json")[1])
    assert [s["name"] for s in listed] == [name.strip()]


@pytest.mark.parametrize("name", ["", "   "])
def test_empty_source_names_are_refused(env: dict[str, str], name: str) -> None:
    code, output = run(env, "source", "create", name)
    assert code == 1
    assert "1 to 200" in output


@pytest.mark.parametrize(
    "args",
    [
        ("token", "create", "--role", "admin", "--expires-days", "soon"),
        ("quarantine", "list", "--limit", "0"),
        ("demo", "--customers", "0"),
        ("quarantine", "replay", "not-a-number"),
    ],
)
def test_malformed_options_are_refused_with_usage(env: dict[str, str], args: tuple[str, ...]) -> None:
    code, output = run(env, *args)
    assert code == 2, output
    assert "Invalid value" in output or "Usage" in output


def test_replaying_unknown_quarantine_ids_replays_nothing(env: dict[str, str], rt: Runtime) -> None:
    code, output = run(env, "quarantine", "replay", "999999", "--json")
    assert code == 0, output
    assert json.loads(output) == {"replayed": 0}
    assert rt.log.pending() == 0
