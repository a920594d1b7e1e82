"""The load benchmark's code paths on a tiny generated corpus (it measures nothing here; it must not rot)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_benchmark_runs_end_to_end_on_a_tiny_corpus(tmp_path):
    out, plot = tmp_path / "result.json", tmp_path / "plot.png"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "retrieval_load.py"), "--corpora", "generated",
           "--num-passages", "2000", "--levels", "1,4", "--seconds-per-level", "0.5", "--soak-seconds", "2",
           "--soak-concurrency", "4", "--num-queries", "50", "--work-dir", str(tmp_path / "work"),
           "--out", str(out), "--plot", str(plot), "--nice", "0"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    [result] = json.loads(out.read_text())["results"]
    assert result["passages"] == 2000 and [lv["clients"] for lv in result["levels"]] == [1, 4]
    assert all(lv["requests"] > 0 and lv["errors"] == 0 for lv in result["levels"])
    assert result["soak"]["requests"] > 0 and result["soak"]["anon_max_mib"] > 0
    assert plot.stat().st_size > 10_000 and "| generated | 2,000 | aiohttp | 4 |" in done.stdout
