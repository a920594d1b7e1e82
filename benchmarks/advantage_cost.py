"""What computing the tree advantages twice per step costs at production scale.

    nice python benchmarks/advantage_cost.py [--prompts 512] [--leaves 16] [--repeats 5]

A TRACE step computes tree advantages twice: each rollout worker's step metrics
(``metrics.forest_metrics``: effective leaves, in ``TreeRolloutRunner._metrics``) run the estimator
on its trees, and the trainer's advantage stage runs it on the same leaves as verl rows
(``compute_trace_advantage``). This times both on one step of ``--prompts`` trees of ``--leaves``
leaves each (half first chains, half branches from random turns, up to 4 turns of 256 action + 128
observation tokens, response length 2048), single-threaded, median of ``--repeats``. Results go to
``benchmarks/results/advantage_cost.json``; docs/benchmarks.md has the reading.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from verl_trace.advantage import compute_trace_advantage
from verl_trace.config import AdvantageConfig
from verl_trace.metrics import effective_leaves, forest_metrics
from verl_trace.tree import ROOT, RolloutTree

ROOT_DIR = Path(__file__).resolve().parents[1]
ACTION, OBS, MAX_TURNS, RESPONSE = 256, 128, 4, 2048


def grow(uid: str, leaves: int, rng: np.random.Generator) -> RolloutTree:
    """``leaves // 2`` first chains, then the rest branched from random non-terminal turns."""
    tree = RolloutTree(uid, [1] * 64, f"prompt {uid}")
    p = rng.beta(0.7, 0.7)

    def chain(node: int) -> None:
        while True:
            node = tree.add_turn(node, [7] * ACTION, [8] * OBS if tree[node].depth + 1 < MAX_TURNS else [])
            if tree[node].depth >= MAX_TURNS or rng.random() < 0.3:
                tree.finish(node, float(rng.random() < p))
                return

    for _ in range(leaves // 2):
        chain(ROOT)
    for _ in range(leaves - leaves // 2):
        inner = [n.node_id for n in tree.nodes[1:] if not n.terminal and n.depth < MAX_TURNS]
        chain(int(rng.choice(inner)) if inner else ROOT)
    return tree


def rows(trees: list[RolloutTree]) -> dict:
    """The step's leaves as the trainer's advantage stage gets them (verl tensors + tree metadata)."""
    trajs = [(t, t.render(leaf.node_id, max_response_len=RESPONSE)) for t in trees for leaf in t.leaves()]
    mask = torch.zeros(len(trajs), RESPONSE)
    rewards = torch.zeros(len(trajs), RESPONSE)
    for i, (_, tr) in enumerate(trajs):
        mask[i, : len(tr.response_mask)] = torch.tensor(tr.response_mask, dtype=torch.float32)
        rewards[i, len(tr.response_ids) - 1] = tr.reward
    return {
        "token_level_rewards": rewards,
        "response_mask": mask,
        "index": np.array([t.uid for t, _ in trajs], dtype=object),
        "tree_paths": [tr.path for _, tr in trajs],
        "turn_spans": [[list(s) for s in tr.turn_spans] for _, tr in trajs],
        "leaf_status": [tr.status.value for _, tr in trajs],
    }


def timed(fn, repeats: int) -> float:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=512)
    ap.add_argument("--leaves", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT_DIR / "benchmarks/results/advantage_cost.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rng = np.random.default_rng(args.seed)
    trees = [grow(f"t{i}", args.leaves, rng) for i in range(args.prompts)]
    batch = rows(trees)
    cfg = AdvantageConfig()
    worker_effective = timed(lambda: [effective_leaves(t, "trace", cfg) for t in trees], args.repeats)
    worker_metrics = timed(lambda: forest_metrics(trees, "trace", cfg), args.repeats)
    trainer = timed(lambda: compute_trace_advantage(**batch, trace_config=cfg), args.repeats)
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
    result = {
        "command": " ".join(["python", "benchmarks/advantage_cost.py", *(argv if argv is not None else sys.argv[1:])]),
        "prompts": args.prompts,
        "leaves_per_prompt": args.leaves,
        "rows": int(batch["response_mask"].shape[0]),
        "response_length": RESPONSE,
        "nodes": sum(len(t) for t in trees),
        "seed": args.seed,
        "repeats": args.repeats,
        "threads": 1,
        "loadavg_1_5_15": load,
        "median_seconds": {
            "worker_effective_leaves": worker_effective,  # the duplicated estimator run
            "worker_forest_metrics": worker_metrics,  # all step metrics, effective leaves included
            "trainer_compute_trace_advantage": trainer,  # the advantage verl trains with
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
