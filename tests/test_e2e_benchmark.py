"""``benchmarks/e2e_cpu.py --quick`` end to end (real server, warm start, RL runs of two
allocators from the same checkpoint): the JSON has the shape the issue asks for and every run
spent the same leaf budget. Not the goals: a quick run learns nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_benchmark_writes_the_comparison(tmp_path):
    out = tmp_path / "results.json"
    cmd = [sys.executable, "benchmarks/e2e_cpu.py", "--quick", "--seeds", "1", "--allocators", "uniform,trace",
           "--work-dir", str(tmp_path / "work"), "--out", str(out), "--plot", str(tmp_path / "e2e.png"),
           "--no-progress"]
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = json.loads(out.read_text())
    assert 0.0 <= res["start_accuracy"] <= 1.0 and res["seeds"] == [0]
    assert set(res["allocators"]) == {"uniform", "trace"}
    for name, r in res["allocators"].items():
        assert 0.0 <= r["final_accuracy"]["mean"] <= 1.0, name
        assert r["leaves_per_step"] == 16 and r["steps"] == 3
        assert "median" in r["tokens_to_reach_uniform_final"]
        tokens = [t for t, _ in r["curve"]]
        assert tokens[0] == 0 and tokens == sorted(tokens) and tokens[-1] == r["generated_tokens"]["mean"] > 0
    # both runs started from the one warm start of seed 0
    assert (tmp_path / "work" / "seed0" / "warm_start").is_dir()
    assert (tmp_path / "e2e.png").stat().st_size > 0


def test_bad_settings_fail_before_anything_starts(tmp_path):
    cmd = [sys.executable, "benchmarks/e2e_cpu.py", "--out", str(tmp_path / "r.json"), "--work-dir",
           str(tmp_path / "work"), "--set", "rl.lr=-1"]
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "rl.lr" in proc.stderr
    assert not (tmp_path / "work").exists()
    cmd[cmd.index("--set") + 1] = "rl.steps=3"
    proc = subprocess.run([*cmd, "--allocators", "uniform,oracle"], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "oracle" in proc.stderr and "cannot run in the demo" in proc.stderr
    assert not (tmp_path / "work").exists()
