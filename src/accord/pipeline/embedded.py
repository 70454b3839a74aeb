"""The worker that `accord up` runs beside the API: a child process, restarted if it dies.

A process rather than a thread, so the API and the worker each get a core instead of sharing one
interpreter lock. The child watches its parent and exits when the parent is gone (even by kill -9).
Each commit of the event log nudges the child through a socket pair, so an idle worker starts on new
events at once rather than at its next poll; the child answers on the same pair after each commit of its
effects, which wakes the API's live streams (`accord.pipeline.commits`).
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import structlog

log = structlog.get_logger(__name__)


class WorkerProcess:
    def __init__(self, on_commit: Callable[[], None] | None = None) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._watch = threading.Thread(target=self._supervise, name="accord-worker-supervisor", daemon=True)
        self._nudges, self._woken = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._nudges.setblocking(False)
        self._on_commit = on_commit
        self._listen = threading.Thread(target=self._hear_commits, name="accord-worker-commits", daemon=True)

    def start(self) -> None:
        self._spawn()
        self._watch.start()
        if self._on_commit is not None:
            self._listen.start()

    def nudge(self) -> None:
        """Tell the worker there are new log records; never blocks (a full buffer: it is awake anyway)."""
        with contextlib.suppress(OSError):
            self._nudges.send(b"\0")

    def _spawn(self) -> None:
        wake = self._woken.fileno()
        command = [sys.executable, "-m", "accord", "worker", "--parent-pid", str(os.getpid()), "--wake-fd", str(wake)]
        # Inherits the environment, so the same settings.
        self._process = subprocess.Popen(command, pass_fds=(wake,))

    def _hear_commits(self) -> None:
        assert self._on_commit is not None
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self._nudges], [], [], 0.5)
                if not ready:
                    continue
                while True:  # one call for every answer that has arrived
                    self._nudges.recv(64)
            except BlockingIOError:
                self._on_commit()
            except (OSError, ValueError):  # closed by stop()
                return

    def _supervise(self) -> None:
        backoff = 1.0
        while not self._stop.wait(1.0):
            if self._process is not None and self._process.poll() is not None:
                log.warning("worker process exited; restarting", code=self._process.returncode)
                time.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                if not self._stop.is_set():
                    self._spawn()

    def stop(self) -> None:
        self._stop.set()
        if self._process is None or self._process.poll() is not None:
            self._nudges.close()
            self._woken.close()
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        finally:
            self._nudges.close()
            self._woken.close()


def watch_parent(parent_pid: int, stop: threading.Event) -> None:
    """Set `stop` once `parent_pid` is no longer this process's parent."""

    def watch() -> None:
        while not stop.wait(0.5):
            if os.getppid() != parent_pid:
                log.info("parent process gone; worker stopping")
                stop.set()

    threading.Thread(target=watch, name="accord-parent-watch", daemon=True).start()


class SocketWake:
    """The worker's end of the nudges: waits like `threading.Event.wait`, for a nudge or the timeout."""

    def __init__(self, fd: int) -> None:
        self._socket = socket.socket(fileno=fd)
        self._socket.setblocking(False)

    def wait(self, timeout: float | None = None) -> bool:
        ready, _, _ = select.select([self._socket], [], [], timeout)
        return bool(ready)

    def announce(self) -> None:
        """Tell the parent this worker committed (never blocks: with a full buffer it is told anyway)."""
        with contextlib.suppress(OSError):
            self._socket.send(b"c")

    def clear(self) -> None:
        """Drop the nudges that arrived meanwhile: one pass over the log takes them all."""
        with contextlib.suppress(OSError):  # BlockingIOError: none left
            while True:
                self._socket.recv(64)
