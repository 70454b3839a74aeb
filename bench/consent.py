"""Consent ledger benchmark: signed appends per second, and the time to verify a long chain.

(a) Appends: consent statements recorded through `accord.consent.service.record`, each call in its own
    unit of work, as the REST API records them: validated against the catalogue (a purpose and a
    notice), chained with a MAC, projected into the current state, a receipt signed (JWS Ed25519) and
    a checkpoint signed every ACCORD_CONSENT_CHECKPOINT_RECORDS records. Once with one statement per
    transaction (appends/s and latency per append, commit included), once with batches of statements.
(b) Verify: a chain of --records records is built with `accord.consent.ledger.append` (the function
    `record` chains with) in large transactions, every record with evidence and a checkpoint signed
    as often as Accord signs them; then `ledger.verify` walks it all (hash, order, mirrored columns,
    MAC, evidence opened with its data key and compared with its digest, checkpoint signatures, head)
    and must report it intact.

    .venv/bin/python bench/consent.py                # full size, embedded SQLite
    .venv/bin/python bench/consent.py --smoke        # a few seconds, for CI
    .venv/bin/python bench/consent.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres

The last line of the output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, text

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common
from accord.config import Settings
from accord.consent import catalogue, ledger, service
from accord.consent.models import Checkpoint, ConsentState, Receipt
from accord.consent.service import NoticeRef, Statement
from accord.runtime import Runtime

TARGET_VERIFY_S = 10.0  # for 1,000,000 records
TARGET_RECORDS = 1_000_000
PURPOSE = "marketing.email"
CHANNEL = "email"
NOTICE = "privacy"
NOTICE_TEXT = "We use your email address to send you offers and news. You can withdraw at any time."
STATUSES = ("given", "given", "withdrawn", "refused", "renewed")  # given most often, as in practice
METHODS = ("form", "banner", "preference_centre", "double_opt_in")
ACTOR = {"type": "customer", "id": None}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--records", type=int, default=TARGET_RECORDS, help="chain length to verify (default 1,000,000)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="processes that walk the chain, as `accord consent verify` (default: one per core)",
    )
    parser.add_argument(
        "--appends",
        type=int,
        default=2_000,
        help="single-statement record() calls, one transaction each (default 2,000)",
    )
    parser.add_argument("--batched", type=int, default=20_000, help="statements recorded in batches (default 20,000)")
    parser.add_argument(
        "--batch-size", type=int, default=100, help="statements per batched record() call (default 100)"
    )
    parser.add_argument(
        "--chunk", type=int, default=10_000, help="records per transaction while building the chain (default 10,000)"
    )
    parser.add_argument("--profiles", type=int, default=10_000, help="people the statements are about (default 10,000)")
    parser.add_argument(
        "--database-url",
        default=None,
        help="default: embedded SQLite in a temp dir. A PostgreSQL URL names the server: each part gets a "
        "scratch database created through it and dropped afterwards",
    )
    parser.add_argument(
        "--sqlite-synchronous", default=common.default_synchronous(), help="ACCORD_SQLITE_SYNCHRONOUS for SQLite"
    )
    parser.add_argument("--parts", default="append,verify", help="what to run (default append,verify)")
    parser.add_argument("--tmp", default=None, help="where temp data dirs go (default: the system temp dir)")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: finishes in a few seconds")
    args = parser.parse_args(argv)
    if args.smoke:
        args.records, args.appends, args.batched = (
            min(args.records, 5_000),
            min(args.appends, 50),
            min(args.batched, 500),
        )
        args.chunk, args.profiles = min(args.chunk, 2_000), min(args.profiles, 100)
    if min(args.records, args.appends, args.batched, args.batch_size, args.chunk, args.profiles) < 1:
        parser.error("sizes must be positive")
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if not args.parts or not set(args.parts) <= {"append", "verify"}:
        parser.error("--parts takes append, verify")
    return args


# -- the store -----------------------------------------------------------------------------------
def setup_catalogue(rt: Runtime, now: datetime) -> NoticeRef:
    """The purpose and notice every statement names; returns the notice."""
    with rt.db.unit_of_work() as session:
        catalogue.put_purpose(
            session,
            key=PURPOSE,
            name="Marketing email",
            description="",
            legal_basis="consent",
            expires_after_days=None,
            channels=[CHANNEL],
            now=now,
        )
        notice = catalogue.add_notice_version(
            session,
            key=NOTICE,
            language="en",
            title="Privacy notice",
            text=NOTICE_TEXT,
            purposes=[PURPOSE],
            url="https://shop.example.com/privacy",
            now=now,
        )
        return NoticeRef(notice.key, notice.version, notice.language)


def profile_pool(rng: random.Random, n: int) -> list[str]:
    return [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(n)]


def evidence(rng: random.Random) -> dict[str, Any]:
    """What a web form's statement carries as proof: personal data, kept outside the chain."""
    return {
        "ip": f"203.0.113.{rng.randrange(1, 255)}",
        "user_agent": rng.choice(common.AGENTS),
        "form": "newsletter-signup",
        "page": "https://shop.example.com/account/preferences",
    }


def statement(rng: random.Random, notice: NoticeRef) -> Statement:
    return Statement(
        purpose=PURPOSE,
        channel=CHANNEL,
        status=rng.choice(STATUSES),
        method=rng.choice(METHODS),
        notice=notice,
        evidence=evidence(rng),
        source="bench",
    )


def verify_store(rt: Runtime, workers: int = 1) -> tuple[ledger.Verification, float]:
    keys = None if rt.db.keyring is None else rt.db.keyring.provider  # the evidence is sealed: opened to compare
    began = time.perf_counter()
    report = ledger.verify(rt.db.engine, key=rt.signing, keys=keys, workers=workers)
    return report, time.perf_counter() - began


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children: what the walk cost, whatever the load."""
    mine, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return mine.ru_utime + mine.ru_stime + children.ru_utime + children.ru_stime


def report_dict(report: ledger.Verification) -> dict[str, Any]:
    bad = report.first_bad
    return {
        "ok": report.ok,
        "records": report.records,
        "checkpoints": report.checkpoints,
        "evidence_checked": report.evidence_checked,
        "head_seq": report.head_seq,
        "first_bad": None if bad is None else {"seq": bad.seq, "record_id": bad.record_id, "problem": bad.problem},
    }


def counts(rt: Runtime) -> dict[str, int]:
    with rt.db.read() as session:
        return {
            "receipts": int(session.scalar(select(func.count()).select_from(Receipt)) or 0),
            "states": int(session.scalar(select(func.count()).select_from(ConsentState)) or 0),
            "checkpoints": int(session.scalar(select(func.count()).select_from(Checkpoint)) or 0),
        }


# -- (a) appends through service.record ----------------------------------------------------------
def run_append(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    with (
        common.temp_dir("accord-bench-consent-append-", args.tmp) as data_dir,
        common.scratch_store(args.database_url, data_dir, "consent_append") as url,
    ):
        rt = common.open_runtime(url, args.sqlite_synchronous, data_dir)
        try:
            notice = setup_catalogue(rt, datetime.now(UTC))
            profiles = profile_pool(rng, args.profiles)
            plan = [(rng.choice(profiles), statement(rng, notice)) for _ in range(args.appends)]

            latencies: list[float] = []
            began = time.perf_counter()
            for pair in plan:
                sent = time.perf_counter()
                with rt.db.unit_of_work() as session:
                    service.record(
                        session, [pair], actor=ACTOR, key=rt.signing, settings=rt.settings, now=datetime.now(UTC)
                    )
                latencies.append((time.perf_counter() - sent) * 1000)
            single_s = time.perf_counter() - began

            batches = [
                [(rng.choice(profiles), statement(rng, notice)) for _ in range(min(args.batch_size, args.batched - i))]
                for i in range(0, args.batched, args.batch_size)
            ]
            batch_latencies: list[float] = []
            began = time.perf_counter()
            for batch in batches:
                sent = time.perf_counter()
                with rt.db.unit_of_work() as session:
                    service.record(
                        session, batch, actor=ACTOR, key=rt.signing, settings=rt.settings, now=datetime.now(UTC)
                    )
                batch_latencies.append((time.perf_counter() - sent) * 1000)
            batched_s = time.perf_counter() - began

            report, verify_s = verify_store(rt)
            stored = counts(rt)
        finally:
            rt.close()
    single = common.percentiles(latencies)
    per_batch = common.percentiles(batch_latencies)
    return {
        "single": {
            "appends": args.appends,
            "seconds": round(single_s, 3),
            "appends_per_s": round(args.appends / single_s) if single_s > 0 else 0,
            "append_ms": {k: None if v is None else round(v, 2) for k, v in single.items()},
        },
        "batched": {
            "statements": args.batched,
            "batch_size": args.batch_size,
            "calls": len(batches),
            "seconds": round(batched_s, 3),
            "appends_per_s": round(args.batched / batched_s) if batched_s > 0 else 0,
            "call_ms": {k: None if v is None else round(v, 2) for k, v in per_batch.items()},
        },
        "profiles": args.profiles,
        **stored,
        "verify": {**report_dict(report), "seconds": round(verify_s, 3)},
    }


# -- (b) verify a long chain ---------------------------------------------------------------------
def chain_entries(rng: random.Random, profiles: list[str], notice: dict[str, Any], n: int) -> list[ledger.Entry]:
    """`n` entries as `service.record` builds them (same fields, evidence on every one), without its
    per-statement validation and receipts."""
    now = datetime.now(UTC)
    entries = []
    for _ in range(n):
        method = rng.choice(METHODS)
        entries.append(
            ledger.Entry(
                id=str(uuid.uuid4()),
                profile_id=rng.choice(profiles),
                purpose=PURPOSE,
                channel=CHANNEL,
                status=rng.choice(STATUSES),
                occurred_at=now,
                expires_at=None,
                fields={
                    "legal_basis": "consent",
                    "method": method,
                    "actor": ACTOR,
                    "notice": notice,
                    "source": "bench",
                    "tcf": None,
                },
                evidence=evidence(rng),
            )
        )
    return entries


def build_chain(rt: Runtime, args: argparse.Namespace) -> dict[str, Any]:
    """Append --records entries in transactions of --chunk, signing a checkpoint every
    ACCORD_CONSENT_CHECKPOINT_RECORDS records as `service.record` would."""
    rng = random.Random(args.seed + 1)
    now = datetime.now(UTC)
    ref = setup_catalogue(rt, now)
    with rt.db.read() as session:
        row = catalogue.get_notice(session, ref.key, ref.version, ref.language)
        assert row is not None
        notice = {
            "key": row.key,
            "version": row.version,
            "language": row.language,
            "sha256": row.sha256,
            "url": row.url,
        }
    profiles = profile_pool(rng, args.profiles)
    every = rt.settings.consent_checkpoint_records
    checkpoints = 0
    began = time.perf_counter()
    for start in range(0, args.records, args.chunk):
        entries = chain_entries(rng, profiles, notice, min(args.chunk, args.records - start))
        with rt.db.unit_of_work() as session:
            for offset in range(0, len(entries), every):
                moment = datetime.now(UTC)
                ledger.append(session, entries[offset : offset + every], key=rt.signing, now=moment)
                if ledger.checkpoint(session, key=rt.signing, now=moment) is not None:
                    checkpoints += 1
    seconds = time.perf_counter() - began
    return {
        "records": args.records,
        "chunk": args.chunk,
        "checkpoint_every": every,
        "checkpoints": checkpoints,
        "seconds": round(seconds, 3),
        "records_per_s": round(args.records / seconds) if seconds > 0 else 0,
    }


def run_verify(args: argparse.Namespace) -> dict[str, Any]:
    with (
        common.temp_dir("accord-bench-consent-verify-", args.tmp) as data_dir,
        common.scratch_store(args.database_url, data_dir, "consent_verify") as url,
    ):
        rt = common.open_runtime(url, args.sqlite_synchronous, data_dir)
        try:
            build = build_chain(rt, args)
            store_mib = _store_mib(rt, url)
        finally:
            rt.close()
        # Verify as `accord consent verify` would: a fresh process's engine, the OS cache warm from the build.
        rt = common.open_runtime(url, args.sqlite_synchronous, data_dir)
        try:
            cpu = cpu_seconds()
            report, seconds = verify_store(rt, workers=args.workers)
            cpu = cpu_seconds() - cpu
        finally:
            rt.close()
    return {
        "build": build,
        "store_mib": store_mib,
        "workers": args.workers,
        "seconds": round(seconds, 3),
        "cpu_seconds": round(cpu, 3),
        "records_per_s": round(report.records / seconds) if seconds > 0 else 0,
        "report": report_dict(report),
    }


def _store_mib(rt: Runtime, url: str) -> float | None:
    with rt.db.read() as session:
        if common.is_postgres(url):
            size = session.scalar(text("SELECT pg_database_size(current_database())"))
        else:
            size = session.scalar(text("SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()"))
    return None if size is None else round(int(size) / 1024 / 1024, 1)


# -- report --------------------------------------------------------------------------------------
def expected_checkpoints(records: int, chunk: int, every: int) -> int:
    """Checkpoints build_chain signs: one per `every` records within each transaction of `chunk`."""
    full, rest = divmod(records, chunk)
    return full * -(-chunk // every) + -(-rest // every)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = {
        "records": args.records,
        "workers": args.workers,
        "appends": args.appends,
        "batched": args.batched,
        "batch_size": args.batch_size,
        "chunk": args.chunk,
        "profiles": args.profiles,
        "checkpoint_every": Settings().consent_checkpoint_records,
    }
    info = common.header(
        "Accord consent ledger benchmark: signed appends per second, chain verification", args, settings
    )

    payload: dict[str, Any] = {"benchmark": "consent", "machine": info, "settings": settings}
    failures: list[str] = []
    if "append" in args.parts:
        a = payload["append"] = run_append(args)
        s, b, v = a["single"], a["batched"], a["verify"]
        lat = s["append_ms"]
        print(
            f"\nappends through service.record (validate, chain + MAC, project, sign a receipt; one transaction each)\n"
            f"  single: {s['appends']:,} statements in {s['seconds']:.2f} s = {s['appends_per_s']:,} appends/s; "
            f"per append ms: p50 {lat['p50']}, p95 {lat['p95']}, p99 {lat['p99']}, max {lat['max']}\n"
            f"  batched: {b['statements']:,} statements in {b['calls']:,} calls of {b['batch_size']} in "
            f"{b['seconds']:.2f} s = {b['appends_per_s']:,} appends/s; per call ms: p50 {b['call_ms']['p50']}, "
            f"p99 {b['call_ms']['p99']}\n"
            f"  {a['receipts']:,} receipts, {a['states']:,} states ({a['profiles']:,} profiles), "
            f"{a['checkpoints']} checkpoints; verify: {'ok' if v['ok'] else 'FAILED'} "
            f"({v['records']:,} records in {v['seconds']:.2f} s)"
        )
        total = s["appends"] + b["statements"]
        if not v["ok"] or v["records"] != total or a["receipts"] != total:
            failures.append(f"append: the ledger of {total} statements did not verify: {v}")
    if "verify" in args.parts:
        r = payload["verify"] = run_verify(args)
        build, report = r["build"], r["report"]
        print(
            f"\nverify (ledger.verify over a chain built with ledger.append, evidence on every record)\n"
            f"  build: {build['records']:,} records in transactions of {build['chunk']:,}, a checkpoint every "
            f"{build['checkpoint_every']:,}: {build['seconds']:.2f} s = {build['records_per_s']:,} records/s; "
            f"store {r['store_mib']} MiB\n"
            f"  verify: {report['records']:,} records, {report['evidence_checked']:,} evidence digests, "
            f"{report['checkpoints']:,} checkpoints in {r['seconds']:.2f} s = {r['records_per_s']:,} records/s "
            f"({r['workers']} processes as `accord consent verify` uses here; {r['cpu_seconds']:.2f} s of CPU): "
            f"{'ok' if report['ok'] else 'FAILED: ' + str(report['first_bad'])}"
        )
        if args.records == TARGET_RECORDS:
            verdict = "met" if r["seconds"] < TARGET_VERIFY_S else "NOT met"
            print(f"  target: verify {TARGET_RECORDS:,} records in < {TARGET_VERIFY_S:g} s: {verdict}")
        wanted = expected_checkpoints(args.records, args.chunk, build["checkpoint_every"])
        if (
            not report["ok"]
            or report["records"] != args.records
            or report["evidence_checked"] != args.records
            or report["checkpoints"] != wanted
        ):
            failures.append(f"verify: expected {args.records} intact records and {wanted} checkpoints, got {report}")
    payload["targets"] = {"verify_records": TARGET_RECORDS, "verify_s": TARGET_VERIFY_S}
    common.print_json_line(payload)
    for failure in failures:
        print(f"FAILED {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
