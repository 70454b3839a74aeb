"""The worker that `accord up` runs beside the API: a child process, restarted if it dies.

A process rather than a thread, so the API and the worker each get a core instead of sharing one
interpreter lock. The child watches its parent and exits when the parent is gone (even by kill -9).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import structlog

log = structlog.get_logger(__name__)


class WorkerProcess:
    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._watch = threading.Thread(target=self._supervise, name="accord-worker-supervisor", daemon=True)

    def start(self) -> None:
        self._spawn()
        self._watch.start()

    def _spawn(self) -> None:
        command = [sys.executable, "-m", "accord", "worker", "--parent-pid", str(os.getpid())]
        self._process = subprocess.Popen(command)  # inherits the environment, so the same settings

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
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


def watch_parent(parent_pid: int, stop: threading.Event) -> None:
    """Set `stop` once `parent_pid` is no longer this process's parent."""

    def watch() -> None:
        while not stop.wait(0.5):
            if os.getppid() != parent_pid:
                log.info("parent process gone; worker stopping")
                stop.set()

    threading.Thread(target=watch, name="accord-parent-watch", daemon=True).start()
