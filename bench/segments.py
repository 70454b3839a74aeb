"""Segments benchmark: processing throughput with segments active, and backfill of a new segment.

(a) Throughput: the e2e benchmark's backlog (Segment calls from synthetic customers, most of whom log
    in so anonymous profiles merge) is drained by an in-process worker twice, on two fresh stores:
    with no segment or journey defined, and with `--segments` (default 50) segments of every kind (trait
    operators, event counts in windows with property filters, first/last occurrence, segment references)
    and `--journeys` (default 5) journeys (stages on events, traits and segments; goals, exits, time
    limits). Streaming evaluation re-evaluates, per run, only the segments and journeys the run's events
    can affect. The worker takes runs of `--batch-size` events (default: the worker's own default, 500),
    doubling while the claims come back at least half full up to `--max-batch-size` (default 4,000), as
    `accord worker` does; bigger runs touch each profile, index page and segment fewer times per event.
    With `--workers N`, N `accord worker` subprocesses drain the backlog instead (the scale-out role), timed
    from their first commit; on PostgreSQL they run side by side, waiting for each other only on the
    profiles both runs touch (row locks); on SQLite they take turns at the one write lock.
(b) Backfill: `--profiles` synthetic profiles (traits only) are written straight into a fresh store,
    then a new segment is created and backfilled to the end (`service.backfill_step` in chunks, as the
    worker and `accord segment create` do); the figure is profiles over backfill time.

    .venv/bin/python bench/segments.py                        # full size, embedded SQLite
    .venv/bin/python bench/segments.py --profiles 1000000     # the issue's 1,000,000-profile backfill
    .venv/bin/python bench/segments.py --smoke                # a few seconds, for CI

(d) Runs (`--parts runs`): the worker's cost per run as the latency part's load makes it, without the HTTP
    side: a backlog of `--run-backlog` events in records of 10 (as /v1/batch requests of 10 write them) is
    drained in runs of `--run-events` (default 20) with the segments and journeys active; after the first
    half, each run's CPU time (the worker's thread), wall time, statements and commit time are taken.
(e) History (`--parts history`): what a run costs as one customer's history grows. One identified
    customer's track events (with prices, over the last 30 days) are drained up to each size in turn (10,
    100, 1,000, ... up to `--history`, default 5,000); at each, runs of `--run-events` of that customer's
    new events are timed (the worker's CPU per run). Streaming evaluation reads the customer's events that
    the segments name, and opens their sealed payloads when a segment filters on a property, on every run.
(c) Latency: a real `accord up` runs as a subprocess with the segments defined, and is offered a steady
    load (a batch of 10 every 10 ms = 1,000 events/s, open loop). Every fifth batch carries a probe: an
    identify that moves a known user into or out of the `probe` segment. Latency runs from the moment the
    POST is acknowledged to the moment the change is visible. Every
    tenth batch (offset by three) carries a stage probe: an identify that moves a known user one stage on
    in the `probe` journey (20 stages on a counter trait). With `--probe sse` (the default) the change is
    visible when it arrives on the change stream, GET /api/v1/stream?segment=probe&journey=probe, which
    a service agent's screen would hold open; with `--probe poll`, when polling (every 5 ms per probe)
    GET /api/v1/profiles/user_id:.../segments or .../journeys shows it.
The last line of the output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import httpx
import orjson
from sqlalchemy import Table, event, func, select

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common
from accord.config import Settings
from accord.db.base import utcnow
from accord.db.bulk import insert_rows
from accord.journeys import service as journeys
from accord.journeys.models import JourneyPosition
from accord.pipeline.worker import Worker
from accord.profiles.models import Profile, ProfileEvent
from accord.runtime import Runtime
from accord.segments import service
from accord.segments.models import SegmentMembership
from accord.sources.service import create_source
from e2e import store_counts, write_backlog

TARGET_EVENTS_PER_S = 10_000
TARGET_BACKFILL_S = 10.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=50_000, help="backlog size for throughput (default 50,000)")
    parser.add_argument("--customers", type=int, default=5_000, help="people behind the events (default 5,000)")
    parser.add_argument("--segments", type=int, default=50, help="segments active during the drain (default 50)")
    parser.add_argument("--journeys", type=int, default=5, help="journeys active during the drain (default 5)")
    parser.add_argument("--profiles", type=int, default=200_000, help="profiles to backfill (default 200,000)")
    parser.add_argument(
        "--database-url", default=None, help="default: embedded SQLite; a PostgreSQL URL names the server"
    )
    parser.add_argument(
        "--sqlite-synchronous", default=common.default_synchronous(), help="ACCORD_SQLITE_SYNCHRONOUS for SQLite"
    )
    parser.add_argument("--rate", type=int, default=1_000, help="offered load for latency, events/s (default 1,000)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of offered load (default 30)")
    parser.add_argument(
        "--probe", choices=("sse", "poll"), default="sse", help="how latency probes see a change (default sse)"
    )
    parser.add_argument(
        "--parts",
        default="throughput,backfill,latency,runs,history",
        help="what to run (default throughput,backfill,latency,runs,history)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=Settings().worker_batch_size,
        help="events per worker run for --parts throughput (default: ACCORD_WORKER_BATCH_SIZE, 500)",
    )
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=Settings().worker_max_batch_size,
        help="while the backlog lasts, runs double up to this many events (default: ACCORD_WORKER_MAX_BATCH_SIZE, "
        "4,000; the batch size or less: runs stay at the batch size)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="0 (default): --parts throughput drains in this process with Worker.drain(); N: N `accord worker` "
        "subprocesses drain it (the scale-out role; on SQLite they take turns at the one write lock)",
    )
    parser.add_argument(
        "--run-events", type=int, default=20, help="events per run for --parts runs and history (default 20)"
    )
    parser.add_argument(
        "--history", type=int, default=5_000, help="largest history of one customer for --parts history (default 5,000)"
    )
    parser.add_argument(
        "--run-backlog", type=int, default=12_000, help="backlog for --parts runs, events (default 12,000)"
    )
    parser.add_argument("--tmp", default=None, help="where temp data dirs go (default: the system temp dir)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: finishes in a few seconds")
    args = parser.parse_args(argv)
    if args.smoke:
        args.events, args.customers = min(args.events, 2_000), min(args.customers, 200)
        args.profiles = min(args.profiles, 2_000)
        args.duration = min(args.duration, 2.0)
        args.run_backlog = min(args.run_backlog, 1_000)
        args.history = min(args.history, 100)
    if (
        min(
            args.events,
            args.customers,
            args.profiles,
            args.run_events,
            args.run_backlog,
            args.batch_size,
            args.max_batch_size,
            args.history,
        )
        < 1
        or min(args.segments, args.journeys, args.workers) < 0
    ):
        parser.error("sizes must be positive")
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if not args.parts or not set(args.parts) <= {"throughput", "backfill", "latency", "runs", "history"}:
        parser.error("--parts takes throughput, backfill, latency, runs, history")
    return args


def segment_definitions(count: int) -> list[tuple[str, dict[str, Any]]]:
    """`count` segments over the synthetic data, of every kind, cycling through the kinds."""
    now = datetime.now(UTC)
    kinds: list[tuple[str, dict[str, Any]]] = []
    for plan in common.PLANS:
        kinds.append((f"plan-{plan}", {"trait": "plan", "op": "eq", "value": plan}))
    for country in common.COUNTRIES:
        kinds.append((f"country-{country.lower()}", {"trait": "country", "op": "eq", "value": country}))
    for name in common.TRACKS:
        slug = name.lower().replace(" ", "-")
        kinds.append((f"recent-{slug}", {"event": name, "within": "7d"}))
        kinds.append(
            (
                f"big-{slug}",
                {"event": name, "where": [{"property": "price", "op": "gte", "value": 100}], "count": {"gte": 2}},
            )
        )
        kinds.append((f"lapsed-{slug}", {"event": name, "occurrence": "last", "older_than": "3d"}))
    for plan, country in (("pro", "GB"), ("enterprise", "DE"), ("basic", "FR"), ("free", "US"), ("pro", "NL")):
        kinds.append(
            (
                f"{plan}-in-{country.lower()}",
                {"all": [{"segment": f"plan-{plan}"}, {"trait": "country", "op": "in", "value": [country, "SE"]}]},
            )
        )
    for plan in ("pro", "enterprise", "basic", "free", "pro"):
        kinds.append(
            (
                f"{plan}-not-ordering-{len(kinds)}",
                {"all": [{"segment": f"plan-{plan}"}, {"not": {"segment": "recent-order-completed"}}]},
            )
        )
    kinds.append(("example-emails", {"trait": "email", "op": "regex", "value": r"@example\.com$"}))
    kinds.append(("smiths", {"trait": "lastName", "op": "starts_with", "value": "Smi"}))
    kinds.append(("has-email", {"trait": "email", "op": "exists"}))
    window = {"from": (now - timedelta(days=2)).isoformat(), "to": now.isoformat()}
    kinds.append(("ordered-lately", {"event": "Order Completed", "between": window, "count": {"gte": 1}}))
    kinds.append(("viewed-once", {"event": "Product Viewed", "count": {"eq": 1}}))
    kinds.append(
        (
            "quiet",
            {"any": [{"event": "Cart Viewed", "count": {"lte": 0}}, {"trait": "plan", "op": "ne", "value": "pro"}]},
        )
    )
    return (
        kinds[:count]
        if count <= len(kinds)
        else kinds
        + [
            (f"plan-copy-{i}", {"trait": "plan", "op": "in", "value": list(common.PLANS[: 1 + i % 4])})
            for i in range(count - len(kinds))
        ]
    )


def journey_definitions(count: int, segments: int) -> list[tuple[str, dict[str, Any]]]:
    """`count` journeys over the synthetic data, cycling through the kinds: a shop funnel with a goal and
    time limits, a sign-up journey on traits, a plan upgrade reading segments (when there are some)."""
    upgrade = (
        {
            "stages": [
                {"key": "free", "condition": {"segment": "plan-free"}},
                {"key": "paid", "condition": {"segment": "plan-pro"}},
            ]
        }
        if segments >= 3
        else {"stages": [{"key": "free", "condition": {"trait": "plan", "op": "eq", "value": "free"}}]}
    )
    kinds: list[dict[str, Any]] = [
        {
            "stages": [
                {"key": "viewed", "condition": {"event": "Product Viewed"}},
                {"key": "added", "condition": {"event": "Product Added"}, "time_limit": "2d"},
                {"key": "checkout", "condition": {"event": "Checkout Started"}, "time_limit": "12h"},
            ],
            "goal": {"event": "Order Completed"},
            "time_limit": "7d",
        },
        {
            "stages": [
                {"key": "signed-up", "condition": {"event": "Signed Up"}},
                {"key": "known", "condition": {"trait": "email", "op": "exists"}},
                {"key": "located", "condition": {"trait": "country", "op": "exists"}},
            ],
            "exit": {"trait": "plan", "op": "eq", "value": "enterprise"},
        },
        upgrade,
        {
            "stages": [
                {"key": "cart", "condition": {"event": "Cart Viewed", "within": "7d"}},
                {
                    "key": "big",
                    "condition": {
                        "event": "Product Added",
                        "where": [{"property": "price", "op": "gte", "value": 100}],
                    },
                },
            ],
            "goal": {"event": "Order Completed", "count": {"gte": 2}},
        },
        {
            "stages": [
                {"key": "visitor", "condition": {"event": "Product Viewed", "count": {"gte": 3}}},
                {"key": "buyer", "condition": {"event": "Order Completed"}},
            ],
            "exit": {"trait": "country", "op": "in", "value": ["US", "CA"]},
        },
    ]
    return [(f"journey-{i}", kinds[i % len(kinds)]) for i in range(count)]


def define(
    rt: Runtime,
    definitions: list[tuple[str, dict[str, Any]]],
    journey_list: list[tuple[str, dict[str, Any]]] = (),  # type: ignore[assignment]
) -> None:
    with rt.db.unit_of_work() as session:
        for key, condition in definitions:
            service.create(session, key=key, name=key, description="", condition=condition, actor="bench", now=utcnow())
        for key, definition in journey_list:
            journeys.create(
                session, key=key, name=key, description="", definition=definition, actor="bench", now=utcnow()
            )
    for module, keys in ((service, definitions), (journeys, journey_list)):
        for key, _ in keys:
            while True:
                with rt.db.unit_of_work() as session:
                    if module.backfill_step(session, key, now=utcnow()).finished:
                        break


@contextmanager
def segmented_store(
    args: argparse.Namespace, name: str, segments: int, journey_count: int
) -> Iterator[tuple[Runtime, str]]:
    """A fresh store (`args`' database) with a source, and `segments` segments and `journey_count` journeys
    defined and backfilled; yields the runtime and the source's id, and closes the runtime afterwards."""
    with (
        common.temp_dir(f"accord-bench-{name}-", args.tmp) as data_dir,
        common.scratch_store(args.database_url, data_dir, name) as url,
    ):
        rt = common.open_runtime(url, args.sqlite_synchronous, data_dir)
        try:
            with rt.db.unit_of_work() as session:
                source_id = create_source(session, name="bench").id
            define(rt, segment_definitions(segments), journey_definitions(journey_count, segments))
            yield rt, source_id
        finally:
            rt.close()


def drain(args: argparse.Namespace, calls: list[dict[str, Any]], segments: int, journey_count: int) -> dict[str, Any]:
    with segmented_store(args, "segments", segments, journey_count) as (rt, source_id):
        write_backlog(rt.log, source_id, calls)
        longest: float | None = None  # not seen from here when subprocesses drain
        if args.workers:
            # As `accord worker` runs them: its settings, with the bench's run sizes
            environment = {
                "ACCORD_WORKER_BATCH_SIZE": str(args.batch_size),
                "ACCORD_WORKER_MAX_BATCH_SIZE": str(args.max_batch_size),
            }
            handled, seconds = common.drain_with_subprocesses(
                args.workers,
                rt.settings.data_dir,
                str(rt.settings.database_url),
                args.sqlite_synchronous,
                rt.log,
                len(calls),
                environment,
            )
        else:
            common.as_accord_worker(rt)
            worker = Worker(db=rt.db, log=rt.log, batch_size=args.batch_size, max_batch_size=args.max_batch_size)
            began = time.monotonic()
            handled, slowest = 0, 0.0
            for _ in range(len(calls) + 10):
                started = time.monotonic()
                taken = worker.run_once()
                if not taken:
                    break
                handled += taken
                slowest = max(slowest, time.monotonic() - started)  # on SQLite, how long the API's writers wait
            longest = slowest
            rt.log.delete_acknowledged()  # the last acknowledgements wait for the disk
            seconds = time.monotonic() - began
        counts = store_counts(rt)
        with rt.db.read() as session:
            counts["memberships"] = int(session.scalar(select(func.count()).select_from(SegmentMembership)) or 0)
            counts["positions"] = int(session.scalar(select(func.count()).select_from(JourneyPosition)) or 0)
    return {
        "segments": segments,
        "journeys": journey_count,
        "handled": handled,
        "seconds": round(seconds, 3),
        "events_per_s": round(handled / seconds) if seconds > 0 else 0,
        "longest_run_ms": None if longest is None else round(longest * 1000, 1),
        **counts,
    }


def run_small_runs(args: argparse.Namespace) -> dict[str, Any]:
    """(d) The worker's cost per run of a few events, with the segments and journeys active."""
    calls = common.customer_journeys(random.Random(args.seed), args.run_backlog, max(1, args.run_backlog // 6))
    with segmented_store(args, "runs", args.segments, args.journeys) as (rt, source_id):
        write_backlog(rt.log, source_id, calls, per_record=10)
        common.as_accord_worker(rt)
        worker = Worker(db=rt.db, log=rt.log, batch_size=args.run_events)
        statements = [0]
        commits: list[float] = []
        dialect = rt.db.engine.dialect
        do_commit = dialect.do_commit

        def count(*_: Any) -> None:
            statements[0] += 1

        def timed_commit(connection: Any) -> None:
            began = time.perf_counter()
            do_commit(connection)
            commits.append((time.perf_counter() - began) * 1000)

        event.listen(rt.db.engine, "before_cursor_execute", count)
        dialect.do_commit = timed_commit  # type: ignore[method-assign,assignment]
        expected = -(-len(calls) // args.run_events)
        for _ in range(expected // 2):  # warm: caches filled, the profiles' first events behind
            worker.run_once()
        statements[0], commits[:] = 0, []
        cpu: list[float] = []
        wall: list[float] = []
        handled = 0
        while True:
            began, began_cpu = time.perf_counter(), time.thread_time()
            done = worker.run_once()
            if not done:
                break
            wall.append((time.perf_counter() - began) * 1000)
            cpu.append((time.thread_time() - began_cpu) * 1000)
            handled += done
        rt.log.delete_acknowledged()
        pending = rt.log.pending()
    runs = max(1, len(cpu))
    return {
        "run_events": args.run_events,
        "runs": len(cpu),
        "events": handled,
        "pending": pending,
        "cpu_ms_per_run": round(sum(cpu) / runs, 2),
        "wall_ms": {k: None if v is None else round(v, 2) for k, v in common.percentiles(wall).items()},
        "statements_per_run": round(statements[0] / runs, 1),
        "commit_ms": {k: None if v is None else round(v, 2) for k, v in common.percentiles(commits).items()},
    }


def run_history(args: argparse.Namespace) -> dict[str, Any]:
    """(e) The worker's CPU per run of one customer's events, as that customer's history grows."""
    rng = random.Random(args.seed)
    now = datetime.now(UTC)
    user = "cust-history"
    sizes = sorted({size for size in (10, 100, 1_000, 10_000) if size < args.history} | {args.history})
    steps: list[dict[str, Any]] = []

    def tracks(count: int, first: datetime, last: datetime) -> list[dict[str, Any]]:
        span = (last - first) / max(1, count)
        return [common.event(rng, "track", at=first + span * i, user_id=user) for i in range(count)]

    with segmented_store(args, "history", args.segments, args.journeys) as (rt, source_id):
        common.as_accord_worker(rt)
        backlog = Worker(db=rt.db, log=rt.log, batch_size=500)
        worker = Worker(db=rt.db, log=rt.log, batch_size=args.run_events)
        stored = 0
        for size in sizes:
            # The history: spread over the 30 days before the last hour, older than what is timed.
            start = now - timedelta(days=30) + (timedelta(days=30) - timedelta(hours=1)) * stored / args.history
            write_backlog(rt.log, source_id, tracks(size - stored, start, now - timedelta(hours=1)))
            backlog.drain()
            stored = size
            runs = 10
            write_backlog(
                rt.log,
                source_id,
                tracks(runs * args.run_events, now - timedelta(minutes=50), now),
                per_record=args.run_events,
            )
            cpu: list[float] = []
            while True:
                began = time.thread_time()
                if not worker.run_once():
                    break
                cpu.append((time.thread_time() - began) * 1000)
            stored += runs * args.run_events
            steps.append({"history": size, "runs": len(cpu), "cpu_ms_per_run": round(sum(cpu) / len(cpu), 2)})
        rt.log.delete_acknowledged()
        pending = rt.log.pending()
    return {"run_events": args.run_events, "steps": steps, "pending": pending}


def run_backfill(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    with (
        common.temp_dir("accord-bench-backfill-", args.tmp) as data_dir,
        common.scratch_store(args.database_url, data_dir, "backfill") as url,
    ):
        rt = common.open_runtime(url, args.sqlite_synchronous, data_dir)
        try:
            now = utcnow()
            table = cast(Table, Profile.__table__)
            for start in range(0, args.profiles, 10_000):
                rows = [
                    {
                        "id": str(uuid.UUID(int=rng.getrandbits(128))),
                        "merged_into": None,
                        "traits": common.random_traits(rng, n),
                        "trait_versions": {},
                        "counts": {},
                        "identity_counts": {},
                        "cluster_id": None,
                        "first_seen": now,
                        "last_seen": now,
                        "created_at": now,
                        "updated_at": now,
                    }
                    for n in range(start, min(args.profiles, start + 10_000))
                ]
                # Each profile's track events (0 to 4, over the last 30 days, with a price), for the event
                # segments below. Payloads in the clear, as rows from before encryption are read: a sealed
                # one would add its decryption for each event evaluated in Python.
                events = [
                    {
                        "profile_id": row["id"],
                        "source_id": "bench",
                        "message_id": f"{row['id']}-{k}",
                        "type": "track",
                        "event": rng.choice(common.TRACKS),
                        "timestamp": now - timedelta(seconds=rng.randrange(30 * 86_400)),
                        "received_at": now,
                        "payload": {"properties": {"price": rng.randrange(200)}},
                    }
                    for row in rows
                    for k in range(rng.randrange(5))
                ]
                with rt.db.unit_of_work() as session:
                    session.execute(table.insert(), rows)
                    insert_rows(session, cast(Table, ProfileEvent.__table__), events)
            condition = {
                "all": [
                    {"trait": "plan", "op": "in", "value": ["pro", "enterprise"]},
                    {"trait": "country", "op": "ne", "value": "US"},
                ]
            }
            trait = _backfill(rt, "new", condition, args.profiles)
            # Viewed a product in the last two weeks: counted in the database, on the timeline index.
            recent = {"event": "Product Viewed", "count": {"gte": 1}, "within": "14d"}
            by_events = _backfill(rt, "orders", recent, args.profiles)
            # Two big orders in a month: the price is read in Python, for the profiles with two orders or more.
            big = {
                "event": "Order Completed",
                "where": [{"property": "price", "op": "gte", "value": 100}],
                "count": {"gte": 2},
                "within": "30d",
            }
            by_properties = _backfill(rt, "big-orders", big, args.profiles)
        finally:
            rt.close()
    return trait | {"events": by_events, "properties": by_properties}


def _backfill(rt: Runtime, key: str, condition: dict[str, Any], profiles: int) -> dict[str, Any]:
    """Create a segment and backfill it to the end, as the worker does; its figures."""
    began = time.monotonic()
    with rt.db.unit_of_work() as session:
        service.create(session, key=key, name=key, description="", condition=condition, actor="bench", now=utcnow())
    steps = 0
    while True:
        with rt.db.unit_of_work() as session:
            step = service.backfill_step(session, key, now=utcnow())
        steps += 1
        if step.finished:
            break
    seconds = time.monotonic() - began
    with rt.db.read() as session:
        members = service.size(session, key)
    return {
        "profiles": profiles,
        "members": members,
        "transactions": steps,
        "seconds": round(seconds, 3),
        "profiles_per_s": round(profiles / seconds) if seconds > 0 else 0,
    }


PROBE = {"trait": "bench_probe", "op": "starts_with", "value": "in-"}
STAGES = 20
PROBE_JOURNEY = {
    "stages": [
        {"key": f"s{n}", "condition": {"trait": "bench_stage", "op": "gte", "value": n}} for n in range(1, STAGES + 1)
    ]
}
BATCH = 10
PROBE_TIMEOUT = 10.0


class StreamProbes:
    """Probe changes as the change stream delivers them: each probe's latency runs from its acknowledgement
    to its message, whichever of the two the client sees first."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.expected: dict[tuple[str, str], float] = {}  # (profile id, change): acknowledged at
        self.arrived: dict[tuple[str, str], float] = {}  # (profile id, change): message received at
        self.segment_ms: list[float] = []
        self.stage_ms: list[float] = []

    def acknowledged(self, key: tuple[str, str], at: float) -> None:
        if key in self.arrived:
            self._seen(key, at, self.arrived.pop(key))
        else:
            self.expected[key] = at

    def message(self, data: dict[str, Any]) -> None:
        if data.get("segment") == "probe":
            key = (data["profile_id"], f"segment:{data['kind']}")
        elif data.get("journey") == "probe" and data.get("stage"):
            key = (data["profile_id"], f"stage:{data['stage']}")
        else:
            return
        now = self.loop.time()
        if key in self.expected:
            self._seen(key, self.expected.pop(key), now)
        else:
            self.arrived[key] = now

    def _seen(self, key: tuple[str, str], acked: float, arrived: float) -> None:
        into = self.segment_ms if key[1].startswith("segment:") else self.stage_ms
        into.append(max(0.0, arrived - acked) * 1000)

    async def listen(self, client: httpx.AsyncClient) -> None:
        """Read the change stream for the probe segment and journey until cancelled, resuming each time
        the server ends it (every 25 s) after the last id."""
        last: str | None = None
        while True:
            try:
                headers = {"Last-Event-ID": last} if last else {}
                params = {"segment": "probe", "journey": "probe"}
                async with client.stream("GET", "/api/v1/stream", params=params, headers=headers) as response:
                    event_id: str | None = None
                    async for line in response.aiter_lines():
                        if line.startswith("id: "):
                            event_id = line[4:]
                        elif line.startswith("data: "):
                            self.message(orjson.loads(line[6:]))
                            last = event_id or last
            except httpx.HTTPError:
                await asyncio.sleep(0.05)


def run_latency(args: argparse.Namespace) -> dict[str, Any]:
    with (
        common.temp_dir("accord-bench-seglatency-", args.tmp) as data_dir,
        common.scratch_store(args.database_url, data_dir, "seglatency") as url,
    ):
        rt = common.open_runtime(url, args.sqlite_synchronous, data_dir)
        try:
            define(
                rt,
                [*segment_definitions(args.segments), ("probe", PROBE)],
                [*journey_definitions(args.journeys, args.segments), ("probe", PROBE_JOURNEY)],
            )
        finally:
            rt.close()
        server = common.Accord(
            data_dir=data_dir,
            database_url=url if common.is_postgres(url) else None,
            sqlite_synchronous=args.sqlite_synchronous,
        )
        write_key = server.cli("source", "create", "bench")["write_key"]
        token = server.cli("token", "create", "--role", "admin")["token"]
        with server:
            server.start("up")
            return asyncio.run(_offer_load(args, server.base_url, write_key, token))


async def _offer_load(args: argparse.Namespace, base_url: str, write_key: str, token: str) -> dict[str, Any]:
    rng = random.Random(args.seed)
    batches_per_s = args.rate / BATCH
    n_batches = max(1, round(args.duration * batches_per_s))
    interval = 1.0 / batches_per_s
    background = common.customer_journeys(rng, n_batches * BATCH, max(1, min(args.customers, n_batches)))
    users = [f"probe-{i:04d}" for i in range(200)]
    inside = dict.fromkeys(users, False)
    stage = dict.fromkeys(users, 0)
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    # A generous pool timeout: when the worker falls behind, watchers queue for connections.
    ingest = httpx.AsyncClient(
        base_url=base_url, auth=(write_key, ""), timeout=httpx.Timeout(30, pool=120), limits=limits
    )
    api = httpx.AsyncClient(
        base_url=base_url,
        headers={"Authorization": f"Bearer {token}"},
        timeout=httpx.Timeout(30, pool=120),
        limits=limits,
    )
    loop = asyncio.get_running_loop()
    visible: list[float] = []
    staged: list[float] = []
    unseen = unstaged = errors = 0
    streamed = StreamProbes(loop) if args.probe == "sse" else None
    profile_of: dict[str, str] = {}

    def probe(user: str, enter: bool) -> dict[str, Any]:
        value = f"{'in' if enter else 'out'}-{uuid.uuid4().hex}"
        return common.event(rng, "identify", at=datetime.now(UTC), user_id=user, traits={"bench_probe": value})

    async def post(calls: list[dict[str, Any]]) -> float | None:
        nonlocal errors
        try:
            response = await ingest.post("/v1/batch", content=orjson.dumps({"batch": calls}))
        except httpx.HTTPError:
            errors += 1
            return None
        if response.status_code != 200:
            errors += 1
            return None
        return loop.time()

    async def watch(user: str, enter: bool, acked: float) -> None:
        nonlocal unseen
        while loop.time() < acked + PROBE_TIMEOUT:
            try:
                found = (await api.get(f"/api/v1/profiles/user_id:{user}/segments")).json()
            except httpx.HTTPError:
                await asyncio.sleep(0.05)
                continue
            if ("probe" in {m["key"] for m in found.get("data", [])}) == enter:
                visible.append((loop.time() - acked) * 1000)
                return
            await asyncio.sleep(0.005)
        unseen += 1

    async def watch_stage(user: str, n: int, acked: float) -> None:
        nonlocal unstaged
        while loop.time() < acked + PROBE_TIMEOUT:
            try:
                found = (await api.get(f"/api/v1/profiles/user_id:{user}/journeys")).json()
            except httpx.HTTPError:
                await asyncio.sleep(0.05)
                continue
            if any(p["key"] == "probe" and p["stage"] == f"s{n}" for p in found.get("data", [])):
                staged.append((loop.time() - acked) * 1000)
                return
            await asyncio.sleep(0.005)
        unstaged += 1

    async def send(index: int) -> None:
        calls = background[index * BATCH : (index + 1) * BATCH]
        target = None
        stage_target = None
        if index % 5 == 0:
            user = users[(index // 5) % len(users)]
            inside[user] = not inside[user]
            target = (user, inside[user])
            calls = [*calls[:-1], probe(*target)]
        elif index % 10 == 3 and stage[users[(index // 10) % len(users)]] < STAGES:
            user = users[(index // 10) % len(users)]
            stage[user] += 1
            stage_target = (user, stage[user])
            move = common.event(
                rng, "identify", at=datetime.now(UTC), user_id=user, traits={"bench_stage": stage[user]}
            )
            calls = [*calls[:-1], move]
        acked = await post(calls)
        if acked is None:
            return
        if streamed is not None:
            if target is not None:
                streamed.acknowledged((profile_of[target[0]], f"segment:{'entered' if target[1] else 'exited'}"), acked)
            if stage_target is not None:
                streamed.acknowledged((profile_of[stage_target[0]], f"stage:s{stage_target[1]}"), acked)
            return
        if target is not None:
            await watch(*target, acked)
        if stage_target is not None:
            await watch_stage(*stage_target, acked)

    try:
        for chunk in common.batches([probe(user, False) for user in users], 100):  # the probe users exist
            (await ingest.post("/v1/batch", content=orjson.dumps({"batch": chunk}))).raise_for_status()
        for user in users:
            while (found := await api.get(f"/api/v1/profiles/user_id:{user}")).status_code != 200:
                await asyncio.sleep(0.05)
            profile_of[user] = found.json()["id"]
        listening = None
        if streamed is not None:
            listening = asyncio.create_task(streamed.listen(api))
            await asyncio.sleep(1.0)  # connected, and past what the stream holds from before the load
            streamed.arrived.clear()
        tasks: set[asyncio.Task[None]] = set()
        started = loop.time() + 0.05
        for index in range(n_batches):
            delay = started + index * interval - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.add(asyncio.create_task(send(index)))
        offered = loop.time() - started + interval
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=PROBE_TIMEOUT + 60)
        if streamed is not None and listening is not None:
            waited = loop.time() + PROBE_TIMEOUT
            while streamed.expected and loop.time() < waited:
                await asyncio.sleep(0.05)
            listening.cancel()
            visible, staged = streamed.segment_ms, streamed.stage_ms
            unseen = sum(1 for _, change in streamed.expected if change.startswith("segment:"))
            unstaged = len(streamed.expected) - unseen
    finally:
        await ingest.aclose()
        await api.aclose()
    pct = common.percentiles(visible)
    stage_pct = common.percentiles(staged)
    return {
        "probe": args.probe,
        "offered_per_s": args.rate,
        "achieved_per_s": round(n_batches * BATCH / offered),
        "segments": args.segments + 1,
        "journeys": args.journeys + 1,
        "samples": len(visible),
        "unseen": unseen,
        "errors": errors,
        **{f"{k}_ms": None if v is None else round(v, 2) for k, v in pct.items()},
        "stage": {
            "samples": len(staged),
            "unseen": unstaged,
            **{f"{k}_ms": None if v is None else round(v, 2) for k, v in stage_pct.items()},
        },
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = {
        "events": args.events,
        "customers": args.customers,
        "segments": args.segments,
        "journeys": args.journeys,
        "batch_size": args.batch_size,
        "max_batch_size": args.max_batch_size,
        "workers": args.workers,
        "profiles": args.profiles,
    }
    info = common.header(
        "Accord segments benchmark: throughput with segments and journeys active, and backfill", args, settings
    )
    payload: dict[str, Any] = {"benchmark": "segments", "machine": info, "settings": settings}
    ok = True
    if "throughput" in args.parts:
        calls = common.customer_journeys(random.Random(args.seed), args.events, args.customers)
        runs = [drain(args, calls, 0, 0), drain(args, calls, args.segments, args.journeys)]
        drained_by = f"{args.workers} `accord worker` subprocesses" if args.workers else "Worker.drain() in-process"
        payload["throughput"] = runs
        for run in runs:
            ok = ok and run["pending"] == 0 and run["events_stored"] + run["quarantined"] == len(calls)
        print(
            f"\nthroughput ({drained_by}, the e2e backlog, runs of {args.batch_size:,} events, "
            f"doubling up to {max(args.batch_size, args.max_batch_size):,} while the backlog lasts)\n"
            + "".join(
                f"  {r['segments']:>3} segments, {r['journeys']} journeys: {r['handled']:,} events in "
                f"{r['seconds']:.2f} s = {r['events_per_s']:,} events/s"
                + ("" if r["longest_run_ms"] is None else f", longest run {r['longest_run_ms']:,} ms")
                + f" ({r['profiles']:,} live profiles, "
                f"{r['memberships']:,} memberships, {r['positions']:,} journey positions)\n"
                for r in runs
            )
            + f"  target >= {TARGET_EVENTS_PER_S:,} events/s with segments and journeys: "
            f"{'met' if runs[1]['events_per_s'] >= TARGET_EVENTS_PER_S else 'NOT met'}"
        )
    if "backfill" in args.parts:
        b = payload["backfill"] = run_backfill(args)
        for what, figures in (
            ("traits", b),
            ("event counts", b["events"]),
            ("event properties", b["properties"]),
        ):
            print(
                f"\nbackfill of a new segment of {what} over {figures['profiles']:,} profiles: "
                f"{figures['seconds']:.2f} s = {figures['profiles_per_s']:,} profiles/s, {figures['members']:,} "
                f"members, {figures['transactions']} transactions\n"
                f"  target < {TARGET_BACKFILL_S:g} s for 1,000,000: "
                + (
                    "met"
                    if figures["profiles"] >= 1_000_000 and figures["seconds"] < TARGET_BACKFILL_S
                    else "NOT met (or not at 1,000,000)"
                )
            )
    if "latency" in args.parts:
        lat = payload["latency"] = run_latency(args)
        ok = ok and lat["samples"] > 0
        met = lat["p99_ms"] is not None and lat["p99_ms"] < 50 and not lat["unseen"]
        st = lat["stage"]
        stage_met = st["p99_ms"] is not None and st["p99_ms"] < 50 and not st["unseen"]
        how = (
            ("on GET /api/v1/stream", "on GET /api/v1/stream")
            if lat["probe"] == "sse"
            else ("polling GET /api/v1/profiles/{ref}/segments", "polling GET /api/v1/profiles/{ref}/journeys")
        )
        print(
            f"\nlatency (`accord up`, {lat['achieved_per_s']:,} of {lat['offered_per_s']:,} events/s offered, "
            f"{lat['segments']} segments, {lat['journeys']} journeys)\n"
            f"  acknowledged -> segment change visible {how[0]}, "
            f"{lat['samples']} probes ({lat['unseen']} unseen, {lat['errors']} errors):\n"
            f"  p50 {lat['p50_ms']} ms, p95 {lat['p95_ms']} ms, p99 {lat['p99_ms']} ms, max {lat['max_ms']} ms\n"
            f"  target p99 < 50 ms: {'met' if met else 'NOT met'}\n"
            f"  acknowledged -> stage change visible {how[1]}, "
            f"{st['samples']} probes ({st['unseen']} unseen):\n"
            f"  p50 {st['p50_ms']} ms, p95 {st['p95_ms']} ms, p99 {st['p99_ms']} ms, max {st['max_ms']} ms\n"
            f"  target p99 < 50 ms: {'met' if stage_met else 'NOT met'}"
        )
    if "runs" in args.parts:
        r = payload["runs"] = run_small_runs(args)
        ok = ok and r["pending"] == 0 and r["runs"] > 0
        print(
            f"\nruns of {r['run_events']} events ({args.segments} segments, {args.journeys} journeys; "
            f"{r['runs']} runs, {r['events']:,} events measured after as many to warm up)\n"
            f"  CPU {r['cpu_ms_per_run']} ms per run, {r['statements_per_run']} statements per run\n"
            f"  wall ms: p50 {r['wall_ms']['p50']}, p99 {r['wall_ms']['p99']}; "
            f"commit ms: p50 {r['commit_ms']['p50']}, p99 {r['commit_ms']['p99']}, max {r['commit_ms']['max']}"
        )
    if "history" in args.parts:
        h = payload["history"] = run_history(args)
        ok = ok and h["pending"] == 0 and all(step["runs"] > 0 for step in h["steps"])
        print(
            f"\nruns of {h['run_events']} events of one customer, as the customer's history grows "
            f"({args.segments} segments, {args.journeys} journeys)\n"
            + "".join(
                f"  {step['history']:>7,} events before: CPU {step['cpu_ms_per_run']} ms per run "
                f"({step['runs']} runs)\n"
                for step in h["steps"]
            ).rstrip()
        )
    common.print_json_line(payload)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
