"""``python -m verl_trace.demo --task bfcl|math --quick``: the task families through the search demo's
product path (warm start from the task's teacher, then RL through verl's trainer via main_trace on
CPU, held-out evaluation by verl's validation, the same report).

One quick run per task (module fixture, parametrized) serves every assertion: the report's shape,
that the trainer stepped, that rewards are the task's own reward function's, mixed-reward trees,
and a rendered tree with tool calls and observations.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from verl_trace.tasks import get_task
from verl_trace.tree import load_trees

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", params=["bfcl", "math"])
def run(request, tmp_path_factory):
    name = request.param
    out = (tmp_path_factory.mktemp(f"demo_{name}") / "run").resolve()
    cmd = [sys.executable, "-m", "verl_trace.demo", "--task", name, "--quick", "--out", str(out), "--no-progress"]
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=1100)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return {"name": name, "task": get_task(name), "out": out, "log": proc.stdout,
            "report": json.loads((out / "report.json").read_text())}


def test_report_has_the_search_demos_shape(run):
    rep, out, task = run["report"], run["out"], run["task"]
    assert rep["task"] == run["name"] and rep["trainer"] == "verl_trace.main_trace" and rep["status"] == "completed"
    assert rep["allocator"] == "trace" and rep["estimator"] == "trace"
    evals = rep["curves"]["eval"]
    assert [e["step"] for e in evals] == [0, rep["steps"]]  # held-out evaluation at the start and the end
    held_out = min(len(task.rows("val")), rep["settings"]["eval"]["questions"])
    for e in evals:
        assert e["questions"] == held_out and 0.0 <= e["accuracy"] <= 1.0
        assert e["dump_accuracy"] == pytest.approx(e["accuracy"])  # verl's metric = the mean of its dumped rewards
    warm = rep["warm_start"]
    assert warm["demonstrations"] > 0 and 0 < warm["teacher_accuracy"] < 1  # the teacher errs on purpose
    for name in ("accuracy.png", "training.png", "rollout_tree.png", "rollout_tree.html", "rollout_tree.json"):
        assert (out / name).stat().st_size > 0 and name in rep["files"], name
    assert (out / "assets" / f"{run['name']}_tool.yaml").is_file()


def test_the_trainer_stepped(run):
    rep, out = run["report"], run["out"]
    assert rep["steps"] == rep["planned_steps"] >= 2 and len(rep["step_metrics"]) == rep["steps"]
    for row in rep["step_metrics"]:
        assert row["actor/grad_norm"] is not None and row["actor/grad_norm"] >= 0
        assert 0 <= row["training/rollout_probs_diff_max"] < 1e-4  # the rollout served the trained weights
        assert row["trace/leaves"] == rep["budget"]["leaves_per_step"] == row["plan/launched"]
    # a step with a mixed tree has non-zero advantages: the actor's parameters moved
    assert any(row["actor/grad_norm"] > 0 for row in rep["step_metrics"])
    assert rep["checkpoints"]["latest_step"] == rep["steps"]
    assert (out / "checkpoints" / f"global_step_{rep['steps']}" / "trace_predictor.pt").is_file()


def test_rewards_are_the_tasks_reward(run):
    """verl loaded the task's reward function: its extra outputs are in verl's validation dump, and
    for math every dumped score is what the task's ``compute_score`` gives the dumped response."""
    task, out = run["task"], run["out"]
    rows = [json.loads(x) for x in (out / "validation" / "0.jsonl").read_text().splitlines() if x.strip()]
    assert rows
    extra = {"bfcl": "instance_state_mismatch", "math": "has_answer"}[run["name"]]
    assert all(extra in r for r in rows)
    if run["name"] == "math":
        for r in rows:
            assert task.compute_score(None, r["output"], r["gts"])["score"] == r["score"]


def test_some_trees_have_mixed_rewards(run):
    trees = [t for p in sorted((run["out"] / "trees").glob("step_*.json")) for t in load_trees(p)]
    assert trees
    mixed = [t for t in trees if len({leaf.reward for leaf in t.leaves()}) > 1]
    assert mixed, [sorted(leaf.reward for leaf in t.leaves()) for t in trees]
    assert run["report"]["train_reward_mean"] is not None


def test_the_rendered_tree_shows_tool_calls_and_observations(run):
    out, task = run["out"], run["task"]
    names = {t["config"].get("function") or t["tool_schema"]["function"]["name"] for t in task.tool_config["tools"]}
    tree = json.loads((out / "rollout_tree.json").read_text())
    called = [n for n in tree["nodes"] if n.get("tool_calls")]
    assert called, "the rendered tree has no tool call"
    assert any(n["obs_text"] for n in called)
    page = (out / "rollout_tree.html").read_text()
    assert "--- observation ---" in page and any(f"{name}(" in page for name in names)


def test_an_unknown_task_is_refused_naming_the_choices():
    proc = subprocess.run([sys.executable, "-m", "verl_trace.demo", "--task", "chess", "--quick"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "invalid choice: 'chess'" in proc.stderr and all(f"'{t}'" in proc.stderr for t in ("search", "bfcl", "math"))
