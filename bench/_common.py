"""Shared parts of the benchmarks: the machine, a scratch store, an Accord subprocess, synthetic events.

Everything here talks to 127.0.0.1 only, bounds every wait, and cleans up what it started.
"""

from __future__ import annotations

import contextlib
import os
import platform
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

import accord
from accord.config import Settings
from accord.db import migrate
from accord.ingest.models import QuarantinedEvent
from accord.log.sql import SqlEventLog
from accord.profiles.models import ProfileEvent
from accord.runtime import Runtime, tune_gc

ACCORD = str(Path(sys.executable).parent / "accord")
HOST = "127.0.0.1"


def _stop_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so that `finally` blocks stop servers and remove temp dirs."""

    def handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


_stop_on_sigterm()


# -- the machine ---------------------------------------------------------------------------------
def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    return None


def _filesystem(path: Path) -> str:
    """The file system type that holds `path` (fsync on tmpfs costs nothing, on ext4 it does)."""
    best, kind = "", "unknown"
    target = str(path.resolve())
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and target.startswith(parts[1]) and len(parts[1]) > len(best):
                best, kind = parts[1], parts[2]
    return kind


def database_description(url: str) -> str:
    if make_url(url).get_backend_name() == "sqlite":
        return f"SQLite {sqlite3.sqlite_version} (WAL)"
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            version = connection.scalar(text("SHOW server_version"))
            sync = connection.scalar(text("SHOW synchronous_commit"))
        return f"PostgreSQL {version} (synchronous_commit={sync})"
    finally:
        engine.dispose()


def _accord_revision() -> str | None:
    """The git commit of the Accord the benchmark imported, with "+dirty" when its src/ has uncommitted
    changes: the checkout `accord` was imported from (a worktree's `src` on PYTHONPATH), not the one the
    benchmark's own files are in, which an A/B run alternating the `src` recorded for both sides."""
    root = Path(accord.__file__).resolve().parents[2]
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        clean = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "src"], cwd=root, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return None
    return rev if clean else f"{rev}+dirty"


def header(title: str, args: Any, settings: dict[str, Any]) -> dict[str, Any]:
    """Print the benchmark's title, the machine and its settings; return the machine's description."""
    with temp_dir("accord-bench-probe-", args.tmp) as probe_dir:
        info = machine(
            database_url=args.database_url or f"sqlite:///{probe_dir / 'probe.db'}",
            sqlite_synchronous=args.sqlite_synchronous,
            data_dir=probe_dir,
        )
    settings["database"] = "postgresql" if is_postgres(args.database_url) else "sqlite"
    settings["smoke"] = args.smoke
    print(title)
    print_machine(info)
    print("settings")
    for key, value in settings.items():
        print(f"  {key:<20} {value}")
    return info


def machine(*, database_url: str, sqlite_synchronous: str, data_dir: Path) -> dict[str, Any]:
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    sqlite = make_url(database_url).get_backend_name() == "sqlite"
    return {
        "cpu": _cpu_model(),
        "cores": affinity,
        "memory_gib": _memory_gib(),
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "database": database_description(database_url),
        "sqlite_synchronous": sqlite_synchronous.upper() if sqlite else None,
        "data_filesystem": _filesystem(data_dir) if sqlite else None,
        "load_avg_1m": round(os.getloadavg()[0], 2),  # other work on the machine skews every figure
        "python_loop_ms": python_loop_ms(),
        "accord_revision": _accord_revision(),
    }


def python_loop_ms(iterations: int = 1_000_000) -> float:
    """Milliseconds for one core to add up `iterations` integers in a Python loop, the best of three: how
    fast this machine runs the interpreter at this moment. Figures taken on machines (or in hours) whose
    loop times differ compare only after scaling by it; one worker is a single Python thread."""
    best = float("inf")
    for _ in range(3):
        began = time.perf_counter()
        total = 0
        for number in range(iterations):
            total += number
        best = min(best, time.perf_counter() - began)
    return round(best * 1000, 1)


# -- the store -----------------------------------------------------------------------------------
def is_postgres(url: str | None) -> bool:
    return bool(url) and make_url(url).get_backend_name() == "postgresql"  # type: ignore[arg-type]


@contextlib.contextmanager
def scratch_store(database_url: str | None, data_dir: Path, label: str) -> Iterator[str]:
    """A fresh, empty store; yields its SQLAlchemy URL and removes it afterwards.

    SQLite: a file in `data_dir`. PostgreSQL: a scratch database created on the server that
    `database_url` names (connecting through its database) and dropped at the end.
    """
    if not is_postgres(database_url):
        yield f"sqlite:///{data_dir / 'accord.db'}"
        return
    admin_url = make_url(database_url)  # type: ignore[arg-type]
    name = f"accord_bench_{label}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def open_runtime(url: str, sqlite_synchronous: str, data_dir: Path) -> Runtime:
    """Accord's database and event log for a store URL (on SQLite the log is a file beside it), migrated.

    `data_dir` holds the store's keys: the scratch dir the store was made in, which `accord` processes of
    the benchmark are given too. Required, so that no benchmark falls back on Accord's default data dir
    (./.accord in the checkout): with keys there, its `accord worker` processes, given the scratch dir,
    refused the store's data keys and never drained (fixed in 3a874f8).
    """
    rt = Runtime.create(Settings(database_url=url, sqlite_synchronous=sqlite_synchronous, data_dir=data_dir))
    migrate.upgrade(rt.db)
    tune_gc()  # as `accord up` and `accord worker` do once started: in-process drains measure the same
    return rt


def as_accord_worker(rt: Runtime) -> None:
    """Set an in-process drain up as `accord worker` sets itself up (SQLite): write-ahead logs checkpointed
    on threads, commits that do not wait for the disk, acknowledgements that do, the worker's page cache."""
    rt.db.checkpoint_in_background()
    rt.log.db.checkpoint_in_background()
    rt.log.acknowledge_when_durable(rt.db)
    rt.db.keep_pages(rt.settings.worker_cache_mib)


def stored_events(url: str, sqlite_synchronous: str, data_dir: Path) -> int:
    """Events Accord holds: still in the event log, in the timeline, or in quarantine. `data_dir` holds the
    store's keys (on PostgreSQL, the data dir the store was made with)."""
    rt = open_runtime(url, sqlite_synchronous, data_dir)
    try:
        with rt.db.read() as session:
            kept = session.scalar(select(func.count()).select_from(ProfileEvent)) or 0
            kept += session.scalar(select(func.count()).select_from(QuarantinedEvent)) or 0
        return int(kept) + rt.log.pending()
    finally:
        rt.close()


# -- an Accord subprocess ------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass
class Accord:
    """Runs the `accord` command against one data directory (and database URL, if given)."""

    data_dir: Path
    database_url: str | None
    sqlite_synchronous: str
    port: int = field(default_factory=free_port)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    settings: dict[str, str] = field(default_factory=dict)  # further ACCORD_* settings for its processes

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ACCORD_")}
        env.update(
            ACCORD_DATA_DIR=str(self.data_dir),
            ACCORD_PORT=str(self.port),
            ACCORD_HOST=HOST,
            ACCORD_SQLITE_SYNCHRONOUS=self.sqlite_synchronous,
            ACCORD_LOG_LEVEL="warning",
            # The tracking limit stays at its default (2000 requests/s per write key, above what the
            # clients send), so its cost is measured; the latency probes poll faster than the API's.
            ACCORD_RATE_LIMIT_API="0",
        )
        if self.database_url:
            env["ACCORD_DATABASE_URL"] = self.database_url
        env.update(self.settings)
        return env

    def cli(self, *args: str, timeout: float = 120) -> dict[str, Any]:
        """Run `accord ARGS --json` and return the JSON it prints."""
        done = subprocess.run(
            [ACCORD, *args, "--json"], env=self.env(), capture_output=True, timeout=timeout, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"accord {' '.join(args)} failed: {done.stderr.decode()[-2000:]}")
        lines = [line for line in done.stdout.decode().splitlines() if line.startswith("{")]
        return dict(orjson.loads(lines[-1]))

    def _spawn(self, role: str) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            [ACCORD, role],
            env=self.env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own process group, so that stop() reaches every child
        )
        self.processes.append(process)
        return process

    def start(self, role: str, timeout: float = 60.0) -> None:
        """Start `accord serve` or `accord up` and wait until /readyz answers 200."""
        process = self._spawn(role)
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.base_url, timeout=2) as client:
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    raise RuntimeError(f"accord {role} exited with {process.returncode} on start")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get("/readyz").status_code == 200:
                        return
                time.sleep(0.1)
        raise RuntimeError(f"accord {role} did not become ready within {timeout:.0f} s")

    def start_workers(self, count: int) -> None:
        """Start `count` `accord worker` processes (the scale-out role)."""
        for _ in range(count):
            self._spawn("worker")

    def stop(self) -> None:
        while self.processes:
            stop_process(self.processes.pop())

    def __enter__(self) -> Accord:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def drain_with_subprocesses(
    count: int,
    data_dir: Path,
    url: str,
    sqlite_synchronous: str,
    log: SqlEventLog,
    total: int,
    settings: dict[str, str] | None = None,
) -> tuple[int, float]:
    """Start `count` `accord worker` processes (with further ACCORD_* `settings`) on the store at `url`
    and watch the log's pending count until it is empty; returns (events timed, seconds)."""
    workers = Accord(
        data_dir=data_dir,
        database_url=url if is_postgres(url) else None,
        sqlite_synchronous=sqlite_synchronous,
        settings=dict(settings or {}),
    )
    with workers:
        workers.start_workers(count)
        # Timed from the first commit seen: worker start-up (imports, migrations) is not throughput.
        first_progress: float | None = None
        left_at_first = total
        deadline = time.monotonic() + max(300.0, total / 100)
        pending = total
        while time.monotonic() < deadline:
            pending = log.pending()
            now = time.monotonic()
            if first_progress is None and pending < total:
                first_progress, left_at_first = now, pending
            if pending == 0:
                return left_at_first, now - (first_progress or now)
            time.sleep(0.02)
    raise RuntimeError(f"the workers left {pending} events unprocessed")


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """Stop a process started with start_new_session=True, and its children: TERM, then KILL."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)


@contextlib.contextmanager
def temp_dir(prefix: str, root: str | None) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix=prefix, dir=root) as name:
        yield Path(name)


def default_synchronous() -> str:
    return Settings().sqlite_synchronous


# -- synthetic Segment events --------------------------------------------------------------------
FIRST = ("Ann", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hugo", "Ines", "Jon", "Kemal", "Lena")
LAST = ("Smith", "Jones", "Garcia", "Okafor", "Nguyen", "Muller", "Rossi", "Kowalski", "Silva", "Tanaka")
PLANS = ("free", "basic", "pro", "enterprise")
COUNTRIES = ("GB", "DE", "FR", "NL", "ES", "IT", "PL", "SE", "US", "CA")
LOCALES = ("en-GB", "de-DE", "fr-FR", "nl-NL", "es-ES", "it-IT", "en-US")
PAGES = (
    ("/", "Home"),
    ("/pricing", "Pricing"),
    ("/products/running-shoes", "Running shoes"),
    ("/products/rain-jacket", "Rain jacket"),
    ("/cart", "Your cart"),
    ("/checkout", "Checkout"),
    ("/help/returns", "Returns and refunds"),
    ("/account/orders", "Your orders"),
)
TRACKS = ("Product Viewed", "Product Added", "Cart Viewed", "Checkout Started", "Order Completed", "Signed Up")
AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/126.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) Mobile/15E148",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) Version/17.5 Safari/605",
    "Mozilla/5.0 (X11; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0",
)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def message_id(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def event(
    rng: random.Random,
    kind: str,
    *,
    at: datetime,
    anonymous_id: str | None = None,
    user_id: str | None = None,
    traits: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One Segment call as analytics.js would send it: about 300-500 bytes of JSON."""
    path, title = rng.choice(PAGES)
    call: dict[str, Any] = {
        "type": kind,
        "messageId": message_id(rng),
        "timestamp": iso(at),
        "context": {
            "library": {"name": "analytics.js", "version": "5.2.1"},
            "locale": rng.choice(LOCALES),
            "userAgent": rng.choice(AGENTS),
            "page": {"path": path},
        },
    }
    if anonymous_id is not None:
        call["anonymousId"] = anonymous_id
    if user_id is not None:
        call["userId"] = user_id
    if kind == "track":
        call["event"] = rng.choice(TRACKS)
        call["properties"] = {
            "product_id": f"sku-{rng.randrange(10_000):05d}",
            "price": round(rng.uniform(5, 250), 2),
            "currency": "EUR",
            "quantity": rng.randint(1, 3),
        }
    elif kind == "page":
        call["name"] = title
        call["properties"] = {"path": path, "title": title, "url": f"https://shop.example.com{path}"}
    elif kind == "identify":
        call["traits"] = traits or {}
    return call


def random_traits(rng: random.Random, n: int) -> dict[str, Any]:
    first, last = rng.choice(FIRST), rng.choice(LAST)
    return {
        "email": f"{first.lower()}.{last.lower()}.{n}@example.com",
        "firstName": first,
        "lastName": last,
        "plan": rng.choice(PLANS),
        "country": rng.choice(COUNTRIES),
    }


def random_events(rng: random.Random, count: int, *, users: int = 10_000) -> list[dict[str, Any]]:
    """`count` independent calls over a pool of users (for ingest, where identity does not matter)."""
    now = datetime.now(UTC)
    calls = []
    for _ in range(count):
        n = rng.randrange(users)
        kind = rng.choices(("track", "page", "identify"), weights=(6, 3, 1))[0]
        known = rng.random() < 0.6
        calls.append(
            event(
                rng,
                kind,
                at=now - timedelta(seconds=rng.uniform(0, 60)),
                anonymous_id=str(uuid.UUID(int=n + 1)),
                user_id=f"user-{n}" if known or kind == "identify" else None,
                traits=random_traits(rng, n) if kind == "identify" else None,
            )
        )
    return calls


def customer_journeys(rng: random.Random, events: int, customers: int) -> list[dict[str, Any]]:
    """`events` calls from `customers` people over the last week, ordered by time.

    Each person uses 1-3 devices (one anonymous id each); 70% log in on each of their devices
    (an identify that links the device to the user id, merging the device's anonymous profile);
    the rest stay anonymous. Pages and tracks make up the rest.
    """
    now = datetime.now(UTC)
    timed: list[tuple[datetime, dict[str, Any]]] = []
    per_customer, extra = divmod(events, customers)
    for n in range(customers):
        budget = per_customer + (1 if n < extra else 0)
        if budget == 0:
            continue
        devices = [message_id(rng) for _ in range(min(rng.choice((1, 1, 2, 2, 3)), max(1, budget // 3)))]
        identified = rng.random() < 0.7
        user_id = f"cust-{n:06d}"
        traits = random_traits(rng, n)
        at = now - timedelta(days=rng.uniform(1, 7))
        shares = [budget // len(devices) + (1 if i < budget % len(devices) else 0) for i in range(len(devices))]
        for device, share in zip(devices, shares, strict=True):
            login_at = rng.randrange(1, share) if identified and share > 1 else (0 if identified else share)
            for i in range(share):
                at += timedelta(seconds=rng.expovariate(1 / 300))
                logged_in = identified and i >= login_at
                login = identified and i == login_at
                kind = "identify" if login else rng.choices(("page", "track"), weights=(6, 4))[0]
                timed.append(
                    (
                        at,
                        event(
                            rng,
                            kind,
                            at=at,
                            anonymous_id=device,
                            user_id=user_id if logged_in else None,
                            traits=dict(traits) if kind == "identify" else None,
                        ),
                    )
                )
    timed.sort(key=lambda pair: pair[0])
    return [call for _, call in timed]


def batches(calls: Sequence[dict[str, Any]], size: int) -> list[list[dict[str, Any]]]:
    return [list(calls[i : i + size]) for i in range(0, len(calls), size)]


# -- figures -------------------------------------------------------------------------------------
def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    """p50, p95, p99 and max by the nearest-rank method; None when there are no values."""
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    ordered = sorted(values)

    def rank(q: float) -> float:
        index = max(0, min(len(ordered) - 1, int(-(-q * len(ordered) // 1)) - 1))
        return ordered[index]

    return {"p50": rank(0.50), "p95": rank(0.95), "p99": rank(0.99), "max": ordered[-1]}


def print_machine(info: dict[str, Any]) -> None:
    print("machine")
    for key, value in info.items():
        if value is not None:
            print(f"  {key:<20} {value}")


def print_json_line(payload: dict[str, Any]) -> None:
    """The machine-readable summary: always the last line of the output."""
    sys.stdout.flush()
    print(orjson.dumps(payload).decode(), flush=True)
