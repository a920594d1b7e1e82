"""Tree metadata for verl's V1 advantage stage.

verl 0.9.1's ``PPOTrainer._compute_advantage`` reads ``uid, response_mask, rm_scores, ...`` from
TransferQueue and calls the registered estimator with rewards, mask, uid and config only. The
trainer hook (``trainer.TraceTrainerMixin._compute_advantage``) therefore

1. reads each row's ``extra_fields["trace"]`` for the same keys, in the same order
   (``fetch_tree_columns``), and
2. runs verl's own ``_compute_advantage`` while the registered ``trace`` / ``tree_grpo`` entry is
   bound to these columns (``bound_estimator``),

so the estimator receives ``tree_paths``, ``turn_spans`` and ``leaf_status`` and everything else
(KL-in-reward, rollout correction, the V1 multi-trajectory dispatch, writing nested advantages
back to TransferQueue) stays verl's code. ``patches/`` has the upstream change that would make the
binding unnecessary.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..protocol import TreeMeta, TreeMetaError, parse_tree_meta
from ..tree import LeafStatus


def row_uid(key: str) -> str:
    """The verl uid of a TransferQueue trajectory key ``{uid}_{session_id}_{index}`` (as the
    ReplayBuffer groups keys)."""
    return key.split("_")[0]


@dataclass
class TreeColumns:
    """Per-row tree metadata, aligned with a batch's keys; ``None`` for verl's padding rows."""

    keys: list[str]
    meta: list[TreeMeta | None]

    @classmethod
    def from_rows(cls, keys: Sequence[str], tags: Sequence[dict], extra_fields: Sequence[Any]) -> TreeColumns:
        if not len(keys) == len(tags) == len(extra_fields):
            raise ValueError(f"{len(keys)} keys, {len(tags)} tags and {len(extra_fields)} extra_fields rows")
        meta: list[TreeMeta | None] = []
        tree_of_uid: dict[str, str] = {}
        for key, tag, extra in zip(keys, tags, extra_fields):
            if tag.get("is_padding", False):
                meta.append(None)  # verl copies a real row's fields into padding rows: ignore them
                continue
            m = parse_tree_meta(extra, where=f"TransferQueue row {key!r}")
            uid = row_uid(key)
            if tree_of_uid.setdefault(uid, m.tree_uid) != m.tree_uid:
                raise TreeMetaError(
                    f"TransferQueue row {key!r}: tree_uid {m.tree_uid!r}, but other rows of uid {uid!r} say "
                    f"{tree_of_uid[uid]!r}; the leaves of one tree must share one verl uid"
                )
            meta.append(m)
        return cls(list(keys), meta)

    def estimator_kwargs(self) -> dict[str, list]:
        """What ``compute_trace_advantage`` / ``compute_tree_grpo_advantage`` take beyond verl's arguments."""
        return {
            "tree_paths": [None if m is None else list(m.path) for m in self.meta],
            "turn_spans": [None if m is None else [list(s) for s in m.spans] for m in self.meta],
            "leaf_status": [None if m is None else m.status.value for m in self.meta],
        }


def fetch_tree_columns(batch: Any) -> TreeColumns:
    """Read ``extra_fields`` of a ``KVBatchMeta``'s rows from TransferQueue, in key order."""
    import transfer_queue as tq

    data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["extra_fields"])
    column = data["extra_fields"]
    rows = column.tolist() if hasattr(column, "tolist") else list(column)
    return TreeColumns.from_rows(batch.keys, batch.tags, rows)


@contextmanager
def bound_estimator(
    name: str, extra: dict[str, Any], on_result: Callable[[dict[str, Any], torch.Tensor], None] | None = None
) -> Iterator[None]:
    """Within the block, verl's registry entry ``name`` is the registered estimator called with
    ``extra`` added to verl's arguments; ``on_result(verl_kwargs, advantages)`` sees each result.

    The registry is restored on exit, errors included. It is a process-global dict, so this must
    not overlap another advantage computation in the same process (verl's trainer computes
    advantages on one thread)."""
    from verl.trainer.ppo import core_algos

    registry = core_algos.ADV_ESTIMATOR_REGISTRY
    if name not in registry:
        raise ValueError(
            f"algorithm.adv_estimator={name!r} is not registered in this process; is the verl_trace plugin "
            "installed (python -m verl_trace doctor)?"
        )
    fn = registry[name]

    def bound(**kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        advantages, returns = fn(**kwargs, **extra)
        if on_result is not None:
            on_result(kwargs, advantages)
        return advantages, returns

    registry[name] = bound
    try:
        yield
    finally:
        registry[name] = fn


def tree_batch_metrics(
    columns: TreeColumns, index: Sequence[Any], token_level_rewards: torch.Tensor, response_mask: torch.Tensor,
    advantages: torch.Tensor,
) -> dict[str, float]:
    """Shape of the trees a training batch was built from, and how much of it carries signal."""
    scores = token_level_rewards.sum(-1).detach().cpu().numpy()
    nonzero = ((advantages != 0) & response_mask.bool()).any(-1).cpu().numpy()
    trees: dict[Any, list[int]] = {}
    for i, m in enumerate(columns.meta):
        if m is not None:
            trees.setdefault(index[i], []).append(i)
    if not trees:
        return {}
    leaves, branch_points, mixed = [], [], []
    for rows in trees.values():
        children: dict[int, set[int]] = {}
        for i in rows:
            path = columns.meta[i].path
            for parent, child in zip(path[:-1], path[1:]):
                children.setdefault(parent, set()).add(child)
        leaves.append(len(rows))
        branch_points.append(sum(len(c) >= 2 for c in children.values()))
        usable = [scores[i] for i in rows if columns.meta[i].status is not LeafStatus.FAILED]
        mixed.append(len(usable) >= 2 and max(usable) != min(usable))
    real = [i for rows in trees.values() for i in rows]
    statuses = [columns.meta[i].status for i in real]
    return {
        "trace/adv/trees": float(len(trees)),
        "trace/adv/leaves_per_tree/mean": float(np.mean(leaves)),
        "trace/adv/leaves_per_tree/max": float(np.max(leaves)),
        "trace/adv/leaves_per_tree/min": float(np.min(leaves)),
        "trace/adv/branch_points/mean": float(np.mean(branch_points)),
        "trace/adv/depth/mean": float(np.mean([len(columns.meta[i].path) - 1 for i in real])),
        "trace/adv/mixed_tree_ratio": float(np.mean(mixed)),
        "trace/adv/effective_ratio": float(np.mean(nonzero[real])),
        "trace/adv/failed_leaf_ratio": float(np.mean([s is LeafStatus.FAILED for s in statuses])),
        "trace/adv/truncated_leaf_ratio": float(np.mean([s is LeafStatus.TRUNCATED for s in statuses])),
    }
