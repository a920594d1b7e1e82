"""Peer allocators, each at the same leaf budget: uniform (GRPO), prompt (MoPPS / dynamic
sampling spirit), tree_random (Tree-GRPO) and entropy (ARPO)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..tree import ROOT, RolloutTree
from .base import Allocator, Launch, PlanContext, even_split


class UniformAllocator(Allocator):
    """GRPO: the first ``n_roots`` prompts, ``budget / n_roots`` independent trajectories each."""

    name = "uniform"

    def select_roots(self, ctx: PlanContext, pool: Sequence[RolloutTree]) -> dict[str, int]:
        roots = list(pool[: ctx.n_roots])
        return {t.uid: n for t, n in zip(roots, even_split(ctx.ledger.budget.leaves, len(roots)))}


class PromptAllocator(Allocator):
    """Root-only allocation (MoPPS): rank the candidate pool by a Thompson sample of each prompt's
    predicted success rate, keep the ``n_roots`` closest to 0.5, give each an equal share."""

    name = "prompt"
    needs_predictor = True
    selects_roots = True

    def select_roots(self, ctx: PlanContext, pool: Sequence[RolloutTree]) -> dict[str, int]:
        if len(pool) == ctx.n_roots:
            chosen = list(pool)
        else:
            pred = ctx.predict_roots(pool)
            a, b = pred.beta_params(kappa_max=self.cfg.predictor.kappa_max)
            p = ctx.rng.beta(a, b) if self.params.thompson else pred.p
            order = np.lexsort((ctx.rng.random(len(pool)), (p - 0.5) ** 2))
            chosen = [pool[i] for i in order[: ctx.n_roots]]
        return {t.uid: n for t, n in zip(chosen, even_split(ctx.ledger.budget.leaves, len(chosen)))}


class _ChainsThenBranches(Allocator):
    """Shared shape of tree_random and entropy: the first ``n_roots`` prompts, a share of each
    root's leaves as first chains, the rest spread over ``rounds`` rounds of branching."""

    def select_roots(self, ctx: PlanContext, pool: Sequence[RolloutTree]) -> dict[str, int]:
        roots = list(pool[: ctx.n_roots])
        return first_chains(ctx, roots, even_split(ctx.ledger.budget.leaves, len(roots)), self.params)

    def expand(self, ctx: PlanContext, ready: Sequence[str], final: bool = False) -> list[Launch]:
        out: list[Launch] = []
        for uid in ready:
            k = round_share(ctx, uid, self.params.rounds, final)
            if k <= 0:
                continue
            tree = ctx.trees[uid]
            anchors = [i for i in ctx.anchor_ids(tree) if i != ROOT]
            out += self.branch(ctx, tree, anchors, k)
            ctx.quota[uid] -= k
        return out

    def branch(self, ctx: PlanContext, tree: RolloutTree, anchors: list[int], k: int) -> list[Launch]:
        raise NotImplementedError


class TreeRandomAllocator(_ChainsThenBranches):
    """Tree-GRPO: expand uniformly random intermediate turn nodes, ``branch_width`` each."""

    name = "tree_random"
    grows_trees = True
    estimator = "tree_grpo"  # Tree-GRPO's inter- + intra-tree z-scores

    def branch(self, ctx: PlanContext, tree: RolloutTree, anchors: list[int], k: int) -> list[Launch]:
        order = list(ctx.rng.permutation(anchors)) if anchors else []
        return spread(tree.uid, order, k, self.params.branch_width)


class EntropyAllocator(_ChainsThenBranches):
    """ARPO: branch after tool observations where the policy's uncertainty rises. An anchor's
    rise is the mean uncertainty (entropy, or surprisal when the engine reports only logprobs) of
    the turns generated right after it, minus that of the tree's first turns. Anchors whose rise
    (plus ARPO's random term) is positive get ``branch_width`` continuations, largest first; what
    is left of the round goes to fresh chains at the root, ARPO's global sampling."""

    name = "entropy"
    grows_trees = True
    estimator = "grpo"  # ARPO: GRPO over all leaves of the prompt as one flat group

    def branch(self, ctx: PlanContext, tree: RolloutTree, anchors: list[int], k: int) -> list[Launch]:
        base = _mean_uncertainty(tree, tree.root.children)
        scored = []
        for i in anchors:
            h = _mean_uncertainty(tree, tree[i].children)
            if h is None or base is None:
                continue
            score = self.params.entropy_weight * (h - base) + ctx.rng.uniform(-0.05, 0.05)
            if score > 0:
                scored.append((score, i))
        order = [i for _, i in sorted(scored, reverse=True)]
        return spread(tree.uid, order, k, self.params.branch_width)


def _mean_uncertainty(tree: RolloutTree, ids: Sequence[int]) -> float | None:
    vals = [tree[i].stats.uncertainty for i in ids]
    vals = [v for v in vals if v is not None]
    return float(np.mean(vals)) if vals else None


def first_chains(ctx: PlanContext, roots: Sequence[RolloutTree], shares: Sequence[int], params) -> dict[str, int]:
    """Give each root ``initial_fraction`` of its share as first chains (at least
    ``min_leaves_per_root``) and record the rest as its expansion quota."""
    lo = ctx.cfg.budget.min_leaves_per_root
    plan = {}
    for t, share in zip(roots, shares):
        m = share if params.rounds == 0 else min(share, max(lo, round(params.initial_fraction * share)))
        plan[t.uid] = m
        ctx.quota[t.uid] = share - m
    return plan


def round_share(ctx: PlanContext, uid: str, rounds: int, final: bool) -> int:
    """Leaves of a tree's quota to spend in this round: the rest spread evenly over the rounds left."""
    q = ctx.quota.get(uid, 0)
    if q <= 0:
        return 0
    left = max(1, rounds - ctx.rounds_done.get(uid, 0))
    return q if final else math.ceil(q / left)


def spread(uid: str, anchors: Sequence[int], k: int, width: int) -> list[Launch]:
    """``width`` continuations per anchor in order until ``k`` are placed; leftovers go to the root."""
    out, left = [], k
    for i in anchors:
        if left <= 0:
            break
        n = min(width, left)
        out.append(Launch(uid, int(i), n))
        left -= n
    if left > 0:
        out.append(Launch(uid, ROOT, left))
    return out
