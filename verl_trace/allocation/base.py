"""The allocator interface and the per-step context every allocator reads.

An allocator makes two kinds of decisions:

* ``select_roots``: which prompts of the candidate pool become roots this step and how many first
  chains each gets (global root allocation);
* ``expand``: for trees whose outstanding leaves are back, which anchors (root or turn-level
  prefix) get how many more continuations (local expansion).

It never launches anything itself: the planner checks every decision against the budget ledger,
and the executor (simulator or verl agent-loop worker) runs it.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from ..config import TraceConfig
from ..predictor.base import AnchorBatch, Prediction, Predictor
from ..tree import ROOT, RolloutTree
from .budget import BudgetLedger

Featurize = Callable[[RolloutTree, Sequence[int]], np.ndarray]


@dataclass(frozen=True)
class Launch:
    """Sample ``count`` continuations of tree ``uid`` from node ``anchor`` (ROOT = fresh chains)."""

    uid: str
    anchor: int
    count: int


@dataclass
class StepState:
    """What an allocator carries from one decision to the next within a step (new every step)."""

    # (tree uid, node id) -> (p, std): a node's prediction cannot change within a step (its features
    # are fixed and the predictor learns between steps), so each is made once per step
    predictions: dict[tuple[str, int], tuple[float, float]] = field(default_factory=dict)
    # leaves released by trees whose best continuation gains little, for trees that gain more (trace)
    release_pool: int = 0


@dataclass
class PlanContext:
    """What an allocator may read during one step."""

    cfg: TraceConfig
    ledger: BudgetLedger
    n_roots: int
    max_turns: int
    predictor: Predictor | None = None
    featurize: Featurize | None = None
    rng: np.random.Generator = field(default_factory=np.random.default_rng)
    trees: dict[str, RolloutTree] = field(default_factory=dict)
    rounds_done: dict[str, int] = field(default_factory=dict)
    in_flight: dict[str, list[int]] = field(default_factory=dict)  # uid -> anchors of leaves in flight
    quota: dict[str, int] = field(default_factory=dict)  # uid -> leaves the allocator reserved for it
    state: StepState = field(default_factory=StepState)

    @property
    def threshold(self) -> float:
        return self.cfg.success_threshold

    def anchor_ids(self, tree: RolloutTree) -> list[int]:
        """Expandable nodes: the root and non-terminal turns below the turn limit."""
        c = tree.columns()
        ok = (c["leaf"] == 0) & (c["depth"] < self.max_turns)
        return np.flatnonzero(ok).tolist()

    def anchors_of(self, trees: Sequence[RolloutTree], node_ids: Sequence[Sequence[int]]) -> AnchorBatch:
        """One batch for the anchors of many trees, in order: the planner's hot path, so the
        feature rows are stacked once rather than per tree and then concatenated (same matrix)."""
        keys: list[str] = []
        true_p: list[float] | None = []
        rows: list[np.ndarray] | None = [] if self.featurize is None else None
        blocks: list[np.ndarray] = []
        for tree, ids in zip(trees, node_ids):
            nodes = tree.nodes
            sel = [nodes[i] for i in ids]
            if rows is not None:
                rows.extend(n.features for n in sel)
            else:
                blocks.append(self.featurize(tree, ids))
            if true_p is not None:
                tp = [n.meta.get("true_p") for n in sel]
                if None in tp:
                    true_p = None
                else:
                    true_p.extend(tp)
            keys.extend([anchor_key(tree, i) for i in ids])
        if rows is not None:
            feats = np.stack(rows) if rows and all(r is not None for r in rows) else None
        else:
            feats = np.concatenate(blocks) if blocks else None
        tp_arr = np.array(true_p, np.float64) if true_p else None
        return AnchorBatch(keys=keys, features=feats, true_p=tp_arr)

    def predict(self, trees: Sequence[RolloutTree], node_ids: Sequence[Sequence[int]]) -> list[Prediction]:
        """One predictor call for the anchors of many trees; estimates are stored on the nodes
        (``meta['p_hat']``, ``meta['p_std']``) for metrics and the tree renderer."""
        if self.predictor is None:
            raise RuntimeError(f"allocator {self.cfg.allocator!r} needs a predictor")
        pred = self.predictor.predict(self.anchors_of(trees, node_ids))
        ps, sds = pred.p.tolist(), pred.std.tolist()
        out, start = [], 0
        for t, ids in zip(trees, node_ids):
            end = start + len(ids)
            nodes = t.nodes
            for i, pi, si in zip(ids, ps[start:end], sds[start:end]):
                meta = nodes[i].meta
                meta["p_hat"], meta["p_std"] = pi, si
            out.append(Prediction(p=pred.p[start:end], std=pred.std[start:end]))
            start = end
        return out

    def predict_roots(self, pool: Sequence[RolloutTree]) -> Prediction:
        preds = self.predict(pool, [[ROOT]] * len(pool))
        return Prediction(p=np.concatenate([x.p for x in preds]), std=np.concatenate([x.std for x in preds]))



def anchor_key(tree: RolloutTree, node_id: int) -> str:
    """Identity of an anchor across steps: the prompt key for a root, the prompt key plus a digest
    of the turn texts for a prefix (so the same prefix of the same prompt maps to the same key)."""
    if node_id == ROOT:
        return tree.key
    node = tree[node_id]
    key = node.meta.get("key")
    if key is None:
        h = hashlib.blake2b(digest_size=8)
        for i in tree.path(node_id)[1:]:
            n = tree[i]
            # repr of the token list (as when nodes stored lists), so keys stay those of earlier runs
            h.update(n.text.encode() if n.text else repr(list(n.action_ids)).encode())
            h.update(b"\x00")
        key = node.meta["key"] = f"{tree.key}/{h.hexdigest()}"
    return key


def even_split(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` integers differing by at most one (larger ones first)."""
    q, r = divmod(total, parts)
    return [q + (1 if i < r else 0) for i in range(parts)]


class Allocator(ABC):
    """One allocation rule. Its capabilities are class attributes, so the rest of the system (config
    checks, trainer, rollout worker, simulator, demo) asks the class in ``allocation.ALLOCATORS``
    rather than keeping its own list of names."""

    name: ClassVar[str] = "allocator"
    needs_predictor: ClassVar[bool] = False  # queries the shared predictor (the trainer starts its actor)
    selects_roots: ClassVar[bool] = False  # chooses its roots from the candidate pool (pool_factor > 1 pays)
    grows_trees: ClassVar[bool] = False  # branches below the root: only a tree estimator uses what it grows
    estimator: ClassVar[str] = "trace"  # the advantage estimator it is paired with in comparisons
    simulator_only: ClassVar[bool] = False  # reads the true success probability, which only the simulator has

    def __init__(self, cfg: TraceConfig):
        self.cfg = cfg
        self.params = cfg.allocation

    @abstractmethod
    def select_roots(self, ctx: PlanContext, pool: Sequence[RolloutTree]) -> dict[str, int]:
        """uid -> first chains, for at most ``ctx.n_roots`` roots of the pool."""

    def expand(self, ctx: PlanContext, ready: Sequence[str], final: bool = False) -> list[Launch]:
        """Continuations for trees in ``ready``. ``final`` is set once nothing is in flight and the
        budget is not spent: the allocator's last chance before the planner's root fallback."""
        return []
