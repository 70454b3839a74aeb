"""Personal data that waits before any profile exists is encrypted at rest: events in the raw event log
(no worker runs here, so they stay unprocessed), rows an import rejected, and the errors of both, which may
quote the value that failed; so are agents' notes and the evidence of consent records. The database files
(SQLite: the database, its WAL and the log file; PostgreSQL: a pg_dump) hold none of the values sent, the
readers get them back, and a payload altered or moved gives a clear error."""

from __future__ import annotations

import base64
import json
import sqlite3
from datetime import timedelta
from pathlib import Path

import orjson
import pytest
from alembic import command
from sqlalchemy import create_engine, select, text, update
from typer.testing import CliRunner

from accord.cli import app
from accord.consent import catalogue, ledger
from accord.consent import service as consent
from accord.consent.capture import CONSENT_EVENT
from accord.console import service as console
from accord.db import migrate
from accord.db.base import utcnow
from accord.ingest import quarantine
from accord.log.models import LogRecord
from accord.log.sql import UNREADABLE_AFTER, SqlEventLog
from accord.pipeline.worker import Worker
from accord.profiles.service import resolve
from accord.runtime import Runtime
from accord.security import datakeys
from accord.security.crypto import Undecryptable, is_ciphertext, key_id_of
from accord.security.datakeys import DataKeys
from accord.security.logkeys import LOG_KEY_PREFIX
from accord.security.models import DataKey
from accord.sources import imports, schedules
from accord.sources.mapping import load_mapping
from accord.sources.models import ImportRun, Schedule
from conftest import LiveAccord, database_text, found
from pipeline.helpers import process, send
from sources.importing import LOYALTY, run_import, source, write

WAITING = ("zebulon.waiting@example.net", "Zebulon Waitwell", "+14155550123")
REJECTED = ("quintus.rejected@example.org", "Quintus", "Rejectington")
QUARANTINED = ("ottoline.quarantined@example.com", "Ottoline Quarantaine")
NOTE = "Called about her divorce settlement; prefers the Ravensworth branch"
# Values that end up quoted in an error text: in a typed field of an import, as a consent event's purpose.
MISTYPED = "petronella.mistyped@example.org"
MISPURPOSED = "barnabas.mispurposed@example.net"
# What a web form's consent statement carries as proof: the address and browser it came from.
EVIDENCE = {"ip": "198.51.100.203", "user_agent": "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/151.0"}
# A value DuckDB quotes when it fails the whole run: a mapping's SQL field casts a column that holds it.
MISREAD = "philippa.misread@example.org"
CAST = (
    "mapping: 1\nname: plans\nfields: [{name: n, sql: 'CAST(plan AS INTEGER)'}]\n"
    "identifiers: [{field: id, type: user_id}]\ntraits: [{field: n}]\n"
)


def _note(rt: Runtime) -> None:
    with rt.db.unit_of_work() as session:
        console.add_note(
            session, profile_id="p-noted", author_id="u1", author_email="agent@bank.example", text=NOTE, now=utcnow()
        )


def _consent(rt: Runtime) -> str:
    """A statement given on a web form for profile p-consenting, with its evidence; returns the record id."""
    now = utcnow()
    with rt.db.unit_of_work() as session:
        catalogue.put_purpose(
            session,
            key="marketing",
            name="Marketing",
            description="",
            legal_basis="consent",
            expires_after_days=None,
            now=now,
        )
        catalogue.add_notice_version(
            session,
            key="privacy",
            language="en",
            title="Privacy",
            text="We write to you.",
            purposes=["marketing"],
            url=None,
            now=now,
        )
        statement = consent.Statement(
            purpose="marketing",
            channel="email",
            status="given",
            method="form",
            notice=consent.NoticeRef("privacy", 1, "en"),
            evidence=dict(EVIDENCE),
        )
        (done,) = consent.record(
            session,
            [("p-consenting", statement)],
            actor={"type": "customer", "id": None},
            key=rt.signing,
            settings=rt.settings,
            now=now,
        )
    return str(done.body["id"])


def _evidence(rt: Runtime) -> list[dict[str, object] | None]:
    with rt.db.read() as session:
        return [evidence for _, _, evidence in consent.history(session, ["p-consenting"])]


def _verified(rt: Runtime) -> ledger.Verification:
    assert rt.db.keyring is not None
    return ledger.verify(rt.db.engine, key=rt.signing, keys=rt.db.keyring.provider)


def _quarantine(rt: Runtime) -> None:
    event = {"type": "identify", "messageId": "m-q", "userId": "u-q", "traits": {"email": QUARANTINED[0]}}
    event["traits"]["name"] = QUARANTINED[1]
    with rt.db.unit_of_work() as session:
        quarantine.put(session, "src_q", event, "ValueError: a fault in processing")


def _waiting_events() -> list[dict[str, object]]:
    return [
        {"type": "identify", "userId": "u-z", "traits": {"email": WAITING[0], "name": WAITING[1]}},
        {"type": "track", "userId": "u-z", "event": "Called", "properties": {"phone": WAITING[2]}},
    ]


def _claimed(rt: Runtime) -> list[dict[str, object]]:
    with rt.log.claim(10_000) as claim:  # not acknowledged: the records stay
        return [event for delivery in claim.deliveries for event in delivery.events]


def test_waiting_events_and_rejected_rows_hold_no_personal_data_in_clear(rt: Runtime, tmp_path: Path) -> None:
    send(rt, _waiting_events())
    csv = (
        "Customer ID,E-mail,first,last,points,joined,tier\n"
        f"7,{REJECTED[0]},{REJECTED[1]},{REJECTED[2]},lots,01/02/2020,gold\n"
    )
    run = run_import(rt, write(tmp_path, "loyalty.csv", csv), LOYALTY)
    assert (run.read, run.rejected) == (1, 1)
    assert rt.log.pending() == 2
    _quarantine(rt)
    _note(rt)
    _consent(rt)

    stored = database_text(rt, tmp_path)
    secrets = (*WAITING, *REJECTED, *QUARANTINED, NOTE, *EVIDENCE.values())
    assert [secret for secret in secrets if found(stored, secret)] == []
    assert [secret for secret in NOTE.split() if len(secret) > 7 and found(stored, secret)] == []
    assert found(stored, "u-z") is False  # the whole payload is sealed, not only the personal fields

    # The readers get everything back: the worker's claim, and the rejects for a role with PII access.
    events = _claimed(rt)
    assert [e["type"] for e in events] == ["identify", "track"]
    assert events[0]["traits"] == {"email": WAITING[0], "name": WAITING[1]}
    with rt.db.read() as session:
        keys = DataKeys.of(session)
        (reject,) = [imports.reject_document(keys, r) for r in imports.rejects(session, run.id)]
    assert reject["row"]["E-mail"] == REJECTED[0]
    assert reject["row"]["last"] == REJECTED[2]
    assert reject["reason"] == "field points: 'lots' is not an integer"
    assert not found(stored, "'lots'")
    with rt.db.read() as session:
        assert [n.text for n in console.notes(session, ["p-noted"])] == [NOTE]
    assert _evidence(rt) == [EVIDENCE]
    report = _verified(rt)  # the chain's digest is of the evidence in clear: verification opens it
    assert report.ok, report.first_bad
    assert report.evidence_checked == 1
    # A quarantined event goes back to the log, sealed there too, when replayed.
    assert quarantine.replay(rt.db, rt.log) == 1
    assert _claimed(rt)[-1]["traits"] == {"email": QUARANTINED[0], "name": QUARANTINED[1]}
    assert not found(database_text(rt, tmp_path), QUARANTINED[0])


def test_error_texts_that_quote_the_failed_value_are_sealed(rt: Runtime, tmp_path: Path) -> None:
    csv = f"Customer ID,E-mail,first,last,points,joined,tier\n8,a@example.com,A,B,{MISTYPED},01/02/2020,gold\n"
    run = run_import(rt, write(tmp_path, "loyalty.csv", csv), LOYALTY)
    assert (run.read, run.rejected) == (1, 1)
    consent = {"purpose": MISPURPOSED, "status": "given"}
    send(rt, [{"type": "track", "userId": "u-c", "event": CONSENT_EVENT, "properties": consent, "messageId": "m-c"}])
    assert process(rt) == 1

    stored = database_text(rt, tmp_path)
    assert [secret for secret in (MISTYPED, MISPURPOSED) if found(stored, secret)] == []
    assert not found(stored, "is not an integer")  # the whole reason is sealed, not only the value in it
    assert not found(stored, "in the catalogue")

    # The operator still reads the whole error: the rejects (API, CLI) and the quarantine (CLI) open them.
    with rt.db.read() as session:
        keys = DataKeys.of(session)
        (reject,) = [imports.reject_document(keys, r) for r in imports.rejects(session, run.id)]
        (waiting,) = quarantine.waiting(session)
        assert is_ciphertext(waiting.error)
        error = quarantine.error_of(keys, waiting)
    assert reject["reason"] == f"field points: '{MISTYPED}' is not an integer"
    assert waiting.message_id == "m-c"
    assert error == f"ConsentError unknown_purpose: no purpose '{MISPURPOSED}' in the catalogue"
    # Each is bound to its row: moved to another, it does not open.
    with rt.db.unit_of_work() as session:
        (waiting,) = quarantine.waiting(session)
        waiting.message_id = "m-other"
        (row,) = imports.rejects(session, run.id)
        row.position += 1
    with rt.db.read() as session:
        keys = DataKeys.of(session)
        with pytest.raises(Undecryptable):
            quarantine.error_of(keys, quarantine.waiting(session)[0])
        with pytest.raises(Undecryptable):
            imports.open_reject(keys, imports.rejects(session, run.id)[0])


def _cli(rt: Runtime, *args: str) -> tuple[int, str]:
    env = {"ACCORD_DATA_DIR": str(rt.settings.data_dir)}
    if rt.settings.database_url:
        env["ACCORD_DATABASE_URL"] = rt.settings.database_url
    result = CliRunner().invoke(app, list(args), env=env)
    return result.exit_code, result.output


def test_a_failed_runs_error_that_quotes_the_input_is_sealed(live: LiveAccord, tmp_path: Path) -> None:
    rt = live.rt
    csv = write(tmp_path, "plans.csv", f"id,plan\n1,7\n2,{MISREAD}\n")
    code, output = _cli(rt, "import", str(csv), "--mapping", str(write(tmp_path, "plans.yaml", CAST)), "--json")
    assert code == 1, output
    printed = json.loads(output)
    error = printed["error"]
    assert printed["status"] == "failed"
    assert f"Could not convert string '{MISREAD}' to INT32" in error
    run_id = printed["run_id"]

    stored = database_text(rt, tmp_path)
    assert not found(stored, MISREAD)
    assert not found(stored, "Could not convert")  # the whole message is sealed, not only the value in it
    with rt.db.read() as session:
        run = session.get(ImportRun, run_id)
        assert run is not None
        assert key_id_of(str(run.error)) == imports.reject_key(run_id)  # the run's key, made as it failed
        assert session.get(DataKey, imports.reject_key(run_id)) is not None

    # Every reader opens it: the CLI (show, list) and the API (one run, the source's runs).
    code, output = _cli(rt, "imports", "show", run_id, "--json")
    assert (code, json.loads(output)["error"]) == (0, error)
    code, output = _cli(rt, "imports", "list", "--json")
    assert [r["error"] for r in json.loads(output) if r["run_id"] == run_id] == [error]
    with live.api() as api:
        assert api.get(f"/api/v1/sources/plans/imports/{run_id}").json()["error"] == error
        assert [r["error"] for r in api.get("/api/v1/sources/plans/imports").json()["data"]] == [error]

    # Bound to its run: moved to another, it reads as an error that does not open (no exception).
    other = run_import(rt, write(tmp_path, "plans2.csv", f"id,plan\n3,{MISREAD}x\n"), CAST, source_name="plans")
    with rt.db.unit_of_work() as session:
        moved = session.get(ImportRun, other.id)
        assert moved is not None
        moved.error = session.get(ImportRun, run_id).error  # type: ignore[union-attr]
    with rt.db.read() as session:
        shown = imports.run_error(DataKeys.of(session), session.get(ImportRun, other.id))  # type: ignore[arg-type]
    assert shown is not None
    assert shown.startswith("(the error cannot be opened: a ciphertext does not open here")

    # Purged with the run's rejects after their retention: its key is destroyed, it reads as a placeholder.
    with rt.db.unit_of_work() as session:
        imports.purge_rejects(session, finished_before=utcnow() + timedelta(days=1))
    with rt.db.read() as session:
        assert session.get(DataKey, imports.reject_key(run_id)) is None
        assert session.get(ImportRun, run_id).error == imports.PURGED_ERROR  # type: ignore[union-attr]
    code, output = _cli(rt, "imports", "show", run_id, "--json")
    assert (code, json.loads(output)["error"]) == (0, imports.PURGED_ERROR)
    with live.api() as api:
        assert api.get(f"/api/v1/sources/plans/imports/{run_id}").json()["error"] == imports.PURGED_ERROR
    with rt.db.unit_of_work() as session:  # a second purge finds nothing left to do
        assert imports.purge_rejects(session, finished_before=utcnow() + timedelta(days=1)) == 0
        assert session.scalar(select(ImportRun.id).where(ImportRun.error.startswith("e1."))) is None


def _failing_table_schedule(rt: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    crm = tmp_path / "crm.db"
    engine = create_engine(f"sqlite:///{crm}")
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE people (id INTEGER, plan TEXT)"))
        connection.execute(text("INSERT INTO people VALUES (5, :v)"), {"v": MISREAD})
    engine.dispose()
    monkeypatch.setenv("CRM_URL", f"sqlite:///{crm}")
    with rt.db.unit_of_work() as session:
        schedules.add_table(
            session,
            name="crm",
            every_seconds=600,
            url_env="CRM_URL",
            table="people",
            query=None,
            cursor=None,
            mapping=load_mapping(CAST),
            source_id=source(rt, "crm"),
            now=utcnow(),
        )


def test_a_schedule_does_not_copy_its_failed_runs_error(
    rt: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _failing_table_schedule(rt, tmp_path, monkeypatch)
    (outcome,) = schedules.run_due(rt.db, rt.log, data_dir=tmp_path / "work", now=utcnow() + timedelta(minutes=1))
    assert outcome.status == "failed"
    run_id = outcome.result.split(":")[0].removeprefix("run ")
    assert outcome.result == f"run {run_id}: read 0, imported 0, rejected 0; {schedules.ERROR_WITH_RUN}{run_id}"
    with rt.db.read() as session:
        run = session.get(ImportRun, run_id)
        assert run is not None
        assert MISREAD in str(imports.run_error(DataKeys.of(session), run))
        assert session.get(Schedule, "crm").last_result == outcome.result  # type: ignore[union-attr]
    assert not found(database_text(rt, tmp_path), MISREAD)


def test_migration_0029_seals_run_errors_and_takes_them_out_of_schedules(
    rt: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    failed = run_import(rt, write(tmp_path, "plans.csv", f"id,plan\n2,{MISREAD}\n"), CAST)
    _failing_table_schedule(rt, tmp_path, monkeypatch)
    (outcome,) = schedules.run_due(rt.db, rt.log, data_dir=tmp_path / "work", now=utcnow() + timedelta(minutes=1))
    scheduled = outcome.result.split(":")[0].removeprefix("run ")
    purged = run_import(rt, write(tmp_path, "old.csv", f"id,plan\n9,{MISREAD}z\n"), CAST)
    with rt.db.unit_of_work() as session:
        session.execute(
            update(ImportRun).where(ImportRun.id == purged.id).values(finished_at=utcnow() - timedelta(days=99))
        )
        imports.purge_rejects(session, finished_before=utcnow() - timedelta(days=30))
    config = migrate._config()
    with rt.db.engine.begin() as connection:
        config.attributes["connection"] = connection
        config.attributes["keyring"] = rt.db.keyring
        command.downgrade(config, "0028")
    with rt.db.read() as session:
        errors = dict(session.execute(text("SELECT id, error FROM import_runs")).all())
        result = session.execute(text("SELECT last_result FROM schedules WHERE name = 'crm'")).scalar()
    assert MISREAD in errors[failed.id]
    assert MISREAD in errors[scheduled]
    assert errors[purged.id] == imports.PURGED_ERROR
    assert result == f"run {scheduled}: read 0, imported 0, rejected 0; {errors[scheduled]}"
    # Before 0029, a run that failed before rejecting anything had no key: the upgrade makes it.
    with rt.db.engine.begin() as connection:
        connection.execute(text("DELETE FROM data_keys WHERE id = :k"), {"k": imports.reject_key(failed.id)})
    migrate.upgrade(rt.db)
    with rt.db.read() as session:
        keys = DataKeys.of(session)
        runs = {r.id: r for r in session.scalars(select(ImportRun))}
        assert all(is_ciphertext(runs[i].error) for i in (failed.id, scheduled))
        assert {i: imports.run_error(keys, runs[i]) for i in errors} == errors
        assert session.get(Schedule, "crm").last_result == outcome.result  # type: ignore[union-attr]
    assert not found(database_text(rt, tmp_path), MISREAD)
    migrate.upgrade(rt.db)  # nothing left to seal: a no-op


def test_an_altered_or_moved_log_payload_is_a_clear_error(rt: Runtime) -> None:
    send(rt, _waiting_events())
    send(rt, _waiting_events())
    with rt.log.db.read() as session:
        (first, a), (_, b) = session.execute(select(LogRecord.seq, LogRecord.payload).order_by(LogRecord.seq))
    a, b = bytes(a), bytes(b)

    def stored(seq: int, payload: bytes) -> None:
        with rt.log.db.unit_of_work() as session:
            session.execute(update(LogRecord).where(LogRecord.seq == seq).values(payload=payload))

    for payload, reason in (
        (a[:-1] + bytes([a[-1] ^ 1]), "does not open here"),  # altered
        (b, "does not open here"),  # moved from another record
        (b'[{"type":"track"}]', "not a ciphertext"),  # written in clear
        (a[:40], "not a ciphertext"),  # truncated
        (b"e1.log-gone." + a[-40:], "does not exist"),  # under a log key nobody has
    ):
        stored(first, payload)
        with pytest.raises(Undecryptable, match=f"event log record {first}: .*{reason}"):
            _claimed(rt)
    stored(first, a)
    assert len(_claimed(rt)) == 4


def _log_keys(rt: Runtime) -> dict[str, str]:
    with rt.db.read() as session:
        rows = session.execute(select(DataKey.id, DataKey.kek_id).where(DataKey.id.startswith(LOG_KEY_PREFIX)))
        return {str(key_id): str(kek_id) for key_id, kek_id in rows.all()}


def test_key_rotation_makes_a_new_log_key_and_rewraps_the_old(rt: Runtime) -> None:
    send(rt, _waiting_events())
    (before,) = _log_keys(rt)
    done = datakeys.rotate(rt.db, grace_seconds=0)
    rt.log.keys.refresh_seconds = 0  # a process looks for a newer log key every second; now at once
    send(rt, _waiting_events())
    keys = _log_keys(rt)
    assert len(keys) == 2
    assert set(keys.values()) == {done.kek_id}  # the old log key rewrapped, the new one made under the new KEK
    with rt.log.db.read() as session:
        sealed_under = [bytes(p).split(b".")[1].decode() for (p,) in session.execute(select(LogRecord.payload))]
    assert sealed_under[0] == before
    assert sealed_under[1] != before
    assert len(_claimed(rt)) == 4  # both read


def test_an_altered_quarantined_event_is_a_clear_error(rt: Runtime) -> None:
    _quarantine(rt)
    with rt.db.unit_of_work() as session:
        (waiting,) = quarantine.waiting(session)
        waiting.message_id = "m-other"  # the ciphertext is bound to its source and messageId
    with rt.db.read() as session, pytest.raises(Undecryptable):
        quarantine.event_of(DataKeys.of(session), quarantine.waiting(session)[0])


def test_an_altered_rejected_row_is_a_clear_error(rt: Runtime, tmp_path: Path) -> None:
    csv = "Customer ID,E-mail,first,last,points,joined,tier\n1,a@example.com,A,B,x,01/02/2020,gold\n"
    run = run_import(rt, write(tmp_path, "loyalty.csv", csv), LOYALTY)
    with rt.db.unit_of_work() as session:
        (reject,) = imports.rejects(session, run.id)
        assert reject.row is not None
        assert set(reject.row) == {"sealed"}
        reject.position += 1  # the ciphertext is bound to its run and place
    with rt.db.read() as session, pytest.raises(Undecryptable):
        imports.reject_document(DataKeys.of(session), imports.rejects(session, run.id)[0])


def test_the_migrations_seal_what_was_stored_in_clear(rt: Runtime, tmp_path: Path) -> None:
    csv = "Customer ID,E-mail,first,last,points,joined,tier\n1,x@example.com,X,Y,no,01/02/2020,gold\n"
    run = run_import(rt, write(tmp_path, "loyalty.csv", csv), LOYALTY)
    assert run.rejected == 1
    _quarantine(rt)
    _note(rt)
    record_id = _consent(rt)
    config = migrate._config()
    with rt.db.engine.begin() as connection:
        config.attributes["connection"] = connection
        config.attributes["keyring"] = rt.db.keyring
        command.downgrade(config, "0025")  # opens the error texts
    with rt.db.read() as session:
        assert (
            session.execute(text("SELECT reason FROM import_rejects")).scalar()
            == "field points: 'no' is not an integer"
        )
        assert session.execute(text("SELECT error FROM quarantine")).scalar() == "ValueError: a fault in processing"
    with rt.db.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0019")  # opens the rejects and (PostgreSQL) the log's payloads
    clear = orjson.dumps([{"type": "track", "userId": "u-m", "event": "Old", "properties": {"email": WAITING[0]}}])
    with rt.db.read() as session:
        (row,) = session.execute(text("SELECT row FROM import_rejects")).scalars()
    assert "x@example.com" in str(row)
    with rt.db.read() as session:
        (payload,) = session.execute(text("SELECT payload FROM quarantine")).scalars()
    assert QUARANTINED[0] in str(payload)
    with rt.db.read() as session:
        assert session.execute(text("SELECT text FROM profile_notes")).scalar() == NOTE
        evidence = bytes(session.execute(text("SELECT body FROM consent_evidence")).scalar_one())
    assert orjson.loads(evidence) == EVIDENCE  # the canonical JSON the chain's digest covers, as before 0028
    assert _verified(rt).evidence_checked == 1  # clear evidence still verifies
    if rt.db.dialect == "postgresql":
        with rt.db.engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO event_log (source_id, received_at, event_count, payload)"
                    " VALUES ('src_old', now(), 1, :p)"
                ),
                {"p": clear},
            )
        migrate.upgrade(rt.db)
        log = rt.log
    else:
        # The SQLite log is a file of its own, of schema 1 before payloads were sealed: opened, it seals them.
        migrate.upgrade(rt.db)
        rt.log.close()
        path = rt.log.db.engine.url.database
        assert path is not None
        rt.log.db.dispose()
        with sqlite3.connect(path) as raw:
            raw.execute(
                "INSERT INTO event_log (source_id, received_at, event_count, payload)"
                " VALUES ('src_old', '2026-01-01 00:00:00.000000', 1, ?)",
                (clear,),
            )
            raw.execute("PRAGMA user_version = 1")
        raw.close()
        log = SqlEventLog(rt.log.db, rt.log.keys)
        log.ensure_file_schema()
    with log.db.read() as session:
        (payload,) = session.execute(select(LogRecord.payload)).scalars()
    assert bytes(payload).startswith(b"e1.log-")
    assert WAITING[0].encode() not in bytes(payload)
    with log.claim(10) as claim:
        assert claim.deliveries[0].events[0]["properties"] == {"email": WAITING[0]}
    with rt.db.read() as session:
        (reject,) = imports.rejects(session, run.id)
        assert set(reject.row or {}) == {"sealed"}
        assert imports.reject_document(DataKeys.of(session), reject)["row"]["E-mail"] == "x@example.com"
        assert is_ciphertext(reject.reason)
        assert imports.reject_document(DataKeys.of(session), reject)["reason"] == "field points: 'no' is not an integer"
        (waiting,) = quarantine.waiting(session)
        assert set(waiting.payload) == {"sealed"}
        assert quarantine.event_of(DataKeys.of(session), waiting)["traits"]["email"] == QUARANTINED[0]
        assert key_id_of(waiting.error) == key_id_of(waiting.payload["sealed"])  # the log key of its event
        assert quarantine.error_of(DataKeys.of(session), waiting) == "ValueError: a fault in processing"
        assert session.execute(text("SELECT text FROM profile_notes")).scalar().startswith("e1.p-noted.")
        assert [n.text for n in console.notes(session, ["p-noted"])] == [NOTE]
        sealed = bytes(session.execute(text("SELECT body FROM consent_evidence")).scalar_one())
    assert sealed.startswith(b"e1.p-consenting.")
    assert EVIDENCE["ip"].encode() not in sealed
    assert _evidence(rt) == [EVIDENCE]
    report = _verified(rt)
    assert (report.ok, report.evidence_checked) == (True, 1), report.first_bad
    migrate.upgrade(rt.db)  # nothing left to seal: a no-op
    with rt.db.read() as session:
        assert bytes(session.execute(text("SELECT body FROM consent_evidence")).scalar_one()) == sealed
    # Down to 0027 and back: 0028 alone opens and seals the evidence again, bound to the same record.
    with rt.db.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0027")
    with rt.db.read() as session:
        assert orjson.loads(bytes(session.execute(text("SELECT body FROM consent_evidence")).scalar_one())) == EVIDENCE
    migrate.upgrade(rt.db)
    assert _evidence(rt) == [EVIDENCE]
    assert _verified(rt).ok
    with rt.db.read() as session:
        assert session.execute(text("SELECT record_id FROM consent_evidence")).scalar_one() == record_id


def test_a_record_that_never_opens_is_set_aside_and_the_log_moves_on(rt: Runtime) -> None:
    """An altered record fails a few claims (a key not yet seen would pass), then goes to the quarantine
    with its stored bytes and the reason; the events behind it are processed."""
    send(rt, _waiting_events())
    send(rt, [{"type": "track", "userId": "u-after", "event": "Behind"}])
    with rt.log.db.read() as session:
        first, payload = session.execute(select(LogRecord.seq, LogRecord.payload).order_by(LogRecord.seq)).first()
    altered = bytes(payload)[:-1] + bytes([bytes(payload)[-1] ^ 1])
    with rt.log.db.unit_of_work() as session:
        session.execute(update(LogRecord).where(LogRecord.seq == first).values(payload=altered))
    worker = Worker(db=rt.db, log=rt.log)
    for _ in range(UNREADABLE_AFTER - 1):
        with pytest.raises(Undecryptable):
            worker.run_once()
    assert worker.drain() == 2  # the unreadable record, and the event behind it
    assert rt.log.pending() == 0
    with rt.db.read() as session:
        (row,) = quarantine.waiting(session)
        assert quarantine.error_of(DataKeys.of(session), row).startswith(
            f"UnreadableLogRecord: event log record {first}: "
        )
        kept = quarantine.event_of(DataKeys.of(session), row)["accord_unreadable_log_record"]
        assert kept["seq"] == first
        assert base64.b64decode(kept["payload_base64"]) == altered
    with rt.db.read() as session:
        assert resolve(session, "user_id:u-after") is not None
