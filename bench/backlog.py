"""Backlog benchmark: how long a service agent's profile read takes while the worker catches up a backlog.

A real `accord up` runs with 50 segments and 5 journeys (those of bench/segments.py). One customer is
identified; then `--events` Segment calls (bench/segments.py's customers) arrive as fast as 8 clients can
post batches of 100, and while the worker drains the backlog that leaves, that customer's profile is read
every 20 ms through GET /api/v1/profiles/{ref}, until the event log is empty (`accord_log_pending_events`
on /metrics). On SQLite a worker's transaction holds the write lock, and each read writes its audit record,
so a read waits for the transaction under way. Runs grow while the backlog lasts (`--max-batch-size`,
ACCORD_WORKER_MAX_BATCH_SIZE, default 4,000), but once a read's record is seen, the worker commits in
transactions of the batch size for `--yield-seconds` (ACCORD_WORKER_YIELD_SECONDS, default 10; 0: never).
With `--no-reads` nobody reads: the drain alone, at its own pace.

    .venv/bin/python bench/backlog.py                          # 40,000 events, runs of up to 4,000
    .venv/bin/python bench/backlog.py --yield-seconds 0        # grown runs whoever waits for them
    .venv/bin/python bench/backlog.py --max-batch-size 500     # runs that do not grow
    .venv/bin/python bench/backlog.py --no-reads               # the drain with no reader about
    .venv/bin/python bench/backlog.py --smoke                  # a few seconds, for CI

The last line of the output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common
import segments
from accord.config import Settings

CLIENTS = 8
BATCH = 100
READ_EVERY_S = 0.02
POLL_WITHOUT_READS_S = 0.1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=40_000, help="the backlog, events (default 40,000)")
    parser.add_argument("--customers", type=int, default=4_000, help="people behind the events (default 4,000)")
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=Settings().worker_max_batch_size,
        help="ACCORD_WORKER_MAX_BATCH_SIZE for the worker (default 4,000)",
    )
    parser.add_argument(
        "--yield-seconds",
        type=float,
        default=Settings().worker_yield_seconds,
        help="ACCORD_WORKER_YIELD_SECONDS for the worker (default 10; 0: never give way to readers)",
    )
    parser.add_argument(
        "--reads",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="read the customer's profile while the backlog drains (default; --no-reads: nobody reads)",
    )
    parser.add_argument(
        "--sqlite-synchronous", default=common.default_synchronous(), help="ACCORD_SQLITE_SYNCHRONOUS for SQLite"
    )
    parser.add_argument("--tmp", default=None, help="where temp data dirs go (default: the system temp dir)")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: finishes in a few seconds")
    args = parser.parse_args(argv)
    if args.smoke:
        args.events, args.customers = min(args.events, 2_000), min(args.customers, 200)
    if min(args.events, args.customers, args.max_batch_size) < 1:
        parser.error("sizes must be positive")
    if args.yield_seconds < 0:
        parser.error("--yield-seconds must be 0 or more")
    args.database_url = None  # embedded SQLite: the write lock this measures is SQLite's
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    calls = common.customer_journeys(random.Random(args.seed), args.events, args.customers)
    with (
        common.temp_dir("accord-bench-backlog-", args.tmp) as data_dir,
        common.scratch_store(None, data_dir, "backlog") as url,
    ):
        rt = common.open_runtime(url, args.sqlite_synchronous, data_dir)
        try:
            segments.define(rt, segments.segment_definitions(50), segments.journey_definitions(5, 50))
        finally:
            rt.close()
        server = common.Accord(
            data_dir=data_dir,
            database_url=None,
            sqlite_synchronous=args.sqlite_synchronous,
            settings={
                "ACCORD_WORKER_MAX_BATCH_SIZE": str(args.max_batch_size),
                "ACCORD_WORKER_YIELD_SECONDS": str(args.yield_seconds),
            },
        )
        write_key = server.cli("source", "create", "bench")["write_key"]
        token = server.cli("token", "create", "--role", "admin")["token"]
        with server:
            server.start("up")
            return asyncio.run(_drain_while_reading(server.base_url, write_key, token, calls, reads=args.reads))


async def _pending(api: httpx.AsyncClient) -> float:
    for line in (await api.get("/metrics")).text.splitlines():
        if line.startswith("accord_log_pending_events"):
            return float(line.split()[-1])
    raise RuntimeError("/metrics has no accord_log_pending_events")


async def _drain_while_reading(
    base_url: str, write_key: str, token: str, calls: list[dict[str, Any]], *, reads: bool
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        httpx.AsyncClient(base_url=base_url, auth=(write_key, ""), timeout=60) as ingest,
        httpx.AsyncClient(base_url=base_url, headers=headers, timeout=60) as api,
    ):
        # The customer the agent reads, processed before the backlog comes: the worker is up and warm. Without
        # reads, the log's count tells (a read would leave an audit record, which the worker yields to).
        response = await ingest.post("/v1/identify", json={"userId": "agent-probe", "traits": {"plan": "pro"}})
        response.raise_for_status()
        while (
            (await api.get("/api/v1/profiles/user_id:agent-probe")).status_code != 200
            if reads
            else await _pending(api) > 0
        ):
            await asyncio.sleep(0.05)
        slots = asyncio.Semaphore(CLIENTS)

        async def post(chunk: list[dict[str, Any]]) -> None:
            async with slots:
                sent = await ingest.post(
                    "/v1/batch", content=orjson.dumps({"batch": chunk}), headers={"Content-Type": "application/json"}
                )
                sent.raise_for_status()

        began = time.monotonic()
        await asyncio.gather(*(post(chunk) for chunk in common.batches(calls, BATCH)))
        ingested = time.monotonic()
        waits: list[float] = []
        while True:
            if reads:
                start = time.monotonic()
                read = await api.get("/api/v1/profiles/user_id:agent-probe")
                waits.append((time.monotonic() - start) * 1000)
                read.raise_for_status()
            if await _pending(api) == 0:
                break
            # Without reads, the log's count alone: every 20 ms it took a core's share from the worker.
            await asyncio.sleep(READ_EVERY_S if reads else POLL_WITHOUT_READS_S)
        drained = time.monotonic()
    return {
        "events": len(calls),
        "ingest_s": round(ingested - began, 3),
        "drain_after_ingest_s": round(drained - ingested, 3),
        "events_per_s": round(len(calls) / (drained - began)),
        "reads": len(waits),
        "read_ms": {name: round(value, 2) for name, value in common.percentiles(waits).items() if value is not None},
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = {
        "events": args.events,
        "customers": args.customers,
        "max_batch_size": args.max_batch_size,
        "yield_seconds": args.yield_seconds,
        "reads": args.reads,
    }
    info = common.header("Accord backlog benchmark: profile reads while the worker catches up", args, settings)
    result = run(args)
    reads = result["read_ms"]
    print(
        f"\n{result['events']:,} events posted in {result['ingest_s']:.2f} s, "
        f"drained {result['drain_after_ingest_s']:.2f} s later ({result['events_per_s']:,} events/s in all), "
        f"runs of up to {args.max_batch_size:,} events, yielding for {args.yield_seconds:g} s"
    )
    if args.reads:
        print(
            f"  GET /api/v1/profiles/{{ref}} meanwhile, {result['reads']} reads: p50 {reads['p50']} ms, "
            f"p99 {reads['p99']} ms, max {reads['max']} ms"
        )
    else:
        print("  nobody read meanwhile (--no-reads)")
    common.print_json_line({"benchmark": "backlog", "machine": info, "settings": settings, "backlog": result})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
