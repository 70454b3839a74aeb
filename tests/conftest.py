"""Fixtures: every storage test runs on SQLite and on PostgreSQL, against a real database.

PostgreSQL tests skip when the server is unreachable, unless ACCORD_TEST_REQUIRE_SERVICES=1
(set by .ci/run), when they fail instead.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from accord.app import create_app
from accord.config import Settings
from accord.db import migrate
from accord.db.models import Base
from accord.log.models import LogRecord
from accord.runtime import Runtime
from accord.security.service import create_token
from accord.sources.service import create_source

POSTGRES_ADMIN_URL = os.environ.get("ACCORD_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REQUIRE_SERVICES = os.environ.get("ACCORD_TEST_REQUIRE_SERVICES") == "1"
BACKENDS = ["sqlite", "postgresql"]
DEFAULT_DATA_DIR = Path(".accord").resolve()  # Settings' default data dir, in the checkout the tests run from


@pytest.fixture(autouse=True)
def _default_data_dir_left_alone() -> Iterator[None]:
    """A test that runs Accord (a command, a server) without a data dir of its own writes key files into
    the checkout's ./.accord, where they outlive the run: it fails here. Only when there was none before
    the test (`make run` makes one on purpose)."""
    before = DEFAULT_DATA_DIR.exists()
    yield
    if not before and DEFAULT_DATA_DIR.exists():
        pytest.fail(f"the test made {DEFAULT_DATA_DIR}: give what it runs ACCORD_DATA_DIR (or data_dir=) of its own")


def service_missing(what: str, error: BaseException) -> None:
    message = f"{what} is not reachable ({type(error).__name__}: {error})"
    if REQUIRE_SERVICES:
        pytest.fail(f"{message}; ACCORD_TEST_REQUIRE_SERVICES=1 demands it")
    pytest.skip(f"{message}; set ACCORD_TEST_POSTGRES_URL or start PostgreSQL to run these tests")


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A fresh database for this test session, dropped at the end."""
    name = f"accord_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as error:  # unreachable server: skip or fail, as the environment asks
        admin.dispose()
        service_missing("PostgreSQL", error)
    url = admin.url.set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def postgres_migrated(postgres_database: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    # A data dir of its own: the default (./.accord) would leave key files in the checkout.
    keys = tmp_path_factory.mktemp("migrate")
    rt = Runtime.create(Settings(database_url=postgres_database, data_dir=keys))
    migrate.upgrade(rt.db)
    rt.close()
    return postgres_database


def _truncate_postgres(url: str) -> None:
    engine = create_engine(url)
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with engine.begin() as connection:
        # The consent ledger refuses TRUNCATE through a trigger; a superuser can switch triggers off.
        connection.execute(text("SET LOCAL session_replication_role = replica"))
        connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()


def make_settings(backend: str, tmp_path: Path, request: pytest.FixtureRequest, **overrides: Any) -> Settings:
    if backend == "sqlite":
        return Settings(data_dir=tmp_path / "data", **overrides)
    url = request.getfixturevalue("postgres_migrated")
    _truncate_postgres(url)
    return Settings(data_dir=tmp_path / "data", database_url=url, **overrides)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def settings(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    return make_settings(backend, tmp_path, request)


@pytest.fixture
def rt(settings: Settings) -> Iterator[Runtime]:
    runtime = Runtime.create(settings)
    migrate.upgrade(runtime.db)
    try:
        yield runtime
    finally:
        runtime.close()


def free_port() -> int:
    """A port free now, for a server in another process (which binds it itself: a small race remains)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bound_socket() -> socket.socket:
    """A socket bound to a free port, for a `ServerThread`: no other process can take the port meanwhile."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


@dataclass
class LiveAccord:
    """A real Accord (API and worker) on a random port, with a source and an admin token."""

    rt: Runtime
    base_url: str
    write_key: str
    source_id: str
    token: str

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=30, **kwargs)

    def api(self) -> httpx.Client:
        return self.client(headers={"Authorization": f"Bearer {self.token}"})

    def pending(self) -> int:
        return self.rt.log.pending()

    def wait_processed(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.pending() > 0:
            if time.monotonic() > deadline:
                raise AssertionError(f"the worker left {self.pending()} events unprocessed")
            time.sleep(0.02)


class ServerThread:
    """Uvicorn in a thread, serving on a socket bound beforehand (`bound_socket()`).

    Binding before the thread starts closes the race in which another test process takes a port between
    its choice and uvicorn's bind, and the server thread dies with nothing but a timeout to show.
    """

    def __init__(self, app: Any, sock: socket.socket) -> None:
        self.sock = sock
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(app, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        # Generous: on a loaded two-core machine an app's startup (migrations checked, worker started) can
        # take seconds; a test waits no longer than the server needs.
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the test server's thread ended before it started (see its output above)")
            if time.monotonic() > deadline:
                raise RuntimeError("the test server did not start within 60 s")
            time.sleep(0.01)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.sock.close()


@contextmanager
def running_accord(rt: Runtime) -> Iterator[LiveAccord]:
    """A live server with an in-process worker on `rt`, a source and an admin token."""
    with rt.db.unit_of_work() as session:
        source = create_source(session, name=f"test-source-{uuid.uuid4().hex[:6]}")
        token = create_token(session, role="admin")
    with ServerThread(create_app(rt=rt, worker="thread"), bound_socket()) as server:
        yield LiveAccord(
            rt=rt,
            base_url=f"http://127.0.0.1:{server.port}",
            write_key=source.write_key,
            source_id=source.id,
            token=token.token,
        )


@pytest.fixture
def live(rt: Runtime) -> Iterator[LiveAccord]:
    with running_accord(rt) as accord:
        yield accord


def log_rows(rt: Runtime) -> int:
    from sqlalchemy import func, select

    with rt.log.db.read() as session:
        return int(session.scalar(select(func.count()).select_from(LogRecord)) or 0)


def database_text(rt: Runtime, tmp_path: Path) -> bytes:
    """Every byte Accord keeps: the SQLite files (database, WAL, the event-log file), or a pg_dump."""
    if rt.db.dialect == "sqlite":
        files = sorted(p for p in Path(rt.settings.data_dir).rglob("*") if p.is_file() and "keys" not in p.parts)
        assert any(p.name.endswith("-wal") for p in files)
        return b"\n".join(p.read_bytes() for p in files)
    url = make_url(rt.db.url)
    dump = tmp_path / "dump.sql"
    subprocess.run(
        [
            "pg_dump",
            "-h",
            url.host or "127.0.0.1",
            "-p",
            str(url.port or 5432),
            "-U",
            url.username or "postgres",
            "-f",
            str(dump),
            url.database or "",
        ],
        check=True,
        timeout=120,
    )
    text = dump.read_bytes()
    return text + b"\n" + text.lower()


def found(blob: bytes, secret: str) -> bool:
    # bytea columns are dumped as hex; look for the secret in both forms.
    return secret.encode() in blob or secret.encode().hex().encode() in blob
