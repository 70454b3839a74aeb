"""Ingest benchmark: acknowledged events/s through POST /v1/batch, and the same events without HTTP.

Starts a real Accord as a subprocess (`accord serve`, then `accord up`) on a fresh store, and has
several client processes post batches of Segment events over keep-alive connections. Each event
counts once its request is answered 200, which Accord gives only after the event is durable.
Beside it, the ceiling: the same request bodies parsed, normalised and appended through the sql
event log in one process, with no HTTP.

    .venv/bin/python bench/ingest.py                 # full size, embedded SQLite
    .venv/bin/python bench/ingest.py --smoke         # a few seconds, for CI
    .venv/bin/python bench/ingest.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/accord_bench

The last line of the output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import queue
import random
import sys
import time
from collections import deque
from concurrent.futures import Future
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common
from accord.ingest.spec import normalise_request
from accord.log.port import NewRecord

TARGET_EVENTS_PER_S = 20_000
ROLES = ("serve", "up", "serve+worker")
DEFAULT_ROLES = ("serve", "up")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000, help="events to send per run (default 200,000)")
    parser.add_argument("--clients", type=int, default=4, help="client processes, one connection each (default 4)")
    parser.add_argument("--batch-size", type=int, default=100, help="events per /v1/batch request (default 100)")
    parser.add_argument(
        "--database-url",
        default=None,
        help="default: embedded SQLite in a temp dir. A PostgreSQL URL names the server: each run gets a "
        "scratch database created through it and dropped afterwards",
    )
    parser.add_argument(
        "--sqlite-synchronous", default=common.default_synchronous(), help="ACCORD_SQLITE_SYNCHRONOUS for SQLite"
    )
    parser.add_argument(
        "--roles",
        default=",".join(DEFAULT_ROLES),
        help="what runs the server: serve (API only), up (API and in-process worker), serve+worker (API and "
        "one `accord worker` process); default serve,up",
    )
    parser.add_argument("--tmp", default=None, help="where temp data dirs go (default: the system temp dir)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: finishes in a few seconds")
    args = parser.parse_args(argv)
    if args.smoke:
        args.events, args.clients = min(args.events, 2_000), min(args.clients, 2)
    if args.events < 1 or args.clients < 1 or not 1 <= args.batch_size <= 2500:
        parser.error("--events and --clients must be positive; --batch-size 1..2500")
    args.roles = [r.strip() for r in args.roles.split(",") if r.strip()]
    if not set(args.roles) <= set(ROLES):
        parser.error(f"--roles takes {', '.join(ROLES)}")
    return args


def client_plan(args: argparse.Namespace) -> list[int]:
    """How many batches each client sends."""
    total = -(-args.events // args.batch_size)
    share, extra = divmod(total, args.clients)
    return [share + (1 if i < extra else 0) for i in range(args.clients)]


def bodies_for(client: int, n_batches: int, args: argparse.Namespace) -> list[bytes]:
    """The request bodies client `client` sends: deterministic, so the direct run sends the same."""
    rng = random.Random(args.seed * 1000 + client)
    first = sum(client_plan(args)[:client]) * args.batch_size
    wanted = max(0, min(n_batches * args.batch_size, args.events - first))
    calls = common.random_events(rng, wanted)
    sent_at = common.iso(datetime.now(UTC))
    return [orjson.dumps({"batch": chunk, "sentAt": sent_at}) for chunk in common.batches(calls, args.batch_size)]


# -- HTTP clients (separate processes) -----------------------------------------------------------
def client_main(
    client: int,
    n_batches: int,
    args: argparse.Namespace,
    base_url: str,
    write_key: str,
    ready: Any,
    start: Any,
    results: Any,
) -> None:
    bodies = bodies_for(client, n_batches, args)
    headers = {"Content-Type": "application/json"}
    with httpx.Client(base_url=base_url, auth=(write_key, ""), headers=headers, timeout=60) as http:
        http.get("/healthz")  # opens the keep-alive connection before the clock starts
        ready.put(client)
        if not start.wait(timeout=300):
            return
        acked = errors = 0
        latencies: list[float] = []
        began = time.monotonic()
        for body in bodies:
            sent = time.monotonic()
            try:
                response = http.post("/v1/batch", content=body)
            except httpx.HTTPError:
                errors += 1
                continue
            latencies.append(time.monotonic() - sent)
            if response.status_code == 200:
                acked += len(orjson.loads(body)["batch"])
            else:
                errors += 1
        ended = time.monotonic()
    results.put({"client": client, "acked": acked, "errors": errors, "began": began, "ended": ended, "lat": latencies})


def run_http(role: str, args: argparse.Namespace) -> dict[str, Any]:
    with (
        common.temp_dir(f"accord-bench-{role}-", args.tmp) as data_dir,
        common.scratch_store(args.database_url, data_dir, role.replace("+", "_")) as url,
    ):
        server = common.Accord(
            data_dir=data_dir,
            database_url=url if common.is_postgres(url) else None,
            sqlite_synchronous=args.sqlite_synchronous,
        )
        write_key = server.cli("source", "create", "bench")["write_key"]
        with server:
            server.start("serve" if role == "serve+worker" else role)
            if role == "serve+worker":
                server.start_workers(1)
            result = _drive_clients(args, server.base_url, write_key)
            result["pending_at_end"] = _pending(url, args.sqlite_synchronous, data_dir)
        result["stored_events"] = common.stored_events(url, args.sqlite_synchronous, data_dir)
    return result


def _pending(url: str, synchronous: str, data_dir: Path) -> int:
    rt = common.open_runtime(url, synchronous, data_dir)
    try:
        return rt.log.pending()
    finally:
        rt.close()


def _drive_clients(args: argparse.Namespace, base_url: str, write_key: str) -> dict[str, Any]:
    context = mp.get_context("spawn")
    ready, results, start = context.Queue(), context.Queue(), context.Event()
    processes = [
        context.Process(
            target=client_main,
            args=(i, n, args, base_url, write_key, ready, start, results),
            name=f"bench-client-{i}",
            daemon=True,
        )
        for i, n in enumerate(client_plan(args))
    ]
    try:
        for process in processes:
            process.start()
        for _ in processes:
            ready.get(timeout=120)
        start.set()
        budget = max(120.0, args.events / 500)  # generous, but bounded: 500 events/s at the very least
        reports = [results.get(timeout=budget) for _ in processes]
        for process in processes:
            process.join(timeout=10)
    except queue.Empty:
        raise RuntimeError("a client process did not report in time") from None
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)
    seconds = max(r["ended"] for r in reports) - min(r["began"] for r in reports)
    acked = sum(r["acked"] for r in reports)
    latencies = [x * 1000 for r in reports for x in r["lat"]]
    pct = common.percentiles(latencies)
    return {
        "events_acked": acked,
        "requests": len(latencies),
        "errors": sum(r["errors"] for r in reports),
        "seconds": round(seconds, 3),
        "events_per_s": round(acked / seconds) if seconds > 0 else 0,
        "request_ms": {k: None if v is None else round(v, 2) for k, v in pct.items()},
    }


# -- the ceiling: the same bodies, no HTTP -------------------------------------------------------
def run_direct(args: argparse.Namespace) -> dict[str, Any]:
    bodies = [body for i, n in enumerate(client_plan(args)) for body in bodies_for(i, n, args)]
    window = max(2, args.clients)  # records in flight, as with `clients` concurrent requests
    with (
        common.temp_dir("accord-bench-direct-", args.tmp) as data_dir,
        common.scratch_store(args.database_url, data_dir, "direct") as url,
    ):
        rt = common.open_runtime(url, args.sqlite_synchronous, data_dir)
        log = rt.log
        try:
            inflight: deque[Future[None]] = deque()
            events = 0
            began = time.monotonic()
            for body in bodies:
                received_at = datetime.now(UTC)
                normalised = normalise_request(
                    orjson.loads(body), endpoint="batch", received_at=received_at, client_ip="127.0.0.1"
                )
                inflight.append(log.submit(NewRecord("src_direct", received_at, normalised)))
                events += len(normalised)
                if len(inflight) >= window:
                    inflight.popleft().result(timeout=60)
            for future in inflight:
                future.result(timeout=60)
            seconds = time.monotonic() - began
        finally:
            rt.close()
        stored = common.stored_events(url, args.sqlite_synchronous, data_dir)
    return {
        "events": events,
        "records": len(bodies),
        "seconds": round(seconds, 3),
        "events_per_s": round(events / seconds) if seconds > 0 else 0,
        "stored_events": stored,
        "window": window,
    }


def average_event_bytes(args: argparse.Namespace) -> int:
    sample = common.random_events(random.Random(args.seed), 500)
    return round(sum(len(orjson.dumps(e)) for e in sample) / len(sample))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = {
        "events": args.events,
        "clients": args.clients,
        "batch_size": args.batch_size,
        "event_bytes_avg": average_event_bytes(args),
    }
    info = common.header(
        "Accord ingest benchmark: POST /v1/batch, acknowledged (durable) events per second", args, settings
    )

    direct = run_direct(args)
    print(
        f"\ndirect (no HTTP: parse, normalise, append via SqlEventLog, {direct['window']} records in flight)\n"
        f"  {direct['events']:,} events in {direct['seconds']:.2f} s = {direct['events_per_s']:,} events/s"
    )
    http: dict[str, Any] = {}
    for role in args.roles:
        result = http[role] = run_http(role, args)
        ratio = result["events_per_s"] / direct["events_per_s"] if direct["events_per_s"] else 0.0
        result["ratio_to_direct"] = round(ratio, 3)
        lat = result["request_ms"]
        what = " + ".join(f"`accord {part}`" for part in role.split("+"))
        print(
            f"\nHTTP, {what} ({args.clients} clients, batches of {args.batch_size})\n"
            f"  {result['events_acked']:,} events acknowledged in {result['seconds']:.2f} s "
            f"= {result['events_per_s']:,} events/s ({ratio:.0%} of direct)\n"
            f"  request latency ms: p50 {lat['p50']}, p99 {lat['p99']}, max {lat['max']}; "
            f"errors {result['errors']}; stored {result['stored_events']:,}; "
            f"unprocessed at end {result['pending_at_end']:,}"
        )
    if settings["database"] == "sqlite" and "up" in http:
        headline = http["up"]["events_per_s"]
        verdict = "met" if headline >= TARGET_EVENTS_PER_S else "NOT met"
        print(f"\ntarget: >= {TARGET_EVENTS_PER_S:,} events/s with `accord up` on SQLite: {headline:,} ({verdict})")
    common.print_json_line(
        {
            "benchmark": "ingest",
            "machine": info,
            "settings": settings,
            "direct": direct,
            "http": http,
            "target_events_per_s": TARGET_EVENTS_PER_S,
        }
    )
    lost = [role for role, r in http.items() if r["stored_events"] < r["events_acked"]]
    return 1 if lost or direct["stored_events"] != direct["events"] else 0


if __name__ == "__main__":
    sys.exit(main())
