"""`accord worker` runs its worker with the worker settings of its environment."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO

import pytest


def _lines(stream: IO[bytes], into: queue.Queue[str | None]) -> None:
    for line in stream:
        into.put(line.decode(errors="replace"))
    into.put(None)


def _started(env: dict[str, str]) -> dict[str, object]:
    """The worker's "worker started" log line (JSON), read from a real `accord worker`, which is then stopped."""
    process = subprocess.Popen(
        [sys.executable, "-m", "accord", "worker"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    assert process.stdout is not None
    lines: queue.Queue[str | None] = queue.Queue()
    reader = threading.Thread(target=_lines, args=(process.stdout, lines), daemon=True)
    reader.start()
    seen: list[str] = []
    try:
        while True:
            line = lines.get(timeout=120)
            assert line is not None, "accord worker exited:\n" + "".join(seen)
            seen.append(line)
            if '"worker started"' in line:
                return dict(json.loads(line))
    finally:
        process.terminate()
        code = process.wait(timeout=30)
        reader.join(timeout=30)
        process.stdout.close()
        assert code == 0, "".join(seen)


def test_accord_worker_takes_its_settings_from_the_environment(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "ACCORD_DATA_DIR": str(tmp_path / "data"),
        "ACCORD_WORKER_BATCH_SIZE": "77",
        "ACCORD_WORKER_MAX_BATCH_SIZE": "1234",
        "ACCORD_WORKER_YIELD_SECONDS": "3.5",
        "ACCORD_WORKER_CACHE_MIB": "32",
    }
    env.pop("ACCORD_DATABASE_URL", None)
    started = _started(env)
    assert started["batch_size"] == 77
    assert started["max_batch_size"] == 1234
    assert started["yield_seconds"] == 3.5
    assert started["page_cache_mib"] == 32


@pytest.mark.parametrize(
    ("setting", "value"),
    [("ACCORD_WORKER_BATCH_SIZE", "0"), ("ACCORD_WORKER_YIELD_SECONDS", "-1"), ("ACCORD_WORKER_CACHE_MIB", "lots")],
)
def test_accord_worker_refuses_a_bad_setting(tmp_path: Path, setting: str, value: str) -> None:
    env = {**os.environ, "ACCORD_DATA_DIR": str(tmp_path / "data"), setting: value}
    env.pop("ACCORD_DATABASE_URL", None)
    done = subprocess.run(
        [sys.executable, "-m", "accord", "worker"], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode != 0
    assert setting.removeprefix("ACCORD_").lower() in (done.stdout + done.stderr)
