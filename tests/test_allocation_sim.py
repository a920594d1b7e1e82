"""The allocation simulator's CLI in --quick mode: JSON shape and the budget invariant (not the
goals: those are benchmark results, docs/benchmarks.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from verl_trace.allocation import ALLOCATORS

ROOT = Path(__file__).resolve().parents[1]
STAT_FIELDS = ("effective_sample_ratio", "mixed_root_ratio", "informative_per_1k_tokens", "generated_tokens", "makespan_vs_uniform")


@pytest.mark.slow
def test_quick_run_writes_results_with_equal_leaves(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "allocation_sim.py"), "--out", str(out), "--quick",
         "--plot", str(tmp_path / "plot.png"), "--markdown", str(tmp_path / "tables.md")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert "default" in res["regimes"]
    for regime, allocs in res["regimes"].items():
        assert set(allocs) == set(ALLOCATORS), regime
        for name, r in allocs.items():
            where = f"{regime}/{name}"
            assert r["leaves_equal_budget"] is True, where
            assert r["leaves"] == r["budget_leaves"] == res["settings"]["batch_prompts"][regime] * res["settings"]["leaves_per_prompt"][regime], where
            for f in STAT_FIELDS:
                assert set(r[f]) == {"mean", "std"}, (where, f)
            assert r["generated_tokens"]["mean"] > 0, where
            assert 0.0 <= r["effective_sample_ratio"]["mean"] <= 1.0, where
        assert allocs["uniform"]["makespan_vs_uniform"]["mean"] == pytest.approx(1.0)
    for name in ("beta", "shared", "hybrid", "oracle"):
        assert set(res["predictors"][name]) >= {"brier", "ece", "auc"}
    planner = res["planner"]
    assert planner["prompts"] == 512 and planner["leaves_per_prompt"] == 16
    assert planner["ms_per_step"]["median"] > 0
    assert (tmp_path / "plot.png").stat().st_size > 0
    assert "| trace |" in (tmp_path / "tables.md").read_text()


def test_bad_regime_names_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\ndifficulty:\n  components: []\nturns:\n  walk_std: -1\n")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "allocation_sim.py"), "--out", str(tmp_path / "r.json"),
         "--regimes", str(bad), "--quick"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "difficulty.components" in proc.stdout and "turns.walk_std" in proc.stdout
    assert not (tmp_path / "r.json").exists()
