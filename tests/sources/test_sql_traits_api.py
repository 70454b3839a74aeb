"""SQL computed traits and schedules over the REST API, on SQLite and PostgreSQL: the life of a definition
(versions, runs, what traits remember), schedules of both kinds, keys shared with declarative computed
traits, masking in previews, audit, and malformed, oversized, hostile and duplicate requests."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from accord.security.service import create_token
from conftest import LiveAccord
from pipeline.helpers import process, send
from sources.importing import HOOK, source

ORDERS = "SELECT profile_id, count(*) AS value FROM events WHERE event = 'Order Completed' GROUP BY 1"
EMAIL = "SELECT profile_id, json_extract_string(traits, '$.email') AS value FROM profiles"


def people(live: LiveAccord) -> None:
    send(
        live.rt,
        [
            {"type": "identify", "userId": "1", "traits": {"email": "ann@example.com", "plan": "gold"}},
            {"type": "track", "userId": "1", "event": "Order Completed"},
            {"type": "track", "userId": "1", "event": "Order Completed"},
            {"type": "identify", "userId": "2", "traits": {"email": "bob@example.com"}},
        ],
    )
    process(live.rt)


def client(live: LiveAccord, role: str) -> httpx.Client:
    with live.rt.db.unit_of_work() as session:
        token = create_token(session, role=role).token
    return live.client(headers={"Authorization": f"Bearer {token}"})


def wait_run(api: httpx.Client, key: str, run_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        found = api.get(f"/api/v1/sql-traits/{key}").json()
        if found["last_run"] is not None and found["last_run"]["run_id"] == run_id and not found["running"]:
            return dict(found["last_run"])
        assert time.monotonic() < deadline, found
        time.sleep(0.05)


def wait_schedule(api: httpx.Client, name: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        found = api.get(f"/api/v1/schedules/{name}").json()
        if found["last_status"] is not None:
            return dict(found)
        assert time.monotonic() < deadline, found
        time.sleep(0.05)


def actions(api: httpx.Client, prefix: str) -> list[tuple[str, str | None]]:
    records = api.get("/api/v1/audit", params={"action": prefix, "limit": 100}).json()["records"]
    return [(r["action"], r["target_id"]) for r in reversed(records)]


def test_a_sql_trait_lives_runs_and_its_traits_remember_the_run(live: LiveAccord) -> None:
    people(live)
    with live.api() as api:
        made = api.post("/api/v1/sql-traits", json={"key": "orders", "sql": ORDERS, "description": "Orders"})
        assert made.status_code == 201, made.text
        assert (made.json()["version"], made.json()["pii"], made.json()["last_run"]) == (1, False, None)
        again = api.post("/api/v1/sql-traits", json={"key": "orders", "sql": ORDERS})
        assert (again.status_code, again.json()["code"]) == (409, "sql_trait_exists")
        assert [t["key"] for t in api.get("/api/v1/sql-traits").json()["data"]] == ["orders"]

        started = api.post("/api/v1/sql-traits/orders/run")
        assert started.status_code == 202, started.text
        run_id = started.json()["run_id"]
        last = wait_run(api, "orders", run_id)
        assert last["status"] == "done", last
        assert (last["result"]["rows"], last["result"]["appended"], last["result"]["version"]) == (1, 1, 1)
        live.wait_processed()
        traits = api.get("/api/v1/profiles/user_id:1/traits").json()
        assert traits["traits"]["orders"] == 2
        assert traits["sources"]["orders"]["run_id"] == run_id
        assert traits["sources"]["orders"]["source_id"] == source(live.rt, "computed-traits")

        # A change is a new version; the same body again changes nothing; a stale version is refused.
        changed = api.put("/api/v1/sql-traits/orders", json={"sql": ORDERS + " HAVING count(*) > 1", "version": 1})
        assert changed.json()["version"] == 2, changed.text
        same = api.put("/api/v1/sql-traits/orders", json={"sql": ORDERS + " HAVING count(*) > 1"})
        assert same.json()["version"] == 2
        stale = api.put("/api/v1/sql-traits/orders", json={"sql": ORDERS, "version": 1})
        assert (stale.status_code, stale.json()["code"]) == (409, "version_conflict")

        # A schedule runs it; the traits remember the schedule's run.
        send(live.rt, [{"type": "track", "userId": "1", "event": "Order Completed"}])
        process(live.rt)
        body = {"name": "orders-hourly", "kind": "computed", "every_minutes": 60, "trait": "orders"}
        scheduled = api.post("/api/v1/schedules", json=body)
        assert scheduled.status_code == 201, scheduled.text
        assert scheduled.json()["spec"] == {"trait": "orders"}
        assert api.post("/api/v1/schedules", json=body).json()["code"] == "schedule_exists"
        assert api.get("/api/v1/sql-traits/orders").json()["schedules"] == ["orders-hourly"]
        assert api.post("/api/v1/schedules/orders-hourly/run").status_code == 202
        ran = wait_schedule(api, "orders-hourly")
        assert ran["last_status"] == "done", ran
        live.wait_processed()
        traits = api.get("/api/v1/profiles/user_id:1/traits").json()
        assert traits["traits"]["orders"] == 3
        schedule_run = traits["sources"]["orders"]["run_id"]
        assert schedule_run.startswith("ctr_")
        assert schedule_run in ran["last_result"]
        assert api.get("/api/v1/sql-traits/orders").json()["last_run"]["run_id"] == schedule_run

        paused = api.put("/api/v1/schedules/orders-hourly", json={"enabled": False, "every_minutes": 5})
        assert (paused.json()["enabled"], paused.json()["every_minutes"], paused.json()["version"]) == (False, 5, 2)
        assert api.put("/api/v1/schedules/orders-hourly", json={"enabled": False}).json()["version"] == 2
        missing = api.put("/api/v1/schedules/orders-hourly", json={"trait": "nothing"})
        assert (missing.status_code, missing.json()["code"]) == (404, "sql_trait_not_found")
        in_use = api.delete("/api/v1/sql-traits/orders")
        assert (in_use.status_code, in_use.json()["code"]) == (409, "sql_trait_in_use")
        assert api.delete("/api/v1/schedules/orders-hourly").status_code == 204
        assert api.delete("/api/v1/schedules/orders-hourly").status_code == 404
        assert api.delete("/api/v1/sql-traits/orders").status_code == 204
        assert api.get("/api/v1/sql-traits/orders").json()["code"] == "sql_trait_not_found"

        assert actions(api, "sql_trait.") == [
            ("sql_trait.create", "orders"),
            ("sql_trait.run", "orders"),
            ("sql_trait.update", "orders"),
            ("sql_trait.delete", "orders"),
        ]
        assert actions(api, "schedule.") == [
            ("schedule.create", "orders-hourly"),
            ("schedule.run", "orders-hourly"),
            ("schedule.update", "orders-hourly"),
            ("schedule.delete", "orders-hourly"),
        ]


def test_a_failed_run_is_kept_with_the_trait_and_a_second_run_waits(live: LiveAccord) -> None:
    people(live)
    with live.api() as api:
        api.post("/api/v1/sql-traits", json={"key": "copy", "sql": EMAIL})
        run_id = api.post("/api/v1/sql-traits/copy/run").json()["run_id"]
        last = wait_run(api, "copy", run_id)
        assert last["status"] == "failed"
        assert "pii: true" in last["result"]["error"]  # a masked view: the values were masks
        assert "ann@" not in str(last)
        # With pii the trait reads the data as it is.
        assert api.put("/api/v1/sql-traits/copy", json={"sql": EMAIL, "pii": True}).json()["version"] == 2
        run_id = api.post("/api/v1/sql-traits/copy/run").json()["run_id"]
        assert wait_run(api, "copy", run_id)["status"] == "done"
        live.wait_processed()
        assert api.get("/api/v1/profiles/user_id:2/traits").json()["traits"]["copy"] == "bob@example.com"
        # One run at a time.
        from accord.db.base import utcnow
        from accord.sources import sql_traits

        sql_traits.claim(live.rt.db, "copy", now=utcnow())
        busy = api.post("/api/v1/sql-traits/copy/run")
        assert (busy.status_code, busy.json()["code"]) == (409, "run_in_progress")


def test_a_failed_run_of_a_pii_trait_keeps_no_value_in_its_error(live: LiveAccord) -> None:
    people(live)
    cast = "SELECT profile_id, CAST(json_extract_string(traits, '$.email') AS INTEGER) AS value FROM profiles"
    with live.api() as api:
        assert api.post("/api/v1/sql-traits", json={"key": "bad", "sql": cast, "pii": True}).status_code == 201
        run_id = api.post("/api/v1/sql-traits/bad/run").json()["run_id"]
        last = wait_run(api, "bad", run_id)
        assert last["status"] == "failed"
        assert "convert" in last["result"]["error"].lower(), last
        body = {"name": "bad", "kind": "computed", "every_minutes": 60, "trait": "bad"}
        assert api.post("/api/v1/schedules", json=body).status_code == 201
        api.post("/api/v1/schedules/bad/run")
        ran = wait_schedule(api, "bad")
        assert ran["last_status"] == "failed"
    with client(live, "auditor") as api:
        shown = api.get("/api/v1/sql-traits/bad").text + api.get("/api/v1/schedules/bad").text
        assert "@example.com" not in shown
        assert "convert" in shown.lower()


def test_previews_mask_personal_data_unless_asked_by_a_role_with_pii_access(live: LiveAccord) -> None:
    people(live)
    with client(live, "analyst") as api:
        masked = api.post("/api/v1/sql-traits/preview", json={"sql": EMAIL})
        assert masked.status_code == 200, masked.text
        assert masked.json()["masked"] is True
        values = [r["value"] for r in masked.json()["rows"]]
        assert len(values) == 2
        assert all(v.startswith("masked:") for v in values)
        shown = api.post("/api/v1/sql-traits/preview", json={"sql": EMAIL, "pii": True, "limit": 1}).json()
        assert shown["masked"] is False
        assert shown["rows"][0]["value"] in ("ann@example.com", "bob@example.com")
        assert len(shown["rows"]) == 1
        nothing = api.get("/api/v1/profiles/user_id:1/traits").json()["traits"]
        assert "value" not in nothing  # a preview sets nothing
    for role in ("agent", "auditor"):
        with client(live, role) as api:
            refused = api.post("/api/v1/sql-traits/preview", json={"sql": EMAIL})
            assert (refused.status_code, refused.json()["code"]) == (403, "forbidden")


def test_keys_shared_with_declarative_computed_traits_are_refused_both_ways(live: LiveAccord) -> None:
    with live.api() as api:
        declarative = {"key": "orders", "definition": {"event": "Order Completed", "function": "count"}}
        assert api.post("/api/v1/computed-traits", json=declarative).status_code == 201
        clash = api.post("/api/v1/sql-traits", json={"key": "orders", "sql": ORDERS})
        assert (clash.status_code, clash.json()["code"]) == (409, "trait_key_conflict")
        assert "declarative computed trait" in clash.json()["message"]
        assert api.post("/api/v1/sql-traits", json={"key": "spend", "sql": ORDERS}).status_code == 201
        other = api.post("/api/v1/computed-traits", json={**declarative, "key": "spend"})
        assert (other.status_code, other.json()["code"]) == (409, "trait_key_conflict")
        assert "SQL computed trait" in other.json()["message"]
        assert api.get("/api/v1/computed-traits/spend").status_code == 404


def test_the_commands_refuse_shared_keys_too(live: LiveAccord) -> None:
    from typer.testing import CliRunner

    from accord.cli import app

    settings = live.rt.settings
    env = {"ACCORD_DATA_DIR": str(settings.data_dir)}
    if settings.database_url:
        env["ACCORD_DATABASE_URL"] = settings.database_url
    with live.api() as api:
        api.post("/api/v1/computed-traits", json={"key": "orders", "definition": {"event": "E", "function": "count"}})
        api.post("/api/v1/sql-traits", json={"key": "spend", "sql": ORDERS})
    result = CliRunner().invoke(app, ["computed-trait", "orders", "--sql", ORDERS], env=env)
    assert result.exit_code == 1
    assert "declarative computed trait" in result.output
    definition = '{"event": "E", "function": "count"}'
    result = CliRunner().invoke(app, ["computed", "create", "spend", "--definition", definition], env=env)
    assert result.exit_code == 1
    assert "SQL computed trait" in result.output


def test_table_schedules_are_for_admins_and_never_hold_the_url(live: LiveAccord) -> None:
    source(live.rt, "crm")
    table = {"name": "crm", "kind": "table", "every_minutes": 1440, "url_env": "CRM_URL", "table": "people"}
    table |= {"cursor": "updated_at", "mapping": HOOK, "source": "crm"}
    with client(live, "analyst") as api:
        refused = api.post("/api/v1/schedules", json=table)
        assert (refused.status_code, refused.json()["code"]) == (403, "forbidden")
    with live.api() as api:
        for change, status, code in [
            ({"url_env": "ACCORD_DATABASE_URL"}, 422, "invalid_schedule"),
            ({"url_env": "crm_url"}, 422, "invalid_schedule"),
            ({"source": "nowhere"}, 404, "source_not_found"),
            ({"mapping": {"mapping": 1}}, 422, "invalid_mapping"),
            ({"query": "SELECT 1"}, 422, "invalid_schedule"),  # a table and a query
            ({"trait": "orders"}, 422, "invalid_schedule"),
            ({"url_env": None}, 422, "invalid_schedule"),
        ]:
            answer = api.post("/api/v1/schedules", json=table | change)
            assert (answer.status_code, answer.json()["code"]) == (status, code), (change, answer.text)
        made = api.post("/api/v1/schedules", json=table)
        assert made.status_code == 201, made.text
        assert made.json()["spec"]["url_env"] == "CRM_URL"
        assert "://" not in made.text
    with client(live, "analyst") as api:
        assert api.get("/api/v1/schedules/crm").status_code == 200
        assert api.put("/api/v1/schedules/crm", json={"enabled": False}).status_code == 403
        assert api.delete("/api/v1/schedules/crm").status_code == 403
        assert api.post("/api/v1/schedules/crm/run").status_code == 403


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("/api/v1/sql-traits", {"key": "9lives", "sql": ORDERS}, 422, "invalid_request"),
        ("/api/v1/sql-traits", {"key": "x" * 101, "sql": ORDERS}, 422, "invalid_request"),
        ("/api/v1/sql-traits", {"key": "ok", "sql": ORDERS, "extra": 1}, 422, "invalid_request"),
        ("/api/v1/sql-traits", {"key": "ok"}, 422, "invalid_request"),
        ("/api/v1/sql-traits", {"key": "ok", "sql": "x" * 20_001}, 422, "invalid_request"),
        ("/api/v1/sql-traits", {"key": "ok", "sql": ORDERS + "; DROP TABLE events"}, 422, "invalid_sql_trait"),
        ("/api/v1/sql-traits", {"key": "ok", "sql": ORDERS + "\u0000"}, 422, "invalid_sql_trait"),
        ("/api/v1/sql-traits", {"key": "ok", "sql": "   "}, 422, "invalid_sql_trait"),
        ("/api/v1/sql-traits", {"key": "ok", "sql": ORDERS, "pii": "maybe"}, 422, "invalid_request"),
        ("/api/v1/sql-traits", [1, 2], 422, "invalid_request"),
        ("/api/v1/sql-traits/preview", {"sql": "SELECT 1 AS x"}, 422, "invalid_sql_trait"),
        ("/api/v1/sql-traits/preview", {"sql": "COPY events TO '/tmp/x.csv'"}, 422, "invalid_sql_trait"),
        ("/api/v1/sql-traits/preview", {"sql": "SELECT * FROM read_text('/etc/passwd')"}, 422, "invalid_sql_trait"),
        ("/api/v1/sql-traits/preview", {"sql": "ATTACH '/tmp/x.db'"}, 422, "invalid_sql_trait"),
        ("/api/v1/sql-traits/preview", {"sql": ORDERS, "limit": 101}, 422, "invalid_request"),
        ("/api/v1/sql-traits/nothing/run", None, 404, "sql_trait_not_found"),
        ("/api/v1/schedules", {"name": "a b", "kind": "computed", "every_minutes": 5, "trait": "t"}, 422, None),
        ("/api/v1/schedules", {"name": "a", "kind": "cron", "every_minutes": 5}, 422, "invalid_request"),
        ("/api/v1/schedules", {"name": "a", "kind": "computed", "every_minutes": 0, "trait": "t"}, 422, None),
        ("/api/v1/schedules", {"name": "a", "kind": "computed", "every_minutes": 5}, 422, "invalid_schedule"),
        ("/api/v1/schedules", {"name": "a", "kind": "computed", "every_minutes": 5, "trait": "no"}, 404, None),
        ("/api/v1/schedules/nothing/run", None, 404, "schedule_not_found"),
    ],
)
def test_malformed_and_hostile_requests(live: LiveAccord, path: str, body: Any, status: int, code: str | None) -> None:
    with live.api() as api:
        answer = api.post(path, json=body) if body is not None else api.post(path)
        assert answer.status_code == status, answer.text
        assert set(answer.json()) >= {"code", "message"}
        if code is not None:
            assert answer.json()["code"] == code


def test_bodies_that_are_not_json_or_too_large(live: LiveAccord) -> None:
    with live.api() as api:
        broken = api.post("/api/v1/sql-traits", content=b"{not json", headers={"Content-Type": "application/json"})
        assert broken.status_code in (400, 422)
        assert "code" in broken.json()
        huge = api.post("/api/v1/sql-traits", content=b'{"key": "x", "sql": "' + b"a" * 3_000_000 + b'"}')
        assert (huge.status_code, huge.json()["code"]) == (413, "request_too_large")
        unknown = api.put("/api/v1/sql-traits/nothing", json={"sql": ORDERS})
        assert (unknown.status_code, unknown.json()["code"]) == (404, "sql_trait_not_found")
        odd = api.get("/api/v1/sql-traits/" + "%27%3B--")
        assert odd.status_code == 404
        long = api.get("/api/v1/schedules/" + "x" * 101)
        assert long.status_code == 422


def test_commands_and_mapping_changes_are_audited(live: LiveAccord) -> None:
    from sqlalchemy import select
    from typer.testing import CliRunner

    from accord.audit.models import AuditRecord
    from accord.cli import app

    people(live)
    settings = live.rt.settings
    env = {"ACCORD_DATA_DIR": str(settings.data_dir)}
    if settings.database_url:
        env["ACCORD_DATABASE_URL"] = settings.database_url
    for args in (
        ["computed-trait", "orders", "--sql", ORDERS],
        ["computed-trait", "orders", "--sql", ORDERS],  # unchanged: a run, no new version
        ["schedule", "add-computed", "hourly", "--every", "60", "--trait", "orders"],
        ["schedule", "run", "hourly"],
        ["schedule", "remove", "hourly"],
    ):
        result = CliRunner().invoke(app, args, env=env)
        assert result.exit_code == 0, (args, result.output)
    with live.api() as api:
        assert api.put(f"/api/v1/sources/{live.source_id}/mappings/hook", json=HOOK).status_code == 200
    with live.rt.db.read() as session:
        records = session.execute(
            select(AuditRecord.actor_type, AuditRecord.action, AuditRecord.target_id)
            .where(AuditRecord.action.like("s%"))
            .order_by(AuditRecord.seq)
        ).all()
    assert [tuple(r) for r in records] == [
        ("cli", "sql_trait.create", "orders"),
        ("cli", "sql_trait.run", "orders"),
        ("cli", "sql_trait.run", "orders"),
        ("cli", "schedule.create", "hourly"),
        ("cli", "schedule.run", "hourly"),
        ("cli", "schedule.delete", "hourly"),
        ("token", "source_mapping.put", f"{live.source_id}/hook"),
    ]


def test_one_preview_at_a_time(live: LiveAccord) -> None:
    from accord.sources import sql_traits

    with live.api() as api:
        assert sql_traits.PREVIEWS.acquire(blocking=False)  # as if a preview were running
        try:
            busy = api.post("/api/v1/sql-traits/preview", json={"sql": ORDERS})
        finally:
            sql_traits.PREVIEWS.release()
        assert (busy.status_code, busy.json()["code"]) == (429, "preview_busy")
        assert api.post("/api/v1/sql-traits/preview", json={"sql": ORDERS}).status_code == 200


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/v1/sql-traits", {"key": "nul", "sql": ORDERS, "description": "a\u0000b"}),
        ("/api/v1/schedules", {"name": "nul", "kind": "table", "every_minutes": 5, "url_env": "CRM_URL"}),
    ],
)
def test_nul_characters_are_refused_before_the_database_sees_them(
    live: LiveAccord, path: str, body: dict[str, Any]
) -> None:
    """Found by the fuzzing on PostgreSQL, whose text and JSON refuse NUL: it was a 500."""
    source(live.rt, "crm")
    if path.endswith("schedules"):
        body |= {"table": "people\u0000", "mapping": HOOK, "source": "crm"}
    with live.api() as api:
        answer = api.post(path, content=json.dumps(body), headers={"Content-Type": "application/json"})
        assert answer.status_code == 422, answer.text
        assert "NUL" in answer.json()["message"]
        if path.endswith("sql-traits"):
            api.post(path, json={"key": "nul", "sql": ORDERS})
            changed = api.put("/api/v1/sql-traits/nul", json={"sql": ORDERS, "description": "\u0000"})
            assert changed.status_code == 422, changed.text
