"""The planner's decisions, pinned: a small simulated run (TRACE + hybrid predictor learning online
over several steps) must choose the same roots, anchors and counts, in the same order, and feed the
predictor the same training rows as the code that wrote ``data/plan_pin.json``. Speed-ups of the
planner and predictor must leave this untouched; a deliberate change of the algorithm regenerates
the file (``PYTHONPATH=. python tests/test_plan_pin.py``) and says why in its commit."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks.sim.env import Environment, PromptSet
from benchmarks.sim.executor import SlotExecutor
from benchmarks.sim.regime import load_regime_file
from benchmarks.sim.run import Settings, make_config, pools
from verl_trace.allocation import Budget, Issued, TreePlanner, build_allocator, new_planner, step_budget
from verl_trace.allocation.base import anchor_key
from verl_trace.allocation.drive import drive
from verl_trace.config import AdvantageConfig, AllocatorConfig, PredictorConfig, TraceConfig
from verl_trace.predictor import OraclePredictor, build_predictor
from verl_trace.tree import ROOT, LeafStatus, RolloutTree

PIN = Path(__file__).parent / "data" / "plan_pin.json"
REGIME = Path(__file__).parents[1] / "benchmarks" / "regimes" / "default.yaml"


class RecordingPlanner(TreePlanner):
    """The planner, logging every launch it issues as [uid, anchor, count, round]."""

    def __init__(self, planner: TreePlanner, log: list[list[Any]]):
        super().__init__(planner.allocator, planner.ctx)
        self.log = log

    def _record(self, issued: list[Issued]) -> list[Issued]:
        self.log.extend([x.uid, x.anchor, x.count, x.round] for x in issued)
        return issued

    def start(self, pool):
        return self._record(super().start(pool))

    def leaves_done(self, done):
        self.log.append(["event"])
        return self._record(super().leaves_done(done))


def _digest(*arrays: Any) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(json.dumps(a).encode() if not isinstance(a, np.ndarray) else np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def plan_record(schedule: str, steps: int = 4, seed: int = 3) -> dict[str, Any]:
    """Every launch of ``steps`` steps of 24 roots x 8 leaves (pool 48) on the default regime, and a
    digest of each step's training batch."""
    regime = load_regime_file(REGIME)
    r = regime.model_copy(deep=True)
    r.run.batch_prompts, r.run.leaves_per_prompt, r.run.train_prompts, r.run.steps = 24, 8, 120, steps
    prompts = PromptSet(r, seed)
    env = Environment(r, prompts, seed=seed)
    cfg = make_config("trace", r, Settings(schedule=schedule), seed)
    allocator = build_allocator(cfg)
    predictor = build_predictor(cfg.predictor)
    budget = step_budget(cfg, n_roots=r.run.batch_prompts)
    executor = SlotExecutor(env, max(1, round(r.latency.slots_per_leaf * budget.leaves)))
    out: dict[str, Any] = {"schedule": schedule, "steps": []}
    for step, pool_ids in enumerate(pools(r, prompts, seed)):
        pool = [env.root(int(i), step, f"s{step}/p{i}") for i in pool_ids]
        log: list[list[Any]] = []
        planner = RecordingPlanner(
            new_planner(cfg, allocator, n_roots=r.run.batch_prompts, budget=budget, max_turns=r.turns.max_turns,
                        predictor=predictor, rng=np.random.default_rng([seed, step])),
            log,
        )
        executor.run(planner, pool)
        batch, y = planner.training_batch()
        rows = _digest(list(batch.keys), batch.features, np.asarray(y, np.float64), batch.weight)
        predictor.update(batch, y)
        out["steps"].append({"launches": log, "training_rows": len(y), "training_digest": rows})
        for t in pool:
            env.forget(t.uid)
    return out


def _check(schedule: str) -> None:
    want = json.loads(PIN.read_text())[schedule]
    got = plan_record(schedule)
    for k, (w, g) in enumerate(zip(want["steps"], got["steps"])):
        assert g["launches"] == w["launches"], f"step {k}: the plan changed"
        assert (g["training_rows"], g["training_digest"]) == (w["training_rows"], w["training_digest"]), (
            f"step {k}: the predictor's training batch changed"
        )
    assert len(got["steps"]) == len(want["steps"])


def test_pipelined_plan_is_pinned() -> None:
    _check("pipelined")


def test_rounds_plan_is_pinned() -> None:
    _check("rounds")


if __name__ == "__main__":  # regenerate the pin (only for a deliberate change of the algorithm)
    PIN.write_text(json.dumps({s: plan_record(s) for s in ("pipelined", "rounds")}, separators=(",", ":")) + "\n")
    print(f"wrote {PIN}", file=sys.stderr)


def _reference_rows(planner: TreePlanner) -> tuple[list[str], list[str], list[float], list[bool]]:
    """``training_batch``'s rows by the plain walk up every usable leaf's path (the form main had):
    node, key, outcome and the 'committed before any outcome below it' flag, row by row."""
    ctx = planner.ctx
    drop = planner.cfg.advantage.truncated == "drop"
    nodes, keys, ys, fresh = [], [], [], []
    for tree in ctx.trees.values():
        for leaf in tree.nodes:
            if not leaf.terminal or leaf.status is LeafStatus.FAILED or (drop and leaf.status is LeafStatus.TRUNCATED):
                continue
            anchor, first = planner._launch_of.get((tree.uid, leaf.node_id), (ROOT, True))
            below, cur = True, leaf.parent
            while cur is not None:
                below = below and cur != anchor
                nodes.append(f"{tree.uid}:{cur}")  # keys can repeat across nodes (same turn texts)
                keys.append(anchor_key(tree, cur))
                ys.append(float(leaf.reward >= ctx.threshold))
                fresh.append(below or (first and cur == ROOT))
                cur = tree.nodes[cur].parent
    return nodes, keys, ys, fresh


@pytest.mark.parametrize("mode,truncated", [("leaf", "keep"), ("anchor", "keep"), ("first", "keep"), ("first", "drop")])
def test_training_rows_match_the_path_walk(mode: str, truncated: str) -> None:
    rng = np.random.default_rng(4)
    cfg = TraceConfig(allocator="oracle", predictor=PredictorConfig(example_weight=mode),
                      advantage=AdvantageConfig(truncated=truncated), allocation=AllocatorConfig(rounds=2))
    pool = []
    for i in range(10):
        t = RolloutTree(f"u{i}")
        t.root.meta["true_p"] = float(rng.uniform(0.05, 0.95))
        pool.append(t)
    planner = new_planner(cfg, build_allocator(cfg), n_roots=8, budget=Budget(64), max_turns=3,
                          predictor=OraclePredictor(), rng=rng)

    def rollout(tree: RolloutTree, launch: Issued) -> list[int]:
        out = []
        for _ in range(launch.count):
            node = launch.anchor
            while tree[node].depth < 3:
                node = tree.add_turn(node, [1] * int(rng.integers(2, 9)), [2], text=f"t{rng.integers(4)}",
                                     meta={"true_p": 0.5})
                if rng.random() < 0.4:
                    break
            status = rng.choice(["ok", "ok", "truncated", "failed"])
            tree.finish(node, float(rng.random() < 0.5) if status != "failed" else None, status)
            out.append(node)
        return out

    drive(planner, pool, rollout)
    batch, y = planner.training_batch()
    nodes, keys, ys, fresh = _reference_rows(planner)
    assert list(batch.keys) == keys and y.tolist() == ys and len(ys) > 20
    rows = np.unique(np.asarray(nodes), return_inverse=True)[1]
    if mode == "leaf":
        assert batch.weight is None
    elif mode == "anchor":
        np.testing.assert_array_equal(batch.weight, 1.0 / np.bincount(rows)[rows])
    else:
        keep = np.asarray(fresh, np.float64)
        count = np.bincount(rows, weights=keep)[rows]
        np.testing.assert_array_equal(batch.weight, np.divide(keep, count, out=np.zeros_like(keep), where=count > 0))
        assert 0 < keep.sum() < len(keep)
