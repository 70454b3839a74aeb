"""End-to-end benchmark: events processed per second, and acknowledgement-to-visible latency.

(a) Throughput: a backlog of Segment calls from a realistic mix of customers (1-3 devices each,
    most of them logging in, so anonymous profiles merge into known ones) is written to the event
    log of a fresh store, then a pipeline worker drains it; events/s is events over drain time.
(b) Latency: a real `accord up` runs as a subprocess and is offered a steady load (batches of 10
    every 10 ms = 1,000 events/s, open loop). Some batches carry a probe: an identify that sets a
    unique trait value on a known user. From the moment the POST is acknowledged, the probe's
    profile is polled through GET /api/v1/profiles/user_id:... until the value shows.

    .venv/bin/python bench/e2e.py                    # full size, embedded SQLite
    .venv/bin/python bench/e2e.py --smoke            # a few seconds, for CI

The last line of the output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
import uuid
from collections import deque
from concurrent.futures import Future
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
from sqlalchemy import func, select

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common
from accord.config import Settings
from accord.identity.models import Identity, Merge
from accord.ingest.models import QuarantinedEvent
from accord.ingest.spec import normalise_request
from accord.log.port import NewRecord
from accord.log.sql import SqlEventLog
from accord.pipeline.worker import Worker
from accord.profiles.models import Profile, ProfileEvent
from accord.runtime import Runtime
from accord.sources.service import create_source

TARGET_EVENTS_PER_S = 10_000
TARGET_P99_MS = 50.0
RECORD_EVENTS = 100  # events per log record in the backlog, as /v1/batch with batches of 100 writes them


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=50_000, help="backlog size for throughput (default 50,000)")
    parser.add_argument("--customers", type=int, default=5_000, help="people behind the events (default 5,000)")
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="0 (default): drain in this process with Worker.drain(); N: run N `accord worker` subprocesses",
    )
    parser.add_argument("--rate", type=int, default=1_000, help="offered load for latency, events/s (default 1,000)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of offered load (default 30)")
    parser.add_argument("--batch", type=int, default=10, help="events per request under load (default 10)")
    parser.add_argument("--probes-per-s", type=float, default=20.0, help="probe events per second (default 20)")
    parser.add_argument("--poll-ms", type=float, default=2.0, help="pause between polls of a probe (default 2)")
    parser.add_argument("--probe-timeout", type=float, default=10.0, help="seconds before a probe counts as unseen")
    parser.add_argument(
        "--database-url",
        default=None,
        help="default: embedded SQLite in a temp dir. A PostgreSQL URL names the server: each part gets a "
        "scratch database created through it and dropped afterwards",
    )
    parser.add_argument(
        "--sqlite-synchronous", default=common.default_synchronous(), help="ACCORD_SQLITE_SYNCHRONOUS for SQLite"
    )
    parser.add_argument("--parts", default="throughput,latency", help="what to run (default throughput,latency)")
    parser.add_argument("--tmp", default=None, help="where temp data dirs go (default: the system temp dir)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: finishes in a few seconds")
    args = parser.parse_args(argv)
    if args.smoke:
        args.events, args.customers = min(args.events, 2_000), min(args.customers, 200)
        args.duration = min(args.duration, 2.0)
    if min(args.events, args.customers, args.rate, args.batch) < 1 or args.duration <= 0 or args.probes_per_s <= 0:
        parser.error("sizes, rates and durations must be positive")
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if not args.parts or not set(args.parts) <= {"throughput", "latency"}:
        parser.error("--parts takes throughput, latency")
    return args


# -- (a) throughput ------------------------------------------------------------------------------
def write_backlog(
    log: SqlEventLog, source_id: str, calls: list[dict[str, Any]], per_record: int = RECORD_EVENTS
) -> None:
    inflight: deque[Future[None]] = deque()
    for chunk in common.batches(calls, per_record):
        received_at = datetime.now(UTC)
        events = normalise_request({"batch": chunk}, endpoint="batch", received_at=received_at, client_ip="127.0.0.1")
        inflight.append(log.submit(NewRecord(source_id, received_at, events)))
        if len(inflight) >= 8:
            inflight.popleft().result(timeout=60)
    for future in inflight:
        future.result(timeout=60)


def store_counts(rt: Runtime) -> dict[str, int]:
    with rt.db.read() as session:

        def count(query: Any) -> int:
            return int(session.scalar(query) or 0)

        return {
            "profiles": count(select(func.count()).select_from(Profile).where(Profile.merged_into.is_(None))),
            "profiles_merged_away": count(
                select(func.count()).select_from(Profile).where(Profile.merged_into.isnot(None))
            ),
            "identities": count(select(func.count()).select_from(Identity)),
            "merges": count(select(func.count()).select_from(Merge)),
            "events_stored": count(select(func.count()).select_from(ProfileEvent)),
            "quarantined": count(select(func.count()).select_from(QuarantinedEvent)),
            "pending": rt.log.pending(),
        }


def run_throughput(args: argparse.Namespace) -> dict[str, Any]:
    calls = common.customer_journeys(random.Random(args.seed), args.events, args.customers)
    settings = Settings()
    with (
        common.temp_dir("accord-bench-e2e-", args.tmp) as data_dir,
        common.scratch_store(args.database_url, data_dir, "e2e") as url,
    ):
        rt = common.open_runtime(url, args.sqlite_synchronous, data_dir)  # the keys the workers will read
        db, log = rt.db, rt.log
        try:
            with db.unit_of_work() as session:
                source_id = create_source(session, name="bench").id
            write_backlog(log, source_id, calls)
            if args.workers:
                handled, seconds = common.drain_with_subprocesses(
                    args.workers, data_dir, url, args.sqlite_synchronous, log, len(calls)
                )
                how = f"{args.workers} `accord worker` subprocess(es)"
            else:
                common.as_accord_worker(rt)
                worker = Worker(
                    db=db,
                    log=log,
                    batch_size=settings.worker_batch_size,
                    max_batch_size=settings.worker_max_batch_size,
                )
                began = time.monotonic()
                handled = worker.drain(max_runs=len(calls) + 10)
                rt.log.delete_acknowledged()  # the last acknowledgements wait for the disk
                seconds = time.monotonic() - began
                how = (
                    f"Worker.drain() in-process, runs of {settings.worker_batch_size} events doubling up to "
                    f"{settings.worker_max_batch_size} while the backlog lasts"
                )
            counts = store_counts(rt)
        finally:
            rt.close()
    return {
        "events": len(calls),
        "customers": args.customers,
        "handled": handled,
        "seconds": round(seconds, 3),
        "events_per_s": round(handled / seconds) if seconds > 0 else 0,
        "drained_by": how,
        **counts,
    }


# -- (b) latency ---------------------------------------------------------------------------------
def run_latency(args: argparse.Namespace) -> dict[str, Any]:
    with (
        common.temp_dir("accord-bench-latency-", args.tmp) as data_dir,
        common.scratch_store(args.database_url, data_dir, "latency") as url,
    ):
        server = common.Accord(
            data_dir=data_dir,
            database_url=url if common.is_postgres(url) else None,
            sqlite_synchronous=args.sqlite_synchronous,
        )
        write_key = server.cli("source", "create", "bench")["write_key"]
        token = server.cli("token", "create", "--role", "admin")["token"]
        with server:
            server.start("up")
            result = asyncio.run(_offer_load(args, server.base_url, write_key, token))
            rt = common.open_runtime(url, args.sqlite_synchronous, data_dir)
            try:
                result["pending_at_end"] = rt.log.pending()
            finally:
                rt.close()
    return result


def _probe(rng: random.Random, user_id: str, value: str) -> dict[str, Any]:
    call = common.event(rng, "identify", at=datetime.now(UTC), user_id=user_id, traits={"bench_probe": value})
    call["traits"].update(plan="pro")
    return call


async def _offer_load(args: argparse.Namespace, base_url: str, write_key: str, token: str) -> dict[str, Any]:
    rng = random.Random(args.seed)
    batches_per_s = args.rate / args.batch
    n_batches = max(1, round(args.duration * batches_per_s))
    interval = 1.0 / batches_per_s
    probe_every = max(1, round(batches_per_s / args.probes_per_s))
    probe_users = [f"probe-{i:04d}" for i in range(200)]
    background = common.customer_journeys(rng, n_batches * args.batch, max(1, min(args.customers, n_batches)))
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    ingest = httpx.AsyncClient(base_url=base_url, auth=(write_key, ""), timeout=30, limits=limits)
    api = httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30, limits=limits)
    acks: list[float] = []
    gets: list[float] = []
    visible: list[float] = []
    unseen = errors = 0
    loop = asyncio.get_running_loop()

    async def post(calls: list[dict[str, Any]]) -> float | None:
        nonlocal errors
        body = orjson.dumps({"batch": calls, "sentAt": common.iso(datetime.now(UTC))})
        sent = loop.time()
        try:
            response = await ingest.post("/v1/batch", content=body, headers={"Content-Type": "application/json"})
        except httpx.HTTPError:
            errors += 1
            return None
        acked = loop.time()
        if response.status_code != 200:
            errors += 1
            return None
        acks.append((acked - sent) * 1000)
        return acked

    async def watch(user_id: str, value: str, acked: float) -> None:
        nonlocal unseen
        deadline = acked + args.probe_timeout
        for _ in range(int(args.probe_timeout * 1000 / max(args.poll_ms, 0.1)) + 1):
            asked = loop.time()
            response = await api.get(f"/api/v1/profiles/user_id:{user_id}")
            now = loop.time()
            gets.append((now - asked) * 1000)
            if response.status_code == 200 and response.json()["traits"].get("bench_probe") == value:
                visible.append((now - acked) * 1000)
                return
            if now > deadline:
                break
            await asyncio.sleep(args.poll_ms / 1000)
        unseen += 1

    async def send(index: int) -> None:
        calls = background[index * args.batch : (index + 1) * args.batch]
        probe = None
        if index % probe_every == 0:
            probe = (probe_users[(index // probe_every) % len(probe_users)], uuid.uuid4().hex)
            calls = [*calls[:-1], _probe(rng, *probe)]
        acked = await post(calls)
        if probe is not None and acked is not None:
            await watch(*probe, acked)

    try:
        await _warm_up(ingest, api, rng, probe_users)
        tasks: set[asyncio.Task[None]] = set()
        started = loop.time() + 0.05
        lateness = 0.0
        for index in range(n_batches):
            due = started + index * interval
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                lateness = max(lateness, -delay)
            tasks.add(asyncio.create_task(send(index)))
        offered_seconds = loop.time() - started + interval
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=args.probe_timeout + 60)
    finally:
        await ingest.aclose()
        await api.aclose()
    pct = common.percentiles(visible)
    ack = common.percentiles(acks)
    get = common.percentiles(gets)
    return {
        "offered_per_s": args.rate,
        "achieved_per_s": round(n_batches * args.batch / offered_seconds),
        "duration_s": args.duration,
        "batch": args.batch,
        "max_send_lateness_ms": round(lateness * 1000, 2),
        "probes": len(visible) + unseen,
        "samples": len(visible),
        "unseen": unseen,
        "errors": errors,
        "poll_ms": args.poll_ms,
        **{f"{k}_ms": None if v is None else round(v, 2) for k, v in pct.items()},
        "ack_ms": {k: None if v is None else round(v, 2) for k, v in ack.items()},
        "profile_get_ms": {k: None if v is None else round(v, 2) for k, v in get.items()},
        "profile_gets": len(gets),
    }


async def _warm_up(
    ingest: httpx.AsyncClient, api: httpx.AsyncClient, rng: random.Random, probe_users: list[str]
) -> None:
    """Create the probe users' profiles and wait until the API shows them all (bounded)."""
    calls = [_probe(rng, user, "warm-up") for user in probe_users]
    for chunk in common.batches(calls, 100):
        response = await ingest.post("/v1/batch", content=orjson.dumps({"batch": chunk}))
        response.raise_for_status()
    for user in probe_users:
        for _ in range(600):
            if (await api.get(f"/api/v1/profiles/user_id:{user}")).status_code == 200:
                break
            await asyncio.sleep(0.05)
        else:
            raise RuntimeError(f"probe user {user} did not appear within 30 s")


# -- report --------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = {
        "events": args.events,
        "customers": args.customers,
        "workers": args.workers,
        "rate": args.rate,
        "duration_s": args.duration,
        "batch": args.batch,
        "probes_per_s": args.probes_per_s,
    }
    info = common.header(
        "Accord end-to-end benchmark: processing throughput and acknowledgement-to-visible latency", args, settings
    )

    payload: dict[str, Any] = {"benchmark": "e2e", "machine": info, "settings": settings}
    ok = True
    if "throughput" in args.parts:
        t = payload["throughput"] = run_throughput(args)
        ok = ok and t["pending"] == 0 and t["events_stored"] + t["quarantined"] == t["events"]
        print(
            f"\nthroughput ({t['drained_by']})\n"
            f"  {t['handled']:,} events processed in {t['seconds']:.2f} s = {t['events_per_s']:,} events/s\n"
            f"  {t['customers']:,} customers -> {t['profiles']:,} live profiles, {t['merges']:,} merges, "
            f"{t['identities']:,} identities, {t['events_stored']:,} events stored, {t['quarantined']} quarantined, "
            f"{t['pending']} pending\n"
            f"  target >= {TARGET_EVENTS_PER_S:,} events/s: "
            f"{'met' if t['events_per_s'] >= TARGET_EVENTS_PER_S else 'NOT met'}"
        )
    if "latency" in args.parts:
        lat = payload["latency"] = run_latency(args)
        ok = ok and lat["samples"] > 0
        p99 = lat["p99_ms"]
        print(
            f"\nlatency (`accord up`, {lat['achieved_per_s']:,} events/s achieved of {lat['offered_per_s']:,} offered, "
            f"batches of {lat['batch']}, {lat['duration_s']:g} s)\n"
            f"  acknowledged -> visible via GET /api/v1/profiles/{{ref}}, {lat['samples']} probes "
            f"({lat['unseen']} unseen, polled every {lat['poll_ms']:g} ms):\n"
            f"  p50 {lat['p50_ms']} ms, p95 {lat['p95_ms']} ms, p99 {p99} ms, max {lat['max_ms']} ms\n"
            f"  POST /v1/batch acknowledgement ms: p50 {lat['ack_ms']['p50']}, p99 {lat['ack_ms']['p99']}; "
            f"GET profile ms: p50 {lat['profile_get_ms']['p50']}, p99 {lat['profile_get_ms']['p99']} "
            f"({lat['profile_gets']:,} polls)\n  "
            f"errors {lat['errors']}; unprocessed at end {lat['pending_at_end']}; "
            f"worst send lateness {lat['max_send_lateness_ms']} ms\n"
            f"  target p99 < {TARGET_P99_MS:g} ms: "
            f"{'met' if p99 is not None and p99 < TARGET_P99_MS and lat['unseen'] == 0 else 'NOT met'}"
        )
    payload["targets"] = {"events_per_s": TARGET_EVENTS_PER_S, "p99_ms": TARGET_P99_MS}
    common.print_json_line(payload)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
