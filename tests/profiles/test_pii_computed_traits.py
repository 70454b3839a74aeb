"""SQL computed traits declared `pii` are personal traits at rest: their values are sealed in `traits_enc`
under the profile's key whatever their name, on SQLite and PostgreSQL (the database files, a pg_dump);
a trait declared `pii` after profiles stored it in clear has those values moved at once; segments on it
still match (evaluated in Python); the migration moves the values stored before it, and back."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from alembic import command
from sqlalchemy import text

from accord.db import migrate
from accord.db.base import utcnow
from accord.profiles import private
from accord.profiles import service as profiles
from accord.runtime import Runtime
from accord.security.crypto import is_ciphertext, key_id_of
from accord.segments import conditions, evaluate, pushdown
from accord.segments import service as segments
from accord.sources import sql_traits
from conftest import LiveAccord, database_text, found
from pipeline.helpers import process, send

NOW = datetime(2026, 6, 2, 12, 0, tzinfo=UTC)
LATER = "2026-06-03T00:00:00Z"  # after the run's events: a later value wins
EMAILS = {"1": "philippa.hintworth@example.org", "2": "ottokar.hintworth@example.net"}
# A trait whose name says nothing personal, computed from the email: personal only by its declaration.
HINT = (
    "SELECT profile_id, 'hint:' || json_extract_string(traits, '$.email') AS value FROM profiles WHERE traits <> '{}'"
)
# One computed from a trait in clear: personal only once someone declares it so.
MOTTO = (
    "SELECT profile_id, 'Ravenscourt-' || json_extract_string(traits, '$.plan') AS value FROM profiles"
    " WHERE json_extract_string(traits, '$.plan') IS NOT NULL"
)


def seed(rt: Runtime) -> None:
    send(
        rt,
        [
            {"type": "identify", "userId": user, "traits": {"email": email, "plan": plan}}
            for (user, email), plan in zip(EMAILS.items(), ("gold", "silver"), strict=True)
        ],
    )
    process(rt)


def define(rt: Runtime, key: str, sql: str, *, pii: bool) -> None:
    with rt.db.unit_of_work() as session:
        sql_traits.save(session, key=key, sql=sql, pii=pii, description=None, actor="t", now=utcnow(), create=None)
    rt.db.checkpoint_wal()  # as the API and the commands do after declaring a trait pii


def run(rt: Runtime, key: str, folder: Path) -> None:
    sql_traits.run_now(rt.db, rt.log, key=key, folder=folder / "work", now=NOW)
    process(rt)


def wait_run(api: httpx.Client, key: str, run_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        trait = api.get(f"/api/v1/sql-traits/{key}").json()
        if trait["last_run"] is not None and trait["last_run"]["run_id"] == run_id and not trait["running"]:
            return dict(trait["last_run"])
        assert time.monotonic() < deadline, trait
        time.sleep(0.05)


def stored(rt: Runtime, user: str) -> tuple[str, dict[str, Any], str | None]:
    with rt.db.read() as session:
        person = profiles.resolve(session, f"user_id:{user}")
        assert person is not None
        return person.id, dict(person.traits), person.traits_enc


def traits_of(rt: Runtime, user: str) -> dict[str, Any]:
    with rt.db.read() as session:
        person = profiles.resolve(session, f"user_id:{user}")
        assert person is not None
        return private.profile_traits(session, person)


def members(rt: Runtime, key: str, condition: dict[str, Any]) -> set[str]:
    """The segment's members once backfilled, and its condition evaluated in Python (not pushed down)."""
    now = utcnow()
    with rt.db.unit_of_work() as session:
        readable = private.personal(session).readable
        node = conditions.parse(condition)
        assert pushdown.predicate(node, evaluate.PROFILES.c.traits, rt.db.dialect, readable=readable) is None
        segments.create(session, key=key, name=key, description="", condition=condition, actor="t", now=now)
    while True:
        with rt.db.unit_of_work() as session:
            if segments.backfill_step(session, key, now=now).finished:
                break
    with rt.db.read() as session:
        return {m.profile_id for m in segments.members(session, key, after=None, limit=10)}


def test_a_trait_declared_pii_is_sealed_and_segments_still_match(rt: Runtime, tmp_path: Path) -> None:
    seed(rt)
    define(rt, "contact_hint", HINT, pii=True)
    run(rt, "contact_hint", tmp_path)
    for user, email in EMAILS.items():
        profile_id, clear, sealed = stored(rt, user)
        assert clear == {"plan": "gold" if user == "1" else "silver"}
        assert is_ciphertext(sealed)
        assert key_id_of(sealed or "") == profile_id
        assert traits_of(rt, user)["contact_hint"] == f"hint:{email}"
    stored_bytes = database_text(rt, tmp_path)
    assert [email for email in EMAILS.values() if found(stored_bytes, f"hint:{email}")] == []
    first, _, _ = stored(rt, "1")
    assert members(rt, "hinted", {"trait": "contact_hint", "op": "eq", "value": f"hint:{EMAILS['1']}"}) == {first}
    # A later event from another source setting the same trait is sealed too: every writer splits alike.
    by_hand = {"type": "identify", "userId": "2", "traits": {"contact_hint": "hint:by-hand"}, "timestamp": LATER}
    send(rt, [by_hand])
    process(rt)
    assert "contact_hint" not in stored(rt, "2")[1]
    assert traits_of(rt, "2")["contact_hint"] == "hint:by-hand"


def test_declaring_a_stored_trait_pii_moves_its_values_out_of_clear(rt: Runtime, tmp_path: Path) -> None:
    seed(rt)
    define(rt, "motto", MOTTO, pii=False)
    run(rt, "motto", tmp_path)
    assert stored(rt, "1")[1]["motto"] == "Ravenscourt-gold"  # not personal: in clear, compared in SQL
    assert found(database_text(rt, tmp_path), "Ravenscourt-gold")
    first, _, _ = stored(rt, "1")

    define(rt, "motto", MOTTO, pii=True)  # no run: the change itself moves the stored values
    for user, plan in (("1", "gold"), ("2", "silver")):
        _, clear, sealed = stored(rt, user)
        assert "motto" not in clear
        assert is_ciphertext(sealed)
        assert traits_of(rt, user)["motto"] == f"Ravenscourt-{plan}"
    stored_bytes = database_text(rt, tmp_path)
    assert [v for v in ("Ravenscourt-gold", "Ravenscourt-silver") if found(stored_bytes, v)] == []
    assert members(rt, "ravens", {"trait": "motto", "op": "eq", "value": "Ravenscourt-gold"}) == {first}
    # A run changes nothing that is already right, and leaves nothing in clear.
    run(rt, "motto", tmp_path)
    assert "motto" not in stored(rt, "1")[1]
    assert traits_of(rt, "1")["motto"] == "Ravenscourt-gold"


def test_a_run_moves_a_value_written_in_clear_meanwhile(rt: Runtime, tmp_path: Path) -> None:
    """A worker that split a profile's traits just before the declaration committed wrote the value in
    clear; the trait's next run moves it before it computes."""
    seed(rt)
    define(rt, "motto", MOTTO, pii=True)
    profile_id, clear, sealed = stored(rt, "1")
    with rt.db.unit_of_work() as session:  # as such a worker would have left it
        session.execute(
            evaluate.PROFILES.update()
            .where(evaluate.PROFILES.c.id == profile_id)
            .values(traits={**clear, "motto": "Ravenscourt-gold"}, traits_enc=sealed)
        )
    run(rt, "motto", tmp_path)
    assert "motto" not in stored(rt, "1")[1]
    assert traits_of(rt, "1")["motto"] == "Ravenscourt-gold"
    assert not found(database_text(rt, tmp_path), "Ravenscourt-gold")


def test_the_migration_seals_values_stored_before_it_and_back(rt: Runtime, tmp_path: Path) -> None:
    seed(rt)
    define(rt, "motto", MOTTO, pii=True)
    run(rt, "motto", tmp_path)
    config = migrate._config()
    with rt.db.engine.begin() as connection:
        config.attributes["connection"] = connection
        config.attributes["keyring"] = rt.db.keyring
        command.downgrade(config, "0026")
    with rt.db.read() as session:
        rows = session.execute(text("SELECT traits FROM profiles ORDER BY id")).scalars().all()
    mottos = sorted((json.loads(t) if isinstance(t, str) else t).get("motto") for t in rows if "motto" in str(t))
    assert mottos == ["Ravenscourt-gold", "Ravenscourt-silver"]  # as the code before stored them
    assert traits_of(rt, "1")["email"] == EMAILS["1"]  # the other personal traits stay sealed
    migrate.upgrade(rt.db)
    for user in EMAILS:
        _, clear, sealed = stored(rt, user)
        assert "motto" not in clear
        assert is_ciphertext(sealed)
    assert traits_of(rt, "2")["motto"] == "Ravenscourt-silver"
    assert traits_of(rt, "2")["email"] == EMAILS["2"]


def test_declaring_pii_over_the_api_moves_the_values_and_the_api_still_shows_them(
    live: LiveAccord, tmp_path: Path
) -> None:
    rt = live.rt
    seed(rt)
    with live.api() as api:
        made = api.post("/api/v1/sql-traits", json={"key": "motto", "sql": MOTTO})
        assert made.status_code == 201, made.text
        last = wait_run(api, "motto", api.post("/api/v1/sql-traits/motto/run").json()["run_id"])
        assert last["status"] == "done", last
        live.wait_processed()
        assert stored(rt, "1")[1]["motto"] == "Ravenscourt-gold"
        changed = api.put("/api/v1/sql-traits/motto", json={"sql": MOTTO, "pii": True, "version": 1})
        assert (changed.status_code, changed.json()["pii"], changed.json()["version"]) == (200, True, 2)
        assert "motto" not in stored(rt, "1")[1]
        assert [v for v in ("Ravenscourt-gold", "Ravenscourt-silver") if found(database_text(rt, tmp_path), v)] == []
        assert api.get("/api/v1/profiles/user_id:2/traits").json()["traits"]["motto"] == "Ravenscourt-silver"
