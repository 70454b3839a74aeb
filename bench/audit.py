"""Audit trail benchmark: what recording costs, what it adds to a profile read, and verification time.

(a) Appends: `record_audit` calls, each in its own unit of work (as an audited change or read records
    one): appends per second and latency per append, commit included.
(b) Reads over HTTP, against `accord up` with --profiles identified people: GET /api/v1/profiles/{ref}
    (a read of personal data: answered after its audit record commits) against
    GET /api/v1/profiles/{ref}/merges (a read of the same person that is not audited), one client,
    in turn; latency percentiles of each.
(c) Verify: a chain of --records records built with `record_audit` in large transactions, then
    `audit.verify` walks it (hash, order, mirrored columns, MAC, checkpoints, head).

    .venv/bin/python bench/audit.py                 # full size, embedded SQLite
    .venv/bin/python bench/audit.py --smoke         # a few seconds, for CI
    .venv/bin/python bench/audit.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres

The last line of the output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common
from accord.audit import service as audit


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--appends", type=int, default=2_000, help="record_audit calls, one transaction each")
    parser.add_argument("--reads", type=int, default=2_000, help="reads of each kind over HTTP")
    parser.add_argument("--profiles", type=int, default=1_000, help="people to read (default 1,000)")
    parser.add_argument("--records", type=int, default=1_000_000, help="chain length to verify (default 1,000,000)")
    parser.add_argument("--chunk", type=int, default=10_000, help="records per transaction while building the chain")
    parser.add_argument(
        "--database-url", default=None, help="default: embedded SQLite; a PostgreSQL URL names the server"
    )
    parser.add_argument(
        "--sqlite-synchronous", default=common.default_synchronous(), help="ACCORD_SQLITE_SYNCHRONOUS for SQLite"
    )
    parser.add_argument("--parts", default="append,read,verify", help="what to run (default append,read,verify)")
    parser.add_argument("--tmp", default=None, help="where temp data dirs go (default: the system temp dir)")
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: finishes in a few seconds")
    args = parser.parse_args(argv)
    if args.smoke:
        args.appends, args.reads, args.profiles = min(args.appends, 50), min(args.reads, 50), min(args.profiles, 20)
        args.records, args.chunk = min(args.records, 2_000), min(args.chunk, 1_000)
    if min(args.appends, args.reads, args.profiles, args.records, args.chunk) < 1:
        parser.error("sizes must be positive")
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if not args.parts or not set(args.parts) <= {"append", "read", "verify"}:
        parser.error("--parts takes append, read, verify")
    return args


def _ms(values: list[float]) -> dict[str, float | None]:
    return {k: None if v is None else round(v, 2) for k, v in common.percentiles(values).items()}


def _actor(rng: random.Random) -> audit.Actor:
    return audit.Actor(
        "token", f"tok_{rng.randrange(16):016x}", "agent", f"10.0.{rng.randrange(256)}.{rng.randrange(256)}"
    )


def run_append(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    with (
        common.temp_dir("accord-bench-audit-append-", args.tmp) as data_dir,
        common.scratch_store(args.database_url, data_dir, "audit_append") as url,
    ):
        rt = common.open_runtime(url, args.sqlite_synchronous, data_dir)
        try:
            latencies: list[float] = []
            began = time.perf_counter()
            for _ in range(args.appends):
                sent = time.perf_counter()
                with rt.db.unit_of_work() as session:
                    audit.record_audit(
                        session,
                        key=rt.signing,
                        actor=_actor(rng),
                        action="profile.read",
                        target_type="profile",
                        target_id=f"{rng.getrandbits(128):032x}",
                    )
                latencies.append((time.perf_counter() - sent) * 1000)
            seconds = time.perf_counter() - began
            report = audit.verify(rt.db.engine, key=rt.signing)
        finally:
            rt.close()
    return {
        "appends": args.appends,
        "seconds": round(seconds, 3),
        "appends_per_s": round(args.appends / seconds) if seconds > 0 else 0,
        "append_ms": _ms(latencies),
        "verified": report.ok and report.records == args.appends,
    }


def run_read(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    with (
        common.temp_dir("accord-bench-audit-read-", args.tmp) as data_dir,
        common.scratch_store(args.database_url, data_dir, "audit_read") as url,
        common.Accord(data_dir, url if common.is_postgres(url) else None, args.sqlite_synchronous) as accord,
    ):
        accord.start("up")
        write_key = accord.cli("source", "create", "bench")["write_key"]
        token = accord.cli("token", "create", "--role", "admin")["token"]
        users = [f"reader-{i}" for i in range(args.profiles)]
        with httpx.Client(base_url=accord.base_url, timeout=30) as client:
            for chunk in common.batches(
                [{"type": "identify", "userId": u, "traits": {"plan": "gold"}} for u in users], 100
            ):
                client.post("/v1/batch", auth=(write_key, ""), json={"batch": chunk}).raise_for_status()
            api = {"Authorization": f"Bearer {token}"}
            deadline = time.monotonic() + 120
            while client.get(f"/api/v1/profiles/user_id:{users[-1]}", headers=api).status_code != 200:
                if time.monotonic() > deadline:
                    raise RuntimeError("the profiles did not appear within 120 s")
                time.sleep(0.05)
            timings: dict[str, list[float]] = {"audited": [], "unaudited": []}
            for _ in range(args.reads):
                user = rng.choice(users)
                for kind, path in (("audited", ""), ("unaudited", "/merges")):
                    sent = time.perf_counter()
                    client.get(f"/api/v1/profiles/user_id:{user}{path}", headers=api).raise_for_status()
                    timings[kind].append((time.perf_counter() - sent) * 1000)
            found = client.get("/api/v1/audit", params={"action": "profile.read", "limit": 1}, headers=api).json()
    return {
        "reads": args.reads,
        "profiles": args.profiles,
        "audited_ms": _ms(timings["audited"]),
        "unaudited_ms": _ms(timings["unaudited"]),
        "audit_records": found["records"][0]["seq"] if found["records"] else 0,
    }


def run_verify(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    with (
        common.temp_dir("accord-bench-audit-verify-", args.tmp) as data_dir,
        common.scratch_store(args.database_url, data_dir, "audit_verify") as url,
    ):
        rt = common.open_runtime(url, args.sqlite_synchronous, data_dir)
        try:
            began = time.perf_counter()
            written = 0
            while written < args.records:
                with rt.db.unit_of_work() as session:
                    for _ in range(min(args.chunk, args.records - written)):
                        audit.record_audit(
                            session,
                            key=rt.signing,
                            actor=_actor(rng),
                            action="profile.read",
                            target_type="profile",
                            target_id=f"{rng.getrandbits(128):032x}",
                            now=datetime.now(UTC),
                        )
                        written += 1
            build_s = time.perf_counter() - began
            began = time.perf_counter()
            report = audit.verify(rt.db.engine, key=rt.signing)
            verify_s = time.perf_counter() - began
        finally:
            rt.close()
    return {
        "records": args.records,
        "build_seconds": round(build_s, 3),
        "verify_seconds": round(verify_s, 3),
        "records_per_s": round(args.records / verify_s) if verify_s > 0 else 0,
        "ok": report.ok,
        "checkpoints": report.checkpoints,
        "verified_records": report.records,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = {
        "appends": args.appends,
        "reads": args.reads,
        "profiles": args.profiles,
        "records": args.records,
        "chunk": args.chunk,
        "parts": ",".join(args.parts),
    }
    info = common.header("Accord audit trail benchmark: appends, audited reads, verification", args, settings)
    payload: dict[str, Any] = {"benchmark": "audit", "machine": info, "settings": settings}
    failures: list[str] = []
    if "append" in args.parts:
        a = payload["append"] = run_append(args)
        lat = a["append_ms"]
        print(
            f"\nappends (record_audit, one transaction each): {a['appends']:,} in {a['seconds']:.2f} s = "
            f"{a['appends_per_s']:,}/s; per append ms: p50 {lat['p50']}, p95 {lat['p95']}, p99 {lat['p99']}"
        )
        if not a["verified"]:
            failures.append("append: the trail did not verify")
    if "read" in args.parts:
        r = payload["read"] = run_read(args)
        on, off = r["audited_ms"], r["unaudited_ms"]
        print(
            f"\nreads over HTTP, one client ({r['reads']:,} of each, {r['profiles']:,} people)\n"
            f"  GET /api/v1/profiles/{{ref}} (audited):        p50 {on['p50']} ms, p95 {on['p95']}, p99 {on['p99']}\n"
            f"  GET /api/v1/profiles/{{ref}}/merges (not):     p50 {off['p50']} ms, p95 {off['p95']}, p99 {off['p99']}"
        )
        if r["audit_records"] < r["reads"]:
            failures.append(f"read: {r['audit_records']} audit records for {r['reads']} reads")
    if "verify" in args.parts:
        v = payload["verify"] = run_verify(args)
        print(
            f"\nverify: built {v['records']:,} records in {v['build_seconds']:.1f} s; audit.verify walked "
            f"{v['verified_records']:,} in {v['verify_seconds']:.2f} s = {v['records_per_s']:,} records/s "
            f"({v['checkpoints']} checkpoints) {'ok' if v['ok'] else 'FAILED'}"
        )
        if not v["ok"] or v["verified_records"] != v["records"]:
            failures.append("verify: the chain did not verify")
    common.print_json_line(payload)
    for failure in failures:
        print(failure, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
