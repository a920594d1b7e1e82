"""Predictor quality on prefixes the predictor has not trained on.

Held-out trees are grown with the simulator's own dynamics (first chains, then continuations from
random prefixes, so prefixes have several leaves below them) at the last training step's policy.
Every anchor on a leaf's path is labelled with that leaf's success, exactly as the planner's
``training_batch`` labels training data, and scored with Brier, ECE and AUC, per split:
``unseen_prompts`` (held-out prompts: roots and prefixes), ``unseen_roots``, ``unseen_prefixes``,
and ``seen_prompts`` (new rollouts of prompts the predictor trained on).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from verl_trace.predictor import AnchorBatch, Predictor, auc, brier, ece
from verl_trace.tree import ROOT

from .env import Environment

CHAINS, BRANCH_ANCHORS, BRANCH_WIDTH = 4, 2, 2


def _grow(env: Environment, prompts: Iterable[int], step: int, tag: str, rng: np.random.Generator):
    """(keys, features, true_p, outcome, is_root) for every (anchor, leaf below it) pair."""
    keys, feats, tp, ys, is_root = [], [], [], [], []
    for i in prompts:
        uid = f"{tag}/s{step}/p{i}"
        tree = env.root(int(i), step, uid)
        for _ in range(CHAINS):
            env.materialize(tree, ROOT, env.continuation(uid, ROOT))
        inner = [n.node_id for n in tree.nodes if not n.terminal and n.node_id != ROOT]
        for a in rng.permutation(inner)[:BRANCH_ANCHORS] if inner else []:
            for _ in range(BRANCH_WIDTH):
                env.materialize(tree, int(a), env.continuation(uid, int(a)))
        for leaf in tree.leaves():
            y = float(leaf.reward >= 0.5)
            for a in tree.path(leaf.node_id)[:-1]:
                node = tree[a]
                keys.append(tree.key if a == ROOT else node.meta["key"])
                feats.append(node.features)
                tp.append(node.meta["true_p"])
                ys.append(y)
                is_root.append(a == ROOT)
        env.forget(uid)
    return AnchorBatch(keys=keys, features=np.stack(feats), true_p=np.array(tp)), np.array(ys), np.array(is_root)


def _scores(p: np.ndarray, y: np.ndarray) -> dict[str, float]:
    return {"brier": brier(p, y), "ece": ece(p, y), "auc": auc(p, y), "n": int(y.size)}


def evaluate_predictors(
    env: Environment,
    predictors: Mapping[str, Predictor],
    step: int,
    seen: Iterable[int],
    seed: int,
) -> dict[str, dict[str, dict[str, float]]]:
    """name -> split -> {brier, ece, auc, n}."""
    rng = np.random.default_rng([seed, 99])
    held = env.prompts.held_out
    seen = np.array(sorted(seen))
    if seen.size > held.size:
        seen = rng.choice(seen, held.size, replace=False)
    unseen_b, unseen_y, unseen_root = _grow(env, held, step, "eval", rng)
    seen_b, seen_y, _ = _grow(env, seen, step, "eval-seen", rng) if seen.size else (None, None, None)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, pred in predictors.items():
        p = pred.predict(unseen_b).p
        res = {
            "unseen_prompts": _scores(p, unseen_y),
            "unseen_roots": _scores(p[unseen_root], unseen_y[unseen_root]),
            "unseen_prefixes": _scores(p[~unseen_root], unseen_y[~unseen_root]),
        }
        if seen_b is not None:
            res["seen_prompts"] = _scores(pred.predict(seen_b).p, seen_y)
        out[name] = res
    return out
