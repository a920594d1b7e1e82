"""The learning simulator (benchmarks/learning_sim.py): the task's exact probabilities, the
summary statistics, the JSON the issue asks for, and that the oracle allocator learns faster than
uniform (a benchmark property that can fail, checked at a small size)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.learnsim.policy import SoftmaxPolicy  # noqa: E402
from benchmarks.learnsim.run import RunSpec, Settings, reference, run  # noqa: E402
from benchmarks.learnsim.stats import crossing, summarize  # noqa: E402
from benchmarks.learnsim.task import Task, TaskSettings  # noqa: E402


def test_exact_return_matches_sampling():
    """The backward recursion's success probability equals the Monte Carlo success rate."""
    task = Task(TaskSettings(train_prompts=8, eval_prompts=4), seed=3)
    policy = SoftmaxPolicy(task, 3, init_scale=0.5, init_alignment=0.5)
    ids = np.arange(6)
    probs = policy.probs(ids)
    exact = task.success_tables(ids, policy.right_probability(ids, probs))[:, 0, 0]
    rng = np.random.default_rng(0)
    n = 40_000
    for j, i in enumerate(ids):
        right = np.zeros(n)
        for t in range(task.hops[i]):
            a = (rng.random(n)[:, None] > np.cumsum(probs[j, t])[None, :]).sum(1)
            right += a == task.right[i, t]
        z = task.difficulty[i] + task.s.gain * right - task.s.loss * (task.hops[i] - right)
        mc = (rng.random(n) < 1 / (1 + np.exp(-z))).mean()
        assert mc == pytest.approx(exact[j], abs=4 * math.sqrt(exact[j] * (1 - exact[j]) / n) + 1e-3)


def test_crossing_interpolates_and_reports_unreached():
    curve = [[0, 0.1], [100, 0.3], [200, 0.5]]
    assert crossing(curve, 0.4) == pytest.approx(150.0)
    assert crossing(curve, 0.1) == 0.0
    assert crossing(curve, 0.6) == math.inf


def _small(steps: int = 20, **train) -> Settings:
    return Settings.model_validate({"train": {"steps": steps, **train}, "task": {"eval_prompts": 256}})


def test_equal_tokens_budget_matches_uniforms_tokens_per_step():
    s = _small(steps=8, budget="tokens", token_horizon=1.0)
    uni = run(RunSpec("uniform", "uniform"), s, 0)
    ref = reference(uni)
    tr = run(RunSpec("tree_random", "tree_random"), s, 0, ref)
    tokens = [row["tokens"] for row in tr["steps"][:8]]
    leaves = [row["leaves"] for row in tr["steps"][:8]]
    assert max(leaves[1:]) > 128  # prefix sharing turned into more leaves
    assert sum(tokens) == pytest.approx(ref.tokens, rel=0.1)


def test_oracle_learns_faster_than_uniform():
    """With the true success probabilities, TRACE's rule reaches uniform's return with fewer tokens
    and ends higher, paired over seeds (the property docs/benchmarks.md reports at 50 seeds)."""
    s = _small()
    results = {"uniform": [], "oracle": []}
    for seed in range(8):
        uni = run(RunSpec("uniform", "uniform"), s, seed)
        results["uniform"].append(uni)
        results["oracle"].append(run(RunSpec("oracle", "oracle"), s, seed, reference(uni)))
    paired = summarize(results, s.train.steps, s.train.eval_every)["paired_vs_uniform"]["oracle"]
    assert paired["tokens_ratio"]["median"] < 0.9, paired
    assert paired["final_return_diff"]["mean"] > 0, paired


@pytest.mark.slow
def test_cli_writes_the_issue_json(tmp_path: Path):
    out = tmp_path / "r.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "learning_sim.py"), "--out", str(out), "--quick", "--seeds", "3",
         "--runs", "uniform", "trace", "tree_random", "trace_pf1=trace:allocation.pool_factor=1",
         "--plot", str(tmp_path / "p.png"), "--markdown", str(tmp_path / "t.md")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["seeds"] == 3 and res["budget"] == "leaves"
    assert res["target_return"] == res["allocators"]["uniform"]["final_return"]["mean"]
    labels = {"uniform", "trace", "tree_random", "trace_pf1"}
    assert set(res["allocators"]) == labels and set(res["paired_vs_uniform"]) == labels - {"uniform"}
    for a in res["allocators"].values():
        assert set(a["final_return"]) == {"mean", "ci95"} and len(a["final_return"]["ci95"]) == 2
        assert set(a["tokens_to_target"]) == {"median", "reached"} and 0 <= a["tokens_to_target"]["reached"] <= 3
        assert len(a["per_seed"]["final_return"]) == len(a["per_seed"]["tokens_to_target"]) == 3
        curve = np.array(a["curve"], float)
        assert curve.shape[1] == 2 and (np.diff(curve[:, 0]) > 0).all()
    for p in res["paired_vs_uniform"].values():
        assert set(p["tokens_ratio"]) == {"median", "ci95"} and set(p["final_return_diff"]) == {"mean", "ci95"}
    assert res["runs"]["trace_pf1"]["overrides"] == {"allocation": {"pool_factor": 1.0}}
    assert res["diagnostics"]["uniform"]["leaves"] == 8 * 8
    assert (tmp_path / "p.png").stat().st_size > 0 and "| trace |" in (tmp_path / "t.md").read_text()


@pytest.mark.parametrize("args, match", [
    (["--runs", "trace"], "must include 'uniform'"),
    (["--runs", "uniform", "x=nope"], "unknown allocator"),
    (["--runs", "uniform", "t=trace:allocation.pool_factor=0.5"], "pool_factor"),
    (["--set", "train.lr=-1"], "lr"),
])
def test_cli_rejects_bad_runs_before_running(tmp_path: Path, capsys, args, match):
    from benchmarks.learning_sim import main

    assert main(["--out", str(tmp_path / "x.json"), *args]) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_merging_disjoint_seeds_equals_one_summary():
    """``--merge``: results of invocations on disjoint seeds combine into what one invocation over
    all seeds reports (per-seed finals, crossings, paired statistics), diagnostics weighted by seeds."""
    from benchmarks.learnsim.stats import merge

    rng = np.random.default_rng(0)

    def curve(rate: float) -> dict:
        return {"curve": [[100 * k, 0.3 + rate * k + 0.001 * rng.normal()] for k in range(6)]}

    runs = {"uniform": [curve(0.02) for _ in range(5)], "trace": [curve(0.025) for _ in range(5)]}
    whole = summarize(runs, steps=10, eval_every=2)

    def part(seeds: slice) -> dict:
        body = summarize({k: v[seeds] for k, v in runs.items()}, steps=10, eval_every=2)
        n = len(runs["uniform"][seeds])
        diag = {k: {"tokens": float(n), "calibration_vs_true_p": {"roots_skipped": {"n": n, "bias": 0.1 * n, "rmse": 0.2}}}
                for k in runs}
        return {"seeds": n, "budget": "leaves", "runs": {}, "command": "x", "diagnostics": diag, **body}

    merged = merge([part(slice(0, 2)), part(slice(2, 5))])
    assert merged["seeds"] == 5
    for k in runs:  # per-seed finals are stored rounded to 1e-6, so the statistics agree to that
        assert merged["allocators"][k]["per_seed"] == whole["allocators"][k]["per_seed"]
        a, b = merged["allocators"][k]["final_return"], whole["allocators"][k]["final_return"]
        assert a["mean"] == pytest.approx(b["mean"], abs=1e-5) and a["ci95"] == pytest.approx(b["ci95"], abs=1e-5)
    for k, p in whole["paired_vs_uniform"].items():
        m = merged["paired_vs_uniform"][k]
        assert m["tokens_ratio"] == p["tokens_ratio"]
        assert m["final_return_diff"]["mean"] == pytest.approx(p["final_return_diff"]["mean"], abs=1e-5)
        assert m["final_return_diff"]["ci95"] == pytest.approx(p["final_return_diff"]["ci95"], abs=1e-5)
    assert merged["diagnostics"]["trace"]["tokens"] == pytest.approx((2 * 2 + 3 * 3) / 5)
    assert merged["diagnostics"]["trace"]["calibration_vs_true_p"]["roots_skipped"]["bias"] == pytest.approx((0.2 * 2 + 0.3 * 3) / 5)
    assert merged["paired_vs_trace"]["uniform"]["final_return_diff"]["mean"] < 0
