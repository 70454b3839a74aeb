"""Tampering with the consent ledger, as someone with superuser access to the database would: each change is
found by `ledger.verify`, by GET /api/v1/consent/verify and by `accord consent verify`, which name the first
bad record. And the application itself cannot change or remove a ledger row."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import rfc8785
from sqlalchemy import delete, select, text, update
from sqlalchemy.exc import DBAPIError

from accord.consent import ledger, service
from accord.consent.keys import SigningKey
from accord.consent.models import Checkpoint, LedgerRecord
from accord.db.base import utcnow
from accord.runtime import Runtime
from accord.security.datakeys import DataKeys
from accord.security.service import create_token
from consent.world import ConsentWorld, consent_world

RECORDS = 20
# Recorded in three batches; the head is copied after the second, as an attacker reading the database might.
BATCHES = (5, 12, 3)
PURPOSES = ("marketing", "marketing.email", "marketing.email.newsletter")
STATUSES = ("given", "withdrawn", "renewed", "refused")
APPEND_ONLY = ("consent_ledger", "consent_checkpoints")


@dataclass
class Chain:
    world: ConsentWorld
    auditor: httpx.Client
    ids: dict[int, str]  # seq -> record id
    old_head: dict[str, Any]  # the chain head as it was after record 17

    @property
    def rt(self) -> Runtime:
        return self.world.live.rt


@pytest.fixture
def chain(rt: Runtime) -> Iterator[Chain]:
    """A live Accord whose ledger holds 20 consent records, each with evidence."""
    with consent_world(rt) as world:
        notice = service.NoticeRef("privacy", 1, "en")
        old_head: dict[str, Any] = {}
        number = 0
        for size in BATCHES:
            statements = []
            for _ in range(size):
                number += 1
                statements.append(
                    (
                        world.profile_id,
                        service.Statement(
                            purpose=PURPOSES[number % len(PURPOSES)],
                            channel="email",
                            status=STATUSES[number % len(STATUSES)],
                            method="form",
                            notice=notice,
                            evidence={"ip": f"203.0.113.{number}", "reference": f"form-{number}"},
                        ),
                    )
                )
            with rt.db.unit_of_work() as session:
                service.record(
                    session,
                    statements,
                    actor={"type": "system", "id": "test"},
                    key=rt.signing,
                    settings=rt.settings,
                    now=utcnow(),
                )
            if number == RECORDS - BATCHES[-1]:
                with rt.db.engine.connect() as connection:
                    old_head = dict(connection.execute(text("SELECT * FROM consent_chain_head")).mappings().one())
        with rt.db.unit_of_work() as session:
            token = create_token(session, role="auditor").token
            ids = dict(session.execute(select(LedgerRecord.seq, LedgerRecord.id)).all())
        assert sorted(ids) == list(range(1, RECORDS + 1))
        with world.live.client(headers={"Authorization": f"Bearer {token}"}) as auditor:
            yield Chain(world=world, auditor=auditor, ids=ids, old_head=old_head)


def tamper(rt: Runtime, *statements: tuple[str, dict[str, Any]]) -> None:
    """Run SQL as a database superuser: the append-only triggers are switched off (PostgreSQL) or dropped and
    put back afterwards (SQLite) around the change."""
    with rt.db.engine.begin() as connection:
        if rt.db.dialect == "postgresql":
            connection.execute(text("SET LOCAL session_replication_role = replica"))
            for sql, params in statements:
                connection.execute(text(sql), params)
            return
        triggers = connection.execute(
            text("SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name IN (:ledger, :checkpoints)"),
            dict(zip(("ledger", "checkpoints"), APPEND_ONLY, strict=True)),
        ).all()
        assert len(triggers) == 4
        for name, _ in triggers:
            connection.exec_driver_sql(f"DROP TRIGGER {name}")
        for sql, params in statements:
            connection.execute(text(sql), params)
        for _, sql in triggers:
            connection.exec_driver_sql(sql)


def verify(rt: Runtime, **options: Any) -> ledger.Verification:
    """`ledger.verify` as Accord runs it: with the key provider, so that it opens each record's evidence."""
    assert rt.db.keyring is not None
    return ledger.verify(rt.db.engine, key=rt.signing, keys=rt.db.keyring.provider, **options)


def row(rt: Runtime, seq: int) -> dict[str, Any]:
    with rt.db.engine.connect() as connection:
        found = connection.execute(text("SELECT * FROM consent_ledger WHERE seq = :seq"), {"seq": seq}).mappings()
        return dict(found.one())


def verify_api(chain: Chain) -> dict[str, Any]:
    response = chain.auditor.get("/api/v1/consent/verify")
    assert response.status_code == 200, response.text
    return dict(response.json())


def cli_verify(rt: Runtime, cwd: Path) -> tuple[int, dict[str, Any]]:
    """`accord consent verify --json` in a child process, on this test's database and signing key."""
    env = {
        **os.environ,
        "ACCORD_DATA_DIR": str(rt.settings.data_dir),
        "ACCORD_SIGNING_KEY_FILE": str(rt.settings.signing_key_path()),
    }
    if rt.settings.database_url:
        env["ACCORD_DATABASE_URL"] = rt.settings.database_url
    done = subprocess.run(
        [sys.executable, "-m", "accord", "consent", "verify", "--json"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.stdout.strip(), done.stderr
    return done.returncode, json.loads(done.stdout.strip().splitlines()[-1])


# What the attacker does. Each returns nothing; the expectations sit in TAMPERINGS below.


def flip_a_body_byte(chain: Chain) -> None:
    body = bytearray(row(chain.rt, 7)["body"])
    at = body.index(b'"status":"') + len(b'"status":"')
    body[at] ^= 0x01  # "given" -> "fiven", "refused" -> "sefused": still JSON, no longer the hashed bytes
    tamper(chain.rt, ("UPDATE consent_ledger SET body = :body WHERE seq = 7", {"body": bytes(body)}))


def edit_body_and_rehash(chain: Chain) -> None:
    parsed = orjson.loads(row(chain.rt, 7)["body"])
    parsed["status"] = "given" if parsed["status"] != "given" else "refused"
    body = rfc8785.dumps(parsed)
    tamper(
        chain.rt,
        (
            "UPDATE consent_ledger SET body = :body, hash = :hash, status = :status WHERE seq = 7",
            {"body": body, "hash": hashlib.sha256(body).hexdigest(), "status": parsed["status"]},
        ),
    )


def edit_the_status_column(chain: Chain) -> None:
    status = row(chain.rt, 7)["status"]
    tamper(
        chain.rt,
        (
            "UPDATE consent_ledger SET status = :status WHERE seq = 7",
            {"status": "given" if status != "given" else "withdrawn"},
        ),
    )


def edit_the_evidence(chain: Chain) -> None:
    # The evidence table has no trigger: erasure deletes its rows. Changing one is what verification must catch.
    with chain.rt.db.engine.begin() as connection:
        changed = connection.execute(
            text("UPDATE consent_evidence SET body = :body WHERE record_id = :id"),
            {"body": rfc8785.dumps({"ip": "198.51.100.1", "reference": "form-7"}), "id": chain.ids[7]},
        )
        assert changed.rowcount == 1


def evidence_of(chain: Chain, seq: int) -> bytes:
    with chain.rt.db.engine.connect() as connection:
        stored = connection.execute(
            text("SELECT body FROM consent_evidence WHERE record_id = :id"), {"id": chain.ids[seq]}
        ).scalar_one()
    return bytes(stored)


def store_evidence(chain: Chain, seq: int, body: bytes) -> None:
    with chain.rt.db.engine.begin() as connection:
        changed = connection.execute(
            text("UPDATE consent_evidence SET body = :body WHERE record_id = :id"), {"body": body, "id": chain.ids[seq]}
        )
        assert changed.rowcount == 1


def flip_a_sealed_evidence_byte(chain: Chain) -> None:
    sealed = evidence_of(chain, 7)
    assert sealed.startswith(f"e1.{chain.world.profile_id}.".encode())
    store_evidence(chain, 7, sealed[:-1] + bytes([sealed[-1] ^ 0x01]))


def move_sealed_evidence(chain: Chain) -> None:
    """Record 8's sealed evidence copied over record 7's: same data key, but bound to record 8."""
    store_evidence(chain, 7, evidence_of(chain, 8))


def reseal_other_evidence(chain: Chain) -> None:
    """Someone who holds the keys seals other evidence for record 7: it opens, but its digest differs."""
    with chain.rt.db.unit_of_work() as session:
        keys = DataKeys.of(session)
        other = rfc8785.dumps({"ip": "198.51.100.1", "reference": "form-7"})
        sealed = ledger.seal_evidence(keys, chain.ids[7], chain.world.profile_id, other)
    store_evidence(chain, 7, sealed)


def truncate_sealed_evidence(chain: Chain) -> None:
    store_evidence(chain, 7, evidence_of(chain, 7)[:20])


def name_a_key_nobody_has(chain: Chain) -> None:
    """Sealed-looking evidence under a key id no data key has (bytes that are not even text)."""
    store_evidence(chain, 7, b"e1.\xff\xfe-no-such-key." + evidence_of(chain, 7)[-40:])


def destroy_the_evidence_key(chain: Chain) -> None:
    """The profile's data key deleted while its evidence stays: no erasure does that (it deletes both)."""
    with chain.rt.db.engine.begin() as connection:
        connection.execute(text("DELETE FROM data_keys WHERE id = :id"), {"id": chain.world.profile_id})


def delete_a_middle_row(chain: Chain) -> None:
    tamper(chain.rt, ("DELETE FROM consent_ledger WHERE seq = 10", {}))


def append_a_forged_row(chain: Chain) -> None:
    """A well-formed record 21 chained after 20, and a head naming it: all but the MACs, which need the key."""
    last = row(chain.rt, RECORDS)
    body = {**orjson.loads(last["body"]), "seq": RECORDS + 1, "prev": last["hash"], "id": "forged-21"}
    body["status"] = "given"
    raw = rfc8785.dumps(body)
    digest = hashlib.sha256(raw).hexdigest()
    values = {
        "seq": RECORDS + 1,
        "id": "forged-21",
        "profile_id": body["profile_id"],
        "purpose": body["purpose"],
        "channel": body["channel"],
        "status": "given",
        "body": raw,
        "hash": digest,
        "mac": hashlib.sha256(digest.encode()).hexdigest(),
    }
    tamper(
        chain.rt,
        (
            "INSERT INTO consent_ledger (seq, id, profile_id, purpose, channel, status, body, hash, mac)"
            " VALUES (:seq, :id, :profile_id, :purpose, :channel, :status, :body, :hash, :mac)",
            values,
        ),
        ("UPDATE consent_chain_head SET seq = :seq, hash = :hash", {"seq": RECORDS + 1, "hash": digest}),
    )


def swap_two_rows(chain: Chain) -> None:
    five, six = row(chain.rt, 5), row(chain.rt, 6)
    swap = "UPDATE consent_ledger SET body = :body, hash = :hash, mac = :mac WHERE seq = :seq"
    tamper(
        chain.rt,
        (swap, {"body": six["body"], "hash": six["hash"], "mac": six["mac"], "seq": 5}),
        (swap, {"body": five["body"], "hash": five["hash"], "mac": five["mac"], "seq": 6}),
    )


def truncate_after_a_checkpoint(chain: Chain) -> None:
    """Sign a checkpoint at 20, then remove 18..20 and put back the head copied at 17 (its MAC is genuine)."""
    with chain.world.live.api() as admin:
        signed = admin.post("/api/v1/consent/checkpoints")
    assert signed.status_code == 201, signed.text
    assert [c["seq"] for c in signed.json()["checkpoints"]] == [RECORDS]
    old = chain.old_head
    tamper(
        chain.rt,
        ("DELETE FROM consent_ledger WHERE seq > :seq", {"seq": old["seq"]}),
        (
            "UPDATE consent_chain_head SET seq = :seq, hash = :hash, mac = :mac",
            {"seq": old["seq"], "hash": old["hash"], "mac": old["mac"]},
        ),
    )


def truncate_the_tail(chain: Chain) -> None:
    tamper(chain.rt, ("DELETE FROM consent_ledger WHERE seq > 17", {}))


def truncate_the_tail_and_the_head(chain: Chain) -> None:
    tamper(chain.rt, ("DELETE FROM consent_ledger WHERE seq > 17", {}), ("DELETE FROM consent_chain_head", {}))


def forge_a_checkpoint(chain: Chain) -> None:
    """A checkpoint of the real head, signed with a key that is not Accord's."""
    last = row(chain.rt, RECORDS)
    other = SigningKey.generate()
    signed_at = utcnow()
    payload = {"seq": RECORDS, "hash": last["hash"], "signed_at": ledger.iso(signed_at)}
    with chain.rt.db.unit_of_work() as session:  # INSERT is allowed: the ledger is append-only, not closed
        session.add(
            Checkpoint(
                seq=RECORDS,
                hash=last["hash"],
                signed_at=signed_at,
                jws=other.sign(payload, typ=ledger.CHECKPOINT_TYP),
            )
        )


def corrupt_a_checkpoint_signature(chain: Chain) -> None:
    with chain.rt.db.engine.connect() as connection:
        seq, jws = connection.execute(text("SELECT seq, jws FROM consent_checkpoints ORDER BY seq LIMIT 1")).one()
    assert seq == BATCHES[0]  # signed on its own when the first batch was recorded
    signature = jws.rsplit(".", 1)[1]
    forged = jws[: -len(signature)] + ("A" if signature[0] != "A" else "B") + signature[1:]
    tamper(chain.rt, ("UPDATE consent_checkpoints SET jws = :jws WHERE seq = :seq", {"jws": forged, "seq": seq}))


@dataclass(frozen=True)
class Tampering:
    act: Callable[[Chain], None]
    seq: int
    record: int | str | None  # the record the report names: its seq, its id, or None
    problem: str


TAMPERINGS = {
    "flipped body byte": Tampering(flip_a_body_byte, 7, 7, "body does not match its hash"),
    "body edited and rehashed": Tampering(edit_body_and_rehash, 7, 7, "MAC does not verify"),
    "status column edited": Tampering(edit_the_status_column, 7, 7, "status column differs"),
    "evidence edited": Tampering(edit_the_evidence, 7, 7, "evidence was changed"),
    "sealed evidence byte flipped": Tampering(
        flip_a_sealed_evidence_byte, 7, 7, "evidence does not open: it was altered"
    ),
    "sealed evidence moved": Tampering(move_sealed_evidence, 7, 7, "moved from another record"),
    "evidence resealed": Tampering(reseal_other_evidence, 7, 7, "evidence was changed"),
    "sealed evidence truncated": Tampering(truncate_sealed_evidence, 7, 7, "evidence does not open"),
    "evidence under an unknown key": Tampering(name_a_key_nobody_has, 7, 7, "its data key was destroyed"),
    "evidence key destroyed": Tampering(destroy_the_evidence_key, 1, 1, "its data key was destroyed"),
    "middle row deleted": Tampering(delete_a_middle_row, 10, None, "record 10 is missing"),
    "forged row appended": Tampering(append_a_forged_row, 21, "forged-21", "MAC does not verify"),
    "two rows swapped": Tampering(swap_two_rows, 5, 5, "says it is number 6"),
    "tail truncated after a checkpoint": Tampering(truncate_after_a_checkpoint, 18, None, "18..20 are missing"),
    "tail truncated, head left alone": Tampering(truncate_the_tail, 18, None, "head says 20"),
    "tail and head removed": Tampering(truncate_the_tail_and_the_head, 18, None, "head"),
    "forged checkpoint": Tampering(forge_a_checkpoint, 20, None, "checkpoint signature"),
    "corrupt checkpoint signature": Tampering(corrupt_a_checkpoint_signature, 5, None, "checkpoint signature"),
}


def test_a_clean_ledger_verifies(chain: Chain, tmp_path: Path) -> None:
    report = verify(chain.rt)
    assert report.ok, report.first_bad
    assert (report.records, report.evidence_checked, report.head_seq) == (RECORDS, RECORDS, RECORDS)
    assert report.head_hash == row(chain.rt, RECORDS)["hash"]
    assert report.checkpoints == 1  # the one signed with the first batch

    answer = verify_api(chain)
    assert answer == {
        "ok": True,
        "records": RECORDS,
        "checkpoints": 1,
        "evidence_checked": RECORDS,
        "head_seq": RECORDS,
        "head_hash": report.head_hash,
        "first_bad": None,
    }
    code, printed = cli_verify(chain.rt, tmp_path)
    assert (code, printed) == (0, answer)
    assert verify(chain.rt, workers=3, min_per_worker=1) == report


def test_verification_is_for_auditors_and_admins(chain: Chain) -> None:
    with chain.world.live.client() as anonymous:
        assert anonymous.get("/api/v1/consent/verify").status_code == 401
    with chain.rt.db.unit_of_work() as session:
        agent = create_token(session, role="agent").token
    with chain.world.live.client(headers={"Authorization": f"Bearer {agent}"}) as client:
        assert client.get("/api/v1/consent/verify").status_code == 403
        assert client.post("/api/v1/consent/checkpoints").status_code == 403
    with chain.world.live.api() as admin:
        assert admin.get("/api/v1/consent/verify").json()["ok"] is True
    assert chain.auditor.post("/api/v1/consent/checkpoints").status_code == 403


def test_erased_evidence_still_verifies(chain: Chain) -> None:
    """Erasure deletes the personal data; the chain keeps its digest and stays whole."""
    with chain.rt.db.engine.begin() as connection:
        connection.execute(text("DELETE FROM consent_evidence WHERE record_id = :id"), {"id": chain.ids[7]})
    report = verify(chain.rt)
    assert report.ok, report.first_bad
    assert (report.records, report.evidence_checked) == (RECORDS, RECORDS - 1)


def test_evidence_is_sealed_and_the_chain_verifies_without_the_keys(chain: Chain) -> None:
    """Each evidence is sealed under its profile's data key; the chain holds the digest of its plaintext, so
    without any data key the chain still verifies (the evidence is then not checked)."""
    for seq in (1, 7, RECORDS):
        sealed = evidence_of(chain, seq)
        assert sealed.startswith(f"e1.{chain.world.profile_id}.".encode())
        assert f"203.0.113.{seq}".encode() not in sealed
    with chain.rt.db.read() as session:
        shown = [evidence for _, _, evidence in service.history(session, [chain.world.profile_id])]
    assert shown[6] == {"ip": "203.0.113.7", "reference": "form-7"}
    blind = ledger.verify(chain.rt.db.engine, key=chain.rt.signing, keys=None)
    assert blind.ok, blind.first_bad
    assert (blind.records, blind.evidence_checked) == (RECORDS, 0)
    flip_a_sealed_evidence_byte(chain)
    assert ledger.verify(chain.rt.db.engine, key=chain.rt.signing, keys=None) == blind
    with chain.rt.db.read() as session:
        shown = [evidence for _, _, evidence in service.history(session, [chain.world.profile_id])]
    assert shown[6] == ledger.UNREADABLE  # a reader says so rather than fail the whole history


@pytest.mark.parametrize("tampering", TAMPERINGS.values(), ids=TAMPERINGS.keys())
def test_tampering_is_found(chain: Chain, tampering: Tampering) -> None:
    tampering.act(chain)
    report = verify(chain.rt)
    bad = report.first_bad
    assert bad is not None, "the tampering went unnoticed"
    assert bad.seq == tampering.seq, bad
    named = chain.ids[tampering.record] if isinstance(tampering.record, int) else tampering.record
    assert bad.record_id == named, bad
    assert tampering.problem in bad.problem
    answer = verify_api(chain)
    assert answer["ok"] is False
    assert answer["first_bad"] == {"seq": bad.seq, "record_id": bad.record_id, "problem": bad.problem}
    # Walked in three processes, ranges of seven records each, the report is the same.
    apart = verify(chain.rt, workers=3, min_per_worker=1)
    assert apart == report


def test_the_cli_names_the_first_bad_record(chain: Chain, tmp_path: Path) -> None:
    flip_a_body_byte(chain)
    code, printed = cli_verify(chain.rt, tmp_path)
    assert code == 1
    assert printed["ok"] is False
    assert printed["records"] == 6
    assert printed["first_bad"]["seq"] == 7
    assert printed["first_bad"]["record_id"] == chain.ids[7]
    assert "edited" in printed["first_bad"]["problem"]


def test_the_application_cannot_change_or_remove_ledger_rows(chain: Chain) -> None:
    rt = chain.rt
    attempts: list[Callable[[Any], Any]] = [
        lambda s: s.execute(update(LedgerRecord).where(LedgerRecord.seq == 7).values(status="given")),
        lambda s: s.execute(delete(LedgerRecord).where(LedgerRecord.seq == RECORDS)),
        lambda s: s.execute(delete(LedgerRecord)),
        lambda s: s.execute(update(Checkpoint).values(hash="0" * 64)),
        lambda s: s.execute(delete(Checkpoint)),
    ]
    for attempt in attempts:
        with pytest.raises(DBAPIError, match="append-only"), rt.db.unit_of_work() as session:
            attempt(session)

    # Through the ORM too: a changed or deleted mapped object fails at flush.
    def edit_mapped(session: Any) -> None:
        found = session.get(LedgerRecord, 3)
        assert found is not None
        found.purpose = "analytics"

    for orm_attempt in (edit_mapped, lambda s: s.delete(s.get(LedgerRecord, 3))):
        with pytest.raises(DBAPIError, match="append-only"), rt.db.unit_of_work() as session:
            orm_attempt(session)
    if rt.db.dialect == "postgresql":
        for table in APPEND_ONLY:
            with pytest.raises(DBAPIError, match="append-only"), rt.db.engine.begin() as connection:
                connection.execute(text(f"TRUNCATE {table} CASCADE"))
    report = verify(rt)
    assert report.ok, report.first_bad
    assert report.records == RECORDS


def test_appends_continue_the_chain_after_verification(chain: Chain) -> None:
    """Recording after a checkpoint and a verification keeps one line: no fork, no gap."""
    with chain.world.live.api() as admin:
        assert admin.post("/api/v1/consent/checkpoints").status_code == 201
        assert admin.post("/api/v1/consent/checkpoints").json() == {"checkpoints": []}
    created = chain.world.given(occurred_at=(utcnow() - timedelta(days=1)).isoformat())
    assert created["record"]["seq"] == RECORDS + 1
    assert created["record"]["prev"] == row(chain.rt, RECORDS)["hash"]
    report = verify(chain.rt)
    assert report.ok, report.first_bad
    assert (report.records, report.checkpoints) == (RECORDS + 1, 2)
