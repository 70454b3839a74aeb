"""Tampering with the audit trail as a database superuser would: each change is found by `audit.verify`, by
GET /api/v1/audit/verify and by `accord audit verify`, which name the first bad record. The application
itself cannot change or remove an audit row."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import rfc8785
from sqlalchemy import delete, select, text, update
from sqlalchemy.exc import DBAPIError

from accord.audit import service as audit
from accord.audit.models import AuditCheckpoint, AuditRecord
from accord.consent.keys import SigningKey
from accord.db.base import utcnow
from accord.runtime import Runtime
from accord.security.service import create_token
from conftest import LiveAccord, running_accord

RECORDS = 20
APPEND_ONLY = ("audit_log", "audit_checkpoints")


@dataclass
class Chain:
    live: LiveAccord
    auditor: httpx.Client
    ids: dict[int, str]
    old_head: dict[str, Any]  # the head as it was after record 17

    @property
    def rt(self) -> Runtime:
        return self.live.rt


@pytest.fixture
def chain(rt: Runtime) -> Iterator[Chain]:
    with running_accord(rt) as live:
        old_head: dict[str, Any] = {}
        for number in range(1, RECORDS + 1):
            actor = audit.Actor("token", f"tok_{number % 3}", "admin", f"203.0.113.{number}")
            with rt.db.unit_of_work() as session:
                audit.record_audit(
                    session,
                    key=rt.signing,
                    actor=actor,
                    action="profile.read",
                    target_type="profile",
                    target_id=f"prof_{number}",
                    details={"n": number},
                )
            if number == 17:
                with rt.db.engine.connect() as connection:
                    old_head = dict(connection.execute(text("SELECT * FROM audit_chain_head")).mappings().one())
        with rt.db.unit_of_work() as session:
            token = create_token(session, role="auditor").token
            ids = dict(session.execute(select(AuditRecord.seq, AuditRecord.id)).all())
        assert sorted(ids) == list(range(1, RECORDS + 1))
        with live.client(headers={"Authorization": f"Bearer {token}"}) as auditor:
            yield Chain(live=live, auditor=auditor, ids=ids, old_head=old_head)


def tamper(rt: Runtime, *statements: tuple[str, dict[str, Any]]) -> None:
    """SQL as a superuser: the append-only triggers off (PostgreSQL) or dropped and put back (SQLite)."""
    with rt.db.engine.begin() as connection:
        if rt.db.dialect == "postgresql":
            connection.execute(text("SET LOCAL session_replication_role = replica"))
            for sql, params in statements:
                connection.execute(text(sql), params)
            return
        triggers = connection.execute(
            text("SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name IN (:a, :b)"),
            dict(zip(("a", "b"), APPEND_ONLY, strict=True)),
        ).all()
        assert len(triggers) == 4
        for name, _ in triggers:
            connection.exec_driver_sql(f"DROP TRIGGER {name}")
        for sql, params in statements:
            connection.execute(text(sql), params)
        for _, sql in triggers:
            connection.exec_driver_sql(sql)


def row(rt: Runtime, seq: int) -> dict[str, Any]:
    with rt.db.engine.connect() as connection:
        return dict(connection.execute(text("SELECT * FROM audit_log WHERE seq = :seq"), {"seq": seq}).mappings().one())


def flip_a_body_byte(chain: Chain) -> None:
    body = bytearray(row(chain.rt, 7)["body"])
    at = body.index(b'"action":"') + len(b'"action":"')
    body[at] ^= 0x01
    tamper(chain.rt, ("UPDATE audit_log SET body = :body WHERE seq = 7", {"body": bytes(body)}))


def edit_body_and_rehash(chain: Chain) -> None:
    parsed = orjson.loads(row(chain.rt, 7)["body"])
    parsed["target_id"] = "prof_someone_else"
    body = rfc8785.dumps(parsed)
    tamper(
        chain.rt,
        (
            "UPDATE audit_log SET body = :body, hash = :hash, target_id = :target WHERE seq = 7",
            {"body": body, "hash": hashlib.sha256(body).hexdigest(), "target": parsed["target_id"]},
        ),
    )


def edit_the_actor_column(chain: Chain) -> None:
    tamper(chain.rt, ("UPDATE audit_log SET actor_id = 'tok_innocent' WHERE seq = 7", {}))


def edit_the_ip_column(chain: Chain) -> None:
    tamper(chain.rt, ("UPDATE audit_log SET ip = '198.51.100.1' WHERE seq = 7", {}))


def delete_a_middle_row(chain: Chain) -> None:
    tamper(chain.rt, ("DELETE FROM audit_log WHERE seq = 10", {}))


def insert_a_forged_row(chain: Chain) -> None:
    last = row(chain.rt, RECORDS)
    body = {**orjson.loads(last["body"]), "seq": RECORDS + 1, "prev": last["hash"], "id": "forged-21"}
    raw = rfc8785.dumps(body)
    digest = hashlib.sha256(raw).hexdigest()
    columns = {name: body[name] for name in audit.MIRRORED}
    names = ", ".join(columns)
    values = ", ".join(f":{name}" for name in columns)
    tamper(
        chain.rt,
        (
            f"INSERT INTO audit_log (seq, {names}, body, hash, mac) VALUES (:seq, {values}, :body, :hash, :mac)",
            {**columns, "seq": RECORDS + 1, "body": raw, "hash": digest, "mac": "0" * 64},
        ),
        ("UPDATE audit_chain_head SET seq = :seq, hash = :hash", {"seq": RECORDS + 1, "hash": digest}),
    )


def swap_two_rows(chain: Chain) -> None:
    five, six = row(chain.rt, 5), row(chain.rt, 6)
    swap = "UPDATE audit_log SET id = :id, body = :body, hash = :hash, mac = :mac WHERE seq = :seq"
    tamper(
        chain.rt,
        ("UPDATE audit_log SET id = 'moving-' || seq WHERE seq IN (5, 6)", {}),
        (swap, {"id": five["id"], "body": five["body"], "hash": five["hash"], "mac": five["mac"], "seq": 6}),
        (swap, {"id": six["id"], "body": six["body"], "hash": six["hash"], "mac": six["mac"], "seq": 5}),
    )


def truncate_the_tail(chain: Chain) -> None:
    tamper(chain.rt, ("DELETE FROM audit_log WHERE seq > 17", {}))


def truncate_after_a_checkpoint(chain: Chain) -> None:
    """Sign a checkpoint at 20, then remove 18..20 and put back the head copied at 17 (its MAC is genuine)."""
    with chain.rt.db.unit_of_work() as session:
        assert audit.checkpoint(session, key=chain.rt.signing, now=utcnow()) is not None
    old = chain.old_head
    tamper(
        chain.rt,
        ("DELETE FROM audit_log WHERE seq > :seq", {"seq": old["seq"]}),
        (
            "UPDATE audit_chain_head SET seq = :seq, hash = :hash, mac = :mac",
            {"seq": old["seq"], "hash": old["hash"], "mac": old["mac"]},
        ),
    )


def remove_tail_and_head(chain: Chain) -> None:
    tamper(chain.rt, ("DELETE FROM audit_log WHERE seq > 17", {}), ("DELETE FROM audit_chain_head", {}))


def forge_a_checkpoint(chain: Chain) -> None:
    last = row(chain.rt, RECORDS)
    other = SigningKey.generate()
    signed_at = utcnow()
    payload = {"seq": RECORDS, "hash": last["hash"], "signed_at": audit.iso(signed_at)}
    with chain.rt.db.unit_of_work() as session:
        session.add(
            AuditCheckpoint(
                seq=RECORDS, hash=last["hash"], signed_at=signed_at, jws=other.sign(payload, typ=audit.CHECKPOINT_TYP)
            )
        )


def replay_a_consent_ledger_mac(chain: Chain) -> None:
    """A record whose MAC is what the consent ledger would give it: the chains' messages differ."""
    tamper(
        chain.rt,
        (
            "UPDATE audit_log SET mac = :mac WHERE seq = 3",
            {"mac": chain.rt.signing.mac(f"record:{row(chain.rt, 3)['hash']}")},
        ),
    )


@dataclass(frozen=True)
class Tampering:
    act: Callable[[Chain], None]
    seq: int
    record: int | str | None
    problem: str


TAMPERINGS = {
    "flipped body byte": Tampering(flip_a_body_byte, 7, 7, "body does not match its hash"),
    "body edited and rehashed": Tampering(edit_body_and_rehash, 7, 7, "MAC does not verify"),
    "actor column edited": Tampering(edit_the_actor_column, 7, 7, "actor_id column differs"),
    "ip column edited": Tampering(edit_the_ip_column, 7, 7, "ip column differs"),
    "middle row deleted": Tampering(delete_a_middle_row, 10, None, "record 10 is missing"),
    "forged row inserted": Tampering(insert_a_forged_row, 21, "forged-21", "MAC does not verify"),
    "two rows swapped": Tampering(swap_two_rows, 5, 6, "says it is number 6"),
    "tail truncated": Tampering(truncate_the_tail, 18, None, "head says 20"),
    "tail truncated after a checkpoint": Tampering(truncate_after_a_checkpoint, 18, None, "18..20 are missing"),
    "tail and head removed": Tampering(remove_tail_and_head, 18, None, "head is missing"),
    "forged checkpoint": Tampering(forge_a_checkpoint, 20, None, "checkpoint signature"),
    "consent ledger MAC replayed": Tampering(replay_a_consent_ledger_mac, 3, 3, "MAC does not verify"),
}


def cli_verify(rt: Runtime, cwd: Path) -> tuple[int, dict[str, Any]]:
    env = {
        **os.environ,
        "ACCORD_DATA_DIR": str(rt.settings.data_dir),
        "ACCORD_SIGNING_KEY_FILE": str(rt.settings.signing_key_path()),
    }
    if rt.settings.database_url:
        env["ACCORD_DATABASE_URL"] = rt.settings.database_url
    done = subprocess.run(
        [sys.executable, "-m", "accord", "audit", "verify", "--json"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.stdout.strip(), done.stderr
    return done.returncode, json.loads(done.stdout.strip().splitlines()[-1])


def test_a_clean_trail_verifies(chain: Chain, tmp_path: Path) -> None:
    report = audit.verify(chain.rt.db.engine, key=chain.rt.signing)
    assert report.ok, report.first_bad
    assert (report.records, report.head_seq, report.checkpoints) == (RECORDS, RECORDS, 1)
    answer = chain.auditor.get("/api/v1/audit/verify").json()
    assert answer == {
        "ok": True,
        "records": RECORDS,
        "checkpoints": 1,
        "head_seq": RECORDS,
        "head_hash": row(chain.rt, RECORDS)["hash"],
        "first_bad": None,
    }
    assert cli_verify(chain.rt, tmp_path) == (0, answer)


@pytest.mark.parametrize("tampering", TAMPERINGS.values(), ids=TAMPERINGS.keys())
def test_tampering_is_found(chain: Chain, tampering: Tampering) -> None:
    tampering.act(chain)
    report = audit.verify(chain.rt.db.engine, key=chain.rt.signing)
    bad = report.first_bad
    assert bad is not None, "the tampering went unnoticed"
    assert bad.seq == tampering.seq, bad
    named = chain.ids[tampering.record] if isinstance(tampering.record, int) else tampering.record
    assert bad.record_id == named, bad
    assert tampering.problem in bad.problem
    answer = chain.auditor.get("/api/v1/audit/verify").json()
    assert answer["ok"] is False
    assert answer["first_bad"] == {"seq": bad.seq, "record_id": bad.record_id, "problem": bad.problem}


def test_the_cli_names_the_first_bad_record(chain: Chain, tmp_path: Path) -> None:
    delete_a_middle_row(chain)
    code, printed = cli_verify(chain.rt, tmp_path)
    assert code == 1
    assert printed["ok"] is False
    assert printed["records"] == 9
    assert printed["first_bad"] == {"seq": 10, "record_id": None, "problem": "record 10 is missing"}


def test_the_application_cannot_change_or_remove_audit_rows(chain: Chain) -> None:
    rt = chain.rt
    attempts: list[Callable[[Any], Any]] = [
        lambda s: s.execute(update(AuditRecord).where(AuditRecord.seq == 7).values(actor_id="tok_x")),
        lambda s: s.execute(delete(AuditRecord).where(AuditRecord.seq == RECORDS)),
        lambda s: s.execute(delete(AuditRecord)),
        lambda s: s.execute(update(AuditCheckpoint).values(hash="0" * 64)),
        lambda s: s.execute(delete(AuditCheckpoint)),
    ]
    for attempt in attempts:
        with pytest.raises(DBAPIError, match="append-only"), rt.db.unit_of_work() as session:
            attempt(session)
    if rt.db.dialect == "postgresql":
        for table in APPEND_ONLY:
            with pytest.raises(DBAPIError, match="append-only"), rt.db.engine.begin() as connection:
                connection.execute(text(f"TRUNCATE {table} CASCADE"))
    report = audit.verify(rt.db.engine, key=rt.signing)
    assert report.ok, report.first_bad
    assert report.records == RECORDS


def test_appends_continue_the_chain_after_a_checkpoint(chain: Chain) -> None:
    with chain.rt.db.unit_of_work() as session:
        assert audit.checkpoint(session, key=chain.rt.signing, now=utcnow()) is not None
        assert audit.checkpoint(session, key=chain.rt.signing, now=utcnow()) is None
    with chain.rt.db.unit_of_work() as session:
        entry = audit.record_audit(session, key=chain.rt.signing, actor=audit.SYSTEM, action="test")
    assert entry.seq == RECORDS + 1
    assert entry.body["prev"] == row(chain.rt, RECORDS)["hash"]
    report = audit.verify(chain.rt.db.engine, key=chain.rt.signing)
    assert report.ok, report.first_bad
    assert (report.records, report.checkpoints) == (RECORDS + 1, 2)
