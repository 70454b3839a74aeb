"""Instructions benchmark: what `bench/segments.py`'s drain costs in CPU instructions, for changes smaller
than the machine's spread in wall-clock time (10-25% within minutes on a shared virtual machine).

The script builds the segments benchmark's store (`--segments` segments, `--journeys` journeys, the e2e
backlog of `--events` events) and drains it with an in-process worker, as `bench/segments.py --parts
throughput` does; with `--no-drain` it builds the store and stops. Run under valgrind both ways and
subtract: the difference is the drain's instructions, repeatable to about 0.1-0.6% (random ids and nonces
make the rest). System calls are not counted: time those in the drain itself.

    PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        .venv/bin/python bench/instructions.py --events 5000 [--no-drain]   # "Collected" is the count
    .venv/bin/python bench/instructions.py --smoke                          # a few seconds, for CI

The last line of the output is one JSON object (the machine, the settings and what was drained).
"""

from __future__ import annotations

import argparse
import random
import time
from typing import Any

import _common as common
from accord.config import Settings
from accord.pipeline.worker import Worker
from e2e import write_backlog
from segments import segmented_store


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=5_000, help="backlog size (default 5,000)")
    parser.add_argument("--segments", type=int, default=50, help="segments active (default 50)")
    parser.add_argument("--journeys", type=int, default=5, help="journeys active (default 5)")
    parser.add_argument("--no-drain", action="store_true", help="build the store and stop (the baseline)")
    parser.add_argument("--database-url", default=None, help="default: embedded SQLite")
    parser.add_argument("--sqlite-synchronous", default=common.default_synchronous())
    parser.add_argument("--tmp", default=None, help="where temp data dirs go (default: the system temp dir)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: finishes in a few seconds")
    args = parser.parse_args(argv)
    if args.smoke:
        args.events = min(args.events, 500)
    if args.events < 10 or min(args.segments, args.journeys) < 0:
        parser.error("--events must be at least 10; --segments and --journeys not negative")
    settings = {"events": args.events, "segments": args.segments, "journeys": args.journeys, "drain": not args.no_drain}
    info = common.header("Accord instructions benchmark: the segments drain, to run under valgrind", args, settings)
    calls = common.customer_journeys(random.Random(args.seed), args.events, max(1, args.events // 10))
    result: dict[str, Any] = {"handled": 0, "seconds": 0.0}
    with segmented_store(args, "instructions", args.segments, args.journeys) as (rt, source_id):
        write_backlog(rt.log, source_id, calls)
        common.as_accord_worker(rt)
        if not args.no_drain:
            defaults = Settings()  # runs as `accord worker` takes them (and bench/segments.py's drain)
            worker = Worker(db=rt.db, log=rt.log, batch_size=defaults.worker_batch_size)
            worker.max_batch_size = defaults.worker_max_batch_size
            began = time.monotonic()
            result["handled"] = worker.drain()
            rt.log.delete_acknowledged()
            result["seconds"] = round(time.monotonic() - began, 3)
            result["pending"] = rt.log.pending()
    handled, seconds = result["handled"], result["seconds"]
    print(f"\ndrained {handled:,} of {len(calls):,} events in {seconds:.2f} s (wall time, not the figure)")
    common.print_json_line({"benchmark": "instructions", "machine": info, "settings": settings, "drain": result})
    return 0 if args.no_drain or (result["handled"] == len(calls) and result["pending"] == 0) else 1


if __name__ == "__main__":
    raise SystemExit(main())
