"""The benchmarks run end to end in smoke mode and print their JSON summary. Never asserts a rate."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
MACHINE_KEYS = {"cpu", "cores", "memory_gib", "python", "python_loop_ms", "database", "sqlite_synchronous"}

pytestmark = pytest.mark.slow


def run_smoke(script: str, tmp_path: Path, timeout: float = 240, *more: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(BENCH / script), "--smoke", "--tmp", str(tmp_path), *more],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert lines, done.stderr[-3000:]
    summary = json.loads(lines[-1])
    assert summary["machine"].keys() >= MACHINE_KEYS
    assert list(tmp_path.iterdir()) == [], "the benchmark left temp files behind"
    return dict(summary)


def test_ingest_smoke(tmp_path: Path) -> None:
    summary = run_smoke("ingest.py", tmp_path)
    assert summary["benchmark"] == "ingest"
    assert {"events", "clients", "batch_size", "database"} <= summary["settings"].keys()
    assert {"events", "seconds", "events_per_s", "stored_events"} <= summary["direct"].keys()
    assert set(summary["http"]) == {"serve", "up"}
    for run in summary["http"].values():
        assert {"events_acked", "seconds", "events_per_s", "errors", "request_ms", "stored_events"} <= run.keys()
        assert run["errors"] == 0
        assert run["stored_events"] >= run["events_acked"] == summary["settings"]["events"]


def test_e2e_smoke(tmp_path: Path) -> None:
    summary = run_smoke("e2e.py", tmp_path)
    assert summary["benchmark"] == "e2e"
    throughput = summary["throughput"]
    assert {"events", "handled", "seconds", "events_per_s", "profiles", "merges", "pending"} <= throughput.keys()
    assert throughput["pending"] == 0
    assert throughput["handled"] == throughput["events"]
    latency = summary["latency"]
    assert {"offered_per_s", "samples", "p50_ms", "p95_ms", "p99_ms", "max_ms", "ack_ms"} <= latency.keys()
    assert latency["samples"] > 0
    assert latency["errors"] == 0


def test_consent_smoke(tmp_path: Path) -> None:
    summary = run_smoke("consent.py", tmp_path)
    assert summary["benchmark"] == "consent"
    assert {"records", "appends", "batched", "batch_size", "chunk", "database"} <= summary["settings"].keys()
    append = summary["append"]
    for run in (append["single"], append["batched"]):
        assert {"seconds", "appends_per_s"} <= run.keys()
    assert {"p50", "p99"} <= append["single"]["append_ms"].keys()
    assert append["verify"]["ok"]
    total = summary["settings"]["appends"] + summary["settings"]["batched"]
    assert append["receipts"] == append["verify"]["records"] == total
    verify = summary["verify"]
    assert {"build", "seconds", "records_per_s", "report"} <= verify.keys()
    assert verify["report"]["ok"]
    assert verify["report"]["records"] == verify["report"]["evidence_checked"] == summary["settings"]["records"]
    assert verify["report"]["checkpoints"] == verify["build"]["checkpoints"] > 0


@pytest.mark.timeout(660)
def test_linkage_smoke(tmp_path: Path) -> None:
    summary = run_smoke("linkage.py", tmp_path, timeout=600)
    assert summary["benchmark"] == "linkage"
    for name in ("febrl3", "febrl4"):
        result = summary[name]
        assert result["records"] > 0
        for scored in (result["merged_by_dedupe"], result["profiles"]):
            assert {"precision", "recall", "f1", "pairs_found", "true_pairs"} <= scored.keys()
            assert 0 <= scored["f1"] <= 1
        assert {"ingest", "train", "dedupe"} <= result["seconds"].keys()
    latency = summary["latency"]
    assert latency["queries"] > 0
    assert {"p50_ms", "p95_ms", "p99_ms", "max_ms", "service_p50_ms", "service_p99_ms"} <= latency.keys()


def test_import_smoke(tmp_path: Path) -> None:
    summary = run_smoke("import.py", tmp_path)
    assert summary["benchmark"] == "import"
    assert summary["failures"] == []
    first = summary["import"]
    assert first["rows"] == first["imported"] == first["appended"] == summary["settings"]["rows"]
    assert first["reconciles"]
    assert summary["reimport"]["appended"] == 0
    assert summary["process"]["events"] == first["rows"]


def test_audit_smoke(tmp_path: Path) -> None:
    summary = run_smoke("audit.py", tmp_path)
    assert summary["benchmark"] == "audit"
    assert summary["append"]["verified"] is True
    assert {"p50", "p95", "p99", "max"} <= summary["read"]["audited_ms"].keys()
    assert summary["read"]["audit_records"] >= summary["read"]["reads"]
    assert summary["verify"]["ok"] is True
    assert summary["verify"]["verified_records"] == summary["settings"]["records"]


@pytest.mark.parametrize("flag", ["--batch-size", "--max-batch-size", "--run-events", "--events"])
@pytest.mark.parametrize("value", ["0", "-5"])
def test_segments_refuses_sizes_below_one(flag: str, value: str) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH / "segments.py"), flag, value], capture_output=True, text=True, check=False
    )
    assert done.returncode == 2
    assert "sizes must be positive" in done.stderr


def test_segments_drained_by_worker_processes_smoke(tmp_path: Path) -> None:
    summary = run_smoke("segments.py", tmp_path, 240, "--parts", "throughput", "--workers", "2")
    assert summary["settings"]["workers"] == 2
    for run in summary["throughput"]:
        assert run["pending"] == 0
        assert run["events_stored"] + run["quarantined"] == summary["settings"]["events"]
        assert 0 < run["handled"] <= summary["settings"]["events"]  # timed from the workers' first commit
        assert run["longest_run_ms"] is None  # runs are not seen from the bench's process
    assert summary["throughput"][1]["memberships"] > 0


def test_segments_smoke(tmp_path: Path) -> None:
    summary = run_smoke("segments.py", tmp_path)
    assert summary["benchmark"] == "segments"
    without, with_segments = summary["throughput"]
    assert (without["segments"], with_segments["segments"]) == (0, 50)
    assert (without["journeys"], with_segments["journeys"]) == (0, 5)
    assert without["positions"] == 0
    assert with_segments["positions"] > 0
    for run in (without, with_segments):
        assert run["pending"] == 0
        assert run["handled"] == summary["settings"]["events"]
    assert without["memberships"] == 0
    assert with_segments["memberships"] > 0
    assert summary["settings"]["batch_size"] == 500  # ACCORD_WORKER_BATCH_SIZE's default
    assert summary["settings"]["max_batch_size"] == 4000  # ACCORD_WORKER_MAX_BATCH_SIZE's default
    assert all(run["longest_run_ms"] > 0 for run in (without, with_segments))
    assert summary["settings"]["workers"] == 0
    backfill = summary["backfill"]
    assert backfill["profiles"] == summary["settings"]["profiles"]
    assert 0 < backfill["members"] < backfill["profiles"]
    assert backfill["events"]["profiles"] == backfill["profiles"]
    assert 0 < backfill["events"]["members"] < backfill["profiles"]
    assert backfill["properties"]["profiles"] == backfill["profiles"]
    assert 0 < backfill["properties"]["members"] < backfill["events"]["members"]
    history = summary["history"]
    assert history["pending"] == 0
    assert [step["history"] for step in history["steps"]] == [10, 100]  # --smoke: up to 100
    assert all(step["runs"] == 10 for step in history["steps"])
    latency = summary["latency"]
    assert latency["samples"] > 0
    assert latency["errors"] == 0
    assert {"p50_ms", "p95_ms", "p99_ms", "max_ms"} <= latency.keys()
    assert latency["stage"]["samples"] > 0
    runs = summary["runs"]
    assert runs["runs"] > 0
    assert runs["pending"] == 0
    assert runs["events"] <= runs["runs"] * runs["run_events"]
    assert runs["statements_per_run"] > 0
    assert {"p50", "p95", "p99", "max"} <= runs["commit_ms"].keys()


def test_backlog_smoke(tmp_path: Path) -> None:
    summary = run_smoke("backlog.py", tmp_path)
    assert summary["benchmark"] == "backlog"
    assert summary["settings"]["max_batch_size"] == 4000  # ACCORD_WORKER_MAX_BATCH_SIZE's default
    assert summary["settings"]["yield_seconds"] == 10  # ACCORD_WORKER_YIELD_SECONDS's default
    backlog = summary["backlog"]
    assert backlog["events"] == summary["settings"]["events"]
    assert backlog["reads"] >= 1
    assert {"p50", "p95", "p99", "max"} <= backlog["read_ms"].keys()


def test_backlog_smoke_without_reads(tmp_path: Path) -> None:
    summary = run_smoke("backlog.py", tmp_path, 240, "--no-reads", "--yield-seconds", "0")
    assert summary["settings"]["reads"] is False
    assert summary["settings"]["yield_seconds"] == 0
    assert summary["backlog"]["events"] == summary["settings"]["events"]
    assert summary["backlog"]["reads"] == 0
    assert summary["backlog"]["read_ms"] == {}


@pytest.mark.parametrize("value", ["0", "-5"])
def test_backlog_refuses_sizes_below_one(value: str) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH / "backlog.py"), "--max-batch-size", value],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert "sizes must be positive" in done.stderr


def test_backlog_refuses_a_negative_yield() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH / "backlog.py"), "--yield-seconds", "-1"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert "--yield-seconds must be 0 or more" in done.stderr


def test_instructions_smoke(tmp_path: Path) -> None:
    summary = run_smoke("instructions.py", tmp_path)
    assert summary["benchmark"] == "instructions"
    assert summary["settings"]["drain"] is True
    assert summary["drain"]["handled"] == summary["settings"]["events"]
    assert summary["drain"]["pending"] == 0
    baseline = run_smoke("instructions.py", tmp_path, 240, "--no-drain")
    assert baseline["drain"]["handled"] == 0
