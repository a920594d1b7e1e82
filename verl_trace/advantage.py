"""Layer 4: tree-aware advantage estimators, registered in verl as ``trace`` and ``tree_grpo``.

Each row of a verl batch is one leaf (a full trajectory). Rows with the same ``uid`` are leaves of
one rollout tree; ``tree_paths[i]`` lists the node ids from the root to row i's last turn and
``turn_spans[i]`` the [start, end) response positions of each of those turns. From that alone the
estimator rebuilds each tree, estimates a value V(u) for every node from the terminal rewards
below it, and gives every token of turn u on leaf l

    A(l, u) = [ (V(u) - V(root)) + w * sum_{v in B(l), v above u} (V(child of v toward l) - V(v)) ] / (sigma + eps)

where B(l) are the non-root branch points on l's path and sigma is the reward std of the tree's
leaves. On a tree of independent chains this is exactly GRPO. docs/algorithm.md has the
derivation, a worked example, and which parts are our choice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .config import AdvantageConfig
from .tree import LeafStatus, RolloutTree


@dataclass
class LeafRecord:
    """What the estimator needs about one leaf."""

    path: tuple[int, ...]  # root .. last turn, root included
    reward: float
    status: LeafStatus = LeafStatus.OK


def _usable(leaf: LeafRecord, cfg: AdvantageConfig) -> bool:
    if leaf.status is LeafStatus.FAILED:
        return False
    return not (leaf.status is LeafStatus.TRUNCATED and cfg.truncated == "drop")


def group_turn_advantages(
    leaves: Sequence[LeafRecord], cfg: AdvantageConfig, norm_by_std: bool = True
) -> list[np.ndarray]:
    """Per-turn advantages (one value per turn on the leaf's path, root excluded) for the leaves of
    one tree. Unusable leaves, singleton groups and groups whose rewards are all equal get zeros."""
    out = [np.zeros(max(0, len(leaf.path) - 1)) for leaf in leaves]
    use = [i for i, leaf in enumerate(leaves) if _usable(leaf, cfg) and len(leaf.path) >= 2]
    if len(use) < 2:
        return out
    rewards = np.array([leaves[i].reward for i in use], dtype=np.float64)
    if rewards.max() == rewards.min():
        return out
    children: dict[int, list[int]] = {}
    leaf_value: dict[int, list[float]] = {}
    root = leaves[use[0]].path[0]
    for i in use:
        path = leaves[i].path
        if path[0] != root:
            raise ValueError(f"leaves of one tree disagree on the root node: {path[0]} vs {root}")
        for parent, child in zip(path[:-1], path[1:]):
            kids = children.setdefault(parent, [])
            if child not in kids:
                kids.append(child)
        leaf_value.setdefault(path[-1], []).append(leaves[i].reward)
    value = node_values(root, children, leaf_value, cfg.value)
    scale = 1.0 / (float(rewards.std(ddof=1)) + cfg.epsilon) if norm_by_std else 1.0
    v_root = value[root]
    for i in use:
        path = leaves[i].path
        adv = np.empty(len(path) - 1)
        local = 0.0
        for d in range(1, len(path)):
            adv[d - 1] = (value[path[d]] - v_root) + cfg.local_weight * local
            # A branch at path[d] (not the root) adds its contrast to every later turn of this leaf.
            if len(children.get(path[d], ())) >= 2 and d + 1 < len(path):
                local += value[path[d + 1]] - value[path[d]]
        out[i] = adv * scale
    return out


def node_values(root: int, children: Mapping[int, list[int]], leaf_value: Mapping[int, list[float]], mode: str) -> dict[int, float]:
    """V(u) for every node reachable from ``root``.

    ``child_mean``: a node's value is the plain mean of its children's values. Children of a node
    are i.i.d. continuations of the same prefix, so this stays unbiased however unevenly the
    allocator grew the subtrees. ``leaf_mean``: the mean reward of all leaves below (biased toward
    heavily expanded subtrees; kept for comparison with Tree-GRPO/TreeRL)."""
    value: dict[int, float] = {}
    total: dict[int, tuple[float, int]] = {}
    order, stack = [], [root]
    while stack:
        u = stack.pop()
        order.append(u)
        stack.extend(children.get(u, ()))
    for u in reversed(order):
        kids = children.get(u, ())
        if not kids:
            r = leaf_value[u]
            value[u] = float(np.mean(r))
            total[u] = (float(np.sum(r)), len(r))
        elif mode == "child_mean":
            value[u] = float(np.mean([value[k] for k in kids]))
        else:
            s = sum(total[k][0] for k in kids)
            n = sum(total[k][1] for k in kids)
            total[u] = (s, n)
            value[u] = s / n
    return value


def tree_turn_advantages(tree: RolloutTree, cfg: AdvantageConfig, norm_by_std: bool = True) -> dict[int, np.ndarray]:
    """Per-turn advantages of every leaf of a RolloutTree (leaf node id -> array over its turns)."""
    leaves = tree.leaves()
    records = [LeafRecord(tuple(tree.path(n.node_id)), 0.0 if n.reward is None else n.reward, n.status) for n in leaves]
    advs = group_turn_advantages(records, cfg, norm_by_std)
    return {n.node_id: a for n, a in zip(leaves, advs)}


def tree_grpo_leaf_advantages(leaves: Sequence[LeafRecord], cfg: AdvantageConfig, norm_by_std: bool = True) -> np.ndarray:
    """Tree-GRPO (arXiv 2509.21240): a z-score over all leaves of the prompt plus a z-score over
    the leaves of the same first-level subtree, one scalar per leaf."""
    out = np.zeros(len(leaves))
    use = [i for i, leaf in enumerate(leaves) if _usable(leaf, cfg) and len(leaf.path) >= 2]
    groups: dict[Any, list[int]] = {"root": use}
    for i in use:
        groups.setdefault(("sub", leaves[i].path[1]), []).append(i)
    for members in groups.values():
        if len(members) < 2:
            continue
        r = np.array([leaves[i].reward for i in members])
        if r.max() == r.min():
            continue
        centered = r - r.mean()
        out[members] += centered / (r.std(ddof=1) + cfg.epsilon) if norm_by_std else centered
    return out


# ---------------------------------------------------------------------- verl adapters
def _resolve(config: Any, trace_config: AdvantageConfig | Mapping | None) -> tuple[AdvantageConfig, bool]:
    if trace_config is None and config is not None:
        trace_section = _get(config, "trace")
        trace_config = None if trace_section is None else _get(trace_section, "advantage")
    if trace_config is None:
        adv = AdvantageConfig()
    elif isinstance(trace_config, AdvantageConfig):
        adv = trace_config
    else:
        adv = AdvantageConfig.model_validate(dict(trace_config))
    norm = adv.norm_by_std
    if norm is None:
        norm = bool(_get(config, "norm_adv_by_std_in_grpo", True)) if config is not None else True
    return adv, norm


def _get(obj: Any, key: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(key, default)
    return getattr(obj, key, default)


def _rows_by_group(index: Sequence[Any] | None, n: int) -> dict[Any, list[int]]:
    groups: dict[Any, list[int]] = {}
    for i in range(n):
        groups.setdefault(i if index is None else index[i], []).append(i)
    return groups


def _records(rows: list[int], scores: np.ndarray, tree_paths, leaf_status) -> list[LeafRecord]:
    recs = []
    for i in rows:
        path = (0, -1 - i) if tree_paths is None or tree_paths[i] is None else tuple(int(x) for x in tree_paths[i])
        status = LeafStatus.OK if leaf_status is None or leaf_status[i] is None else LeafStatus(leaf_status[i])
        recs.append(LeafRecord(path, float(scores[i]), status))
    return recs


def compute_trace_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Sequence[Any] | None = None,
    config: Any = None,
    tree_paths: Sequence[Sequence[int] | None] | None = None,
    turn_spans: Sequence[Sequence[Sequence[int]] | None] | None = None,
    leaf_status: Sequence[str | None] | None = None,
    trace_config: AdvantageConfig | Mapping | None = None,
    **_: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """verl estimator ``trace``: (advantages, returns), both (batch, response_len).

    Without tree metadata every row is its own chain below its uid's root, which reduces to GRPO
    (groups of one or with equal rewards get zero, never NaN). A row's mask does not decide whether
    it is a leaf: a usable leaf without generated tokens still counts in its tree's values and
    sigma (and gets zero on its own, masked, tokens). verl's padding rows get zero because verl
    gives them a uid of their own, reward 0 and an all-zero mask.
    """
    adv_cfg, norm = _resolve(config, trace_config)
    scores = token_level_rewards.sum(dim=-1).detach().cpu().numpy().astype(np.float64)
    mask = response_mask.detach().cpu().numpy()
    bsz, length = mask.shape
    out = np.zeros((bsz, length), dtype=np.float32)
    for rows in _rows_by_group(index, bsz).values():
        recs = _records(rows, scores, tree_paths, leaf_status)
        for i, turn_adv in zip(rows, group_turn_advantages(recs, adv_cfg, norm)):
            if not turn_adv.size:
                continue
            spans = None if turn_spans is None else turn_spans[i]
            if spans is None:
                out[i, :] = turn_adv[-1]
                continue
            if len(spans) != turn_adv.size:
                raise ValueError(f"row {i}: {len(spans)} turn spans for a path of {turn_adv.size} turns")
            for (s, e), a in zip(spans, turn_adv):
                out[i, int(s) : int(e)] = a
    adv = torch.from_numpy(out).to(token_level_rewards.device) * response_mask.to(torch.float32)
    return adv, adv.clone()


def compute_tree_grpo_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Sequence[Any] | None = None,
    config: Any = None,
    tree_paths: Sequence[Sequence[int] | None] | None = None,
    leaf_status: Sequence[str | None] | None = None,
    trace_config: AdvantageConfig | Mapping | None = None,
    **_: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """verl estimator ``tree_grpo``: Tree-GRPO's inter-tree + intra-tree z-scores, per leaf."""
    adv_cfg, norm = _resolve(config, trace_config)
    scores = token_level_rewards.sum(dim=-1).detach().cpu().numpy().astype(np.float64)
    mask = response_mask.detach().cpu().numpy()
    leaf_adv = np.zeros(mask.shape[0], dtype=np.float32)
    for rows in _rows_by_group(index, mask.shape[0]).values():
        leaf_adv[rows] = tree_grpo_leaf_advantages(_records(rows, scores, tree_paths, leaf_status), adv_cfg, norm)
    adv = torch.from_numpy(leaf_adv).to(token_level_rewards.device).unsqueeze(-1) * response_mask.to(torch.float32)
    return adv, adv.clone()


ESTIMATORS = {"trace": compute_trace_advantage, "tree_grpo": compute_tree_grpo_advantage}


def register() -> list[str]:
    """Register the estimators in verl's registry (idempotent)."""
    from verl.trainer.ppo import core_algos

    for name, fn in ESTIMATORS.items():
        if core_algos.ADV_ESTIMATOR_REGISTRY.get(name) is not fn:
            core_algos.register_adv_est(name)(fn)
    return list(ESTIMATORS)
