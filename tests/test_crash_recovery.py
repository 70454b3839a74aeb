"""Kill -9 `accord up` during a stream of sends; after a restart every acknowledged event is there once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import httpx
from sqlalchemy import func, select

from accord.config import Settings
from accord.profiles.models import ProfileEvent
from accord.runtime import Runtime
from accord.security.service import create_token
from accord.sources.service import create_source
from conftest import free_port
from segments.test_segments_api import GOLD, create, ready


def _env(settings: Settings, port: int) -> dict[str, str]:
    env = {**os.environ, "ACCORD_DATA_DIR": str(settings.data_dir), "ACCORD_PORT": str(port)}
    if settings.database_url:
        env["ACCORD_DATABASE_URL"] = settings.database_url
    return env


@contextmanager
def accord_up(settings: Settings, port: int, **env: str) -> Iterator[subprocess.Popen[bytes]]:
    """`accord up` on `port`, started and healthy. Its output (logs and errors) goes to a file, not a pipe
    nobody reads (a full pipe would stall the server): if the block fails, the end of it and whether the
    server still ran are printed, so a failure shows the server's side too."""
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "accord", "up"],
            env=_env(settings, port) | {"PYTHONUNBUFFERED": "1"} | env,  # its logs reach the file as written
            stdout=output,
            stderr=output,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert process.poll() is None, f"accord up exited with {process.returncode}: {_tail(output)}"
                assert time.monotonic() < deadline, f"accord up did not start: {_tail(output)}"
                time.sleep(0.05)
            yield process
        except Exception:
            state = "still running" if process.poll() is None else f"exited with {process.returncode}"
            print(f"accord up was {state}; its output ended with:\n{_tail(output)}", file=sys.stderr)
            raise
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def _tail(file: IO[bytes], size: int = 20_000) -> str:
    file.flush()
    file.seek(max(0, os.fstat(file.fileno()).st_size - size))
    return file.read().decode(errors="replace")


def children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process ended while we looked
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state != "Z"  # a zombie has exited; only its parent's wait is missing


def test_kill_9_loses_no_acknowledged_event(rt: Runtime, settings: Settings) -> None:
    with rt.db.unit_of_work() as session:
        write_key = create_source(session, name="crash").write_key
    port = free_port()
    acked: list[list[str]] = []
    stop = threading.Event()

    def send_forever() -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", auth=(write_key, ""), timeout=10) as client:
            for batch_no in range(100_000):
                if stop.is_set():
                    return
                ids = [f"b{batch_no}-e{i}" for i in range(20)]
                batch = [
                    {"type": "track", "userId": f"user-{i % 5}", "event": "Tick", "messageId": m}
                    for i, m in enumerate(ids)
                ]
                try:
                    answer = client.post("/v1/batch", json={"batch": batch})
                except httpx.TransportError:
                    return  # the server died mid-request: this batch was never acknowledged
                if answer.status_code == 200:
                    acked.append(ids)

    with accord_up(settings, port) as server:
        sender = threading.Thread(target=send_forever)
        sender.start()
        deadline = time.monotonic() + 30
        while len(acked) < 40 and time.monotonic() < deadline:
            time.sleep(0.01)
        workers = children(server.pid)
        assert workers, "accord up runs its worker as a child process"
        os.kill(server.pid, signal.SIGKILL)
        server.wait()
        stop.set()
        sender.join(timeout=30)
    assert len(acked) >= 40, "the stream did not get going before the kill"
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in workers):  # the orphaned worker notices and stops
        assert time.monotonic() < deadline, "the worker outlived its killed parent"
        time.sleep(0.1)

    with accord_up(settings, port):
        # A client that did not hear the answer resends: that must not double anything.
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", auth=(write_key, ""), timeout=10) as client:
            resent = acked[-1]
            batch = [{"type": "track", "userId": "user-0", "event": "Tick", "messageId": m} for m in resent]
            assert client.post("/v1/batch", json={"batch": batch}).status_code == 200
        deadline = time.monotonic() + 60
        while True:
            if rt.log.pending() == 0:
                break
            assert time.monotonic() < deadline, "the restarted worker did not drain the log"
            time.sleep(0.05)

    wanted = [m for ids in acked for m in ids]
    with rt.db.read() as session:
        stored = session.scalars(select(ProfileEvent.message_id).where(ProfileEvent.message_id.in_(wanted))).all()
        total = session.scalar(select(func.count()).select_from(ProfileEvent))
    assert sorted(stored) == sorted(wanted)  # each acknowledged event exactly once
    assert total is not None
    assert total >= len(wanted)


def test_accord_up_restarts_a_worker_that_dies(rt: Runtime, settings: Settings) -> None:
    with rt.db.unit_of_work() as session:
        write_key = create_source(session, name="restart").write_key
    port = free_port()
    with accord_up(settings, port) as server:
        deadline = time.monotonic() + 30
        while not (first := children(server.pid)):
            assert time.monotonic() < deadline, "no worker child started"
            time.sleep(0.1)
        os.kill(first[0], signal.SIGKILL)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", auth=(write_key, ""), timeout=10) as client:
            answer = client.post("/v1/track", json={"userId": "u1", "event": "After", "messageId": "after-1"})
        assert answer.status_code == 200  # the API stays up while the worker is down
        deadline = time.monotonic() + 60
        while rt.log.pending() > 0:
            assert time.monotonic() < deadline, "no new worker processed the event"
            time.sleep(0.1)
        assert [pid for pid in children(server.pid) if alive(pid)] != first
    with rt.db.read() as session:
        stored = session.scalars(select(ProfileEvent.message_id)).all()
    assert stored == ["after-1"]


def test_the_api_nudges_an_idle_worker_child(rt: Runtime, settings: Settings) -> None:
    """The worker child polls only every ten minutes here. Each round, once it has processed a first event
    and gone idle, a second event is processed at once: through the nudge that each commit of the log
    sends it. The second round's worker is a restarted one."""
    with rt.db.unit_of_work() as session:
        write_key = create_source(session, name="nudge").write_key
    port = free_port()

    def send_and_wait(client: httpx.Client, message_id: str) -> None:
        answer = client.post("/v1/track", json={"userId": "u1", "event": "Nudged", "messageId": message_id})
        assert answer.status_code == 200
        deadline = time.monotonic() + 60
        while rt.log.pending() > 0:
            assert time.monotonic() < deadline, f"{message_id} was not processed: the idle worker was not nudged"
            time.sleep(0.05)

    with (
        accord_up(settings, port, ACCORD_WORKER_POLL_INTERVAL="600") as server,
        httpx.Client(base_url=f"http://127.0.0.1:{port}", auth=(write_key, ""), timeout=10) as client,
    ):
        killed: list[int] = []
        for round_ in range(2):
            send_and_wait(client, f"first-{round_}")
            time.sleep(1.0)  # the worker found the log empty again and waits
            send_and_wait(client, f"second-{round_}")
            workers = [pid for pid in children(server.pid) if alive(pid) and pid not in killed]
            os.kill(workers[0], signal.SIGKILL)
            killed.append(workers[0])
    with rt.db.read() as session:
        stored = sorted(session.scalars(select(ProfileEvent.message_id)).all())
    assert stored == ["first-0", "first-1", "second-0", "second-1"]


def test_the_worker_child_wakes_the_apis_streams(rt: Runtime, settings: Settings) -> None:
    """The streams of `accord up` poll only every minute here, longer than the wait below: a segment entry
    still reaches an open stream, because the worker child reports each commit back to the API process."""
    with rt.db.unit_of_work() as session:
        write_key = create_source(session, name="wake").write_key
        token = create_token(session, role="admin").token
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    with (
        accord_up(settings, port, ACCORD_STREAM_POLL_SECONDS="60"),
        httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as api,
    ):
        assert create(api, "gold", GOLD).status_code == 201
        ready(api, "gold", timeout=60)

        def upgrade() -> None:
            event = {"userId": "kim", "traits": {"plan": "gold"}, "messageId": "wake-1"}
            httpx.post(f"{base_url}/v1/identify", json=event, auth=(write_key, ""), timeout=30).raise_for_status()

        received: list[bytes] = []
        with api.stream("GET", "/api/v1/stream?segment=gold") as response:
            assert response.status_code == 200
            threading.Timer(0.3, upgrade).start()
            for line in response.iter_lines():  # the stream ends by itself after 25 s
                if line.startswith("data: "):
                    received.append(line.encode())
                    break
    assert len(received) == 1
    assert b'"entered"' in received[0]
