"""TRACE: spend the budget where terminal rewards are most likely to come out mixed.

Global root allocation picks, from the candidate pool, the prompts whose predicted success rate
makes a mixed group most likely at their share of the budget, and gives each a first set of
chains. Local expansion then spends each tree's remaining share, a round at a time, on anchors
(the root or a turn-level prefix) by a greedy rule on the marginal gain of one more continuation:

    gain(v) = expected increase in leaves of the root's group that get a non-zero advantage
            + contrast_weight * expected new informative sibling pairs at v,
    score(v) = gain(v) / expected_generated_tokens(v) ** cost_exponent.

Success at an anchor is Beta(a, b): the predictor's estimate moment-matched into a prior, plus the
successes and failures already observed below the anchor. Leaves already placed (in flight, or
earlier in the same greedy pass) are treated as virtual draws, so the gain of piling onto one
anchor or one tree falls exactly as the Beta-Binomial says it should. docs/algorithm.md derives it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..tree import ROOT, RolloutTree, subtree_sum
from .base import Allocator, Launch, PlanContext, even_split
from .baselines import first_chains, round_share

NEG = -np.inf


def beta_moment(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """E[p^n] for p ~ Beta(a, b): prod_{j<n} (a + j) / (a + b + j)."""
    out = np.ones_like(a, dtype=np.float64)
    for j in range(n):
        out *= (a + j) / (a + b + j)
    return out


def mixed_probability(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """P(n Bernoulli(p) draws are not all equal) with p ~ Beta(a, b)."""
    if n < 2:
        return np.zeros_like(a, dtype=np.float64)
    return np.clip(1.0 - beta_moment(a, b, n) - beta_moment(b, a, n), 0.0, 1.0)


@dataclass
class _Forest:
    """Padded (trees x anchors) arrays for a vectorized greedy pass over many trees."""

    uids: list[str]
    anchors: np.ndarray  # (T, A) node ids, -1 = padding
    a: np.ndarray  # Beta posterior per anchor
    b: np.ndarray
    hf: np.ndarray  # children of the anchor whose leaves include a failure
    hs: np.ndarray  # ... include a success
    cost: np.ndarray  # expected generated tokens of one continuation
    j: np.ndarray  # virtual draws placed at the anchor (in flight + this pass)
    j_round: np.ndarray  # draws placed at the anchor in this pass
    n: np.ndarray  # (T,) leaves in the root group, real + virtual
    p_fail: np.ndarray  # (T,) P(every leaf of the group fails)
    p_succ: np.ndarray  # (T,) P(every leaf succeeds)
    p_none: np.ndarray  # (T,) 1 while the group is empty (both events hold vacuously)

    def place(self, t: np.ndarray, v: np.ndarray) -> None:
        a, b, j = self.a[t, v], self.b[t, v], self.j[t, v]
        self.p_fail[t] *= (b + j) / (a + b + j)
        self.p_succ[t] *= (a + j) / (a + b + j)
        self.p_none[t] = 0.0
        self.n[t] += 1
        self.j[t, v] += 1
        self.j_round[t, v] += 1

    def gains(self, contrast_weight: float) -> tuple[np.ndarray, np.ndarray]:
        """(effective-leaf gain, total gain) of one more continuation at every anchor."""
        a, b, j = self.a, self.b, self.j
        pf = (b + j) / (a + b + j)
        ps = (a + j) / (a + b + j)
        n, f, s, z = self.n[:, None], self.p_fail[:, None], self.p_succ[:, None], self.p_none[:, None]
        eff = (n + 1) * (1 - f * pf - s * ps) - n * (1 - f - s + z)
        q = a / (a + b)
        total = eff + contrast_weight * (q * self.hf + (1 - q) * self.hs)
        return eff, total


class TraceAllocator(Allocator):
    name = "trace"
    needs_predictor = True

    def __init__(self, cfg, kappa_max: float | None = None):
        super().__init__(cfg)
        self.kappa_max = self.cfg.predictor.kappa_max if kappa_max is None else kappa_max

    # ------------------------------------------------------------------ roots
    def select_roots(self, ctx: PlanContext, pool: Sequence[RolloutTree]) -> dict[str, int]:
        leaves = ctx.ledger.budget.leaves
        share = leaves / ctx.n_roots
        if len(pool) == ctx.n_roots:
            chosen = list(pool)
        else:
            pred = ctx.predict_roots(pool)
            a, b = pred.beta_params(kappa_max=self.kappa_max)
            value = mixed_probability(a, b, max(2, round(share)))
            order = np.lexsort((ctx.rng.random(len(pool)), -value))
            chosen = [pool[i] for i in order[: ctx.n_roots]]
        ctx.state["release_pool"] = 0
        return first_chains(ctx, chosen, even_split(leaves, len(chosen)), self.params)

    # ------------------------------------------------------------------ expansion
    def expand(self, ctx: PlanContext, ready: Sequence[str], final: bool = False) -> list[Launch]:
        if final:
            # Everything is back and budget is left (released by hopeless trees, or clipped):
            # spend it where it is worth most, over all trees at once.
            uids = list(ctx.trees)
            want = dict.fromkeys(uids, 0)
            extra = ctx.ledger.remaining
            for u in uids:
                ctx.quota[u] = 0
        else:
            uids = [u for u in ready if ctx.quota.get(u, 0) > 0]
            want = {u: round_share(ctx, u, self.params.rounds, final=False) for u in uids}
            extra = 0
        if not uids:
            return []
        forest = self._forest(ctx, uids)
        k = np.array([want[u] for u in uids], dtype=np.int64)
        if not final:
            # Trees where even the best continuation is nearly worthless release this round's
            # share to a pool that trees with a high marginal gain draw from.
            eff, _ = forest.gains(self.params.contrast_weight)
            best = np.where(forest.anchors >= 0, eff, NEG).max(axis=1)
            hopeless = best < 0.05
            released = int(k[hopeless].sum())
            ctx.state["release_pool"] = ctx.state.get("release_pool", 0) + released
            for u, kk in zip(np.array(uids)[hopeless], k[hopeless]):
                ctx.quota[u] -= int(kk)
            k[hopeless] = 0
            extra = min(ctx.state["release_pool"], int(k.sum()))
            ctx.state["release_pool"] -= extra
        counts = self._greedy(forest, k, extra)
        out: list[Launch] = []
        for t, u in enumerate(uids):
            placed = 0
            for v in np.flatnonzero(counts[t]):
                out.append(Launch(u, int(forest.anchors[t, v]), int(counts[t, v])))
                placed += int(counts[t, v])
            if not final:
                ctx.quota[u] = max(0, ctx.quota[u] - placed)
        return out

    def _greedy(self, fo: _Forest, k: np.ndarray, extra: int) -> np.ndarray:
        """Place leaves one at a time per tree (every tree with quota left takes its best anchor
        each pass), then place ``extra`` leaves one by one wherever the score is highest."""
        counts = np.zeros(fo.anchors.shape, dtype=np.int64)
        valid = fo.anchors >= 0
        cost = fo.cost ** self.params.cost_exponent
        rows = np.arange(len(fo.uids))
        while True:
            _, gain = fo.gains(self.params.contrast_weight)
            score = np.where(valid & (fo.j_round < self.params.max_per_anchor), gain / cost, NEG)
            best = score.argmax(axis=1)
            best_val = score[rows, best]
            active = (k > 0) & np.isfinite(best_val)
            if active.any():
                t = rows[active]
                fo.place(t, best[active])
                counts[t, best[active]] += 1
                k[active] -= 1
                continue
            if extra <= 0 or not np.isfinite(best_val).any():
                break
            t = int(best_val.argmax())
            fo.place(np.array([t]), np.array([best[t]]))
            counts[t, best[t]] += 1
            extra -= 1
        return counts

    def _forest(self, ctx: PlanContext, uids: Sequence[str]) -> _Forest:
        trees = [ctx.trees[u] for u in uids]
        anchor_lists = [ctx.anchor_ids(t) for t in trees]
        preds = ctx.predict(trees, anchor_lists)
        T, A = len(trees), max(len(x) for x in anchor_lists)
        shape = (T, A)
        fo = _Forest(
            uids=list(uids),
            anchors=np.full(shape, -1, np.int64),
            a=np.ones(shape),
            b=np.ones(shape),
            hf=np.zeros(shape),
            hs=np.zeros(shape),
            cost=np.ones(shape),
            j=np.zeros(shape),
            j_round=np.zeros(shape),
            n=np.zeros(T),
            p_fail=np.ones(T),
            p_succ=np.ones(T),
            p_none=np.ones(T),
        )
        for t, (tree, ids, pred) in enumerate(zip(trees, anchor_lists, preds)):
            self._fill_tree(ctx, fo, t, tree, np.asarray(ids, np.int64), pred)
        return fo

    def _fill_tree(self, ctx: PlanContext, fo: _Forest, t: int, tree: RolloutTree, ids: np.ndarray, pred) -> None:
        c = tree.columns()
        parent, depth, leaf = c["parent"], c["depth"], c["leaf"]
        usable = leaf == 1
        succ = usable & (c["reward"] >= ctx.threshold)
        s = subtree_sum(parent, depth, succ.astype(np.int64))
        f = subtree_sum(parent, depth, (usable & ~succ).astype(np.int64))
        # Children of each node whose subtree holds a failure / a success.
        hf = np.zeros(len(parent))
        hs = np.zeros(len(parent))
        kids = np.flatnonzero(parent >= 0)
        np.add.at(hf, parent[kids], (f[kids] > 0).astype(float))
        np.add.at(hs, parent[kids], (s[kids] > 0).astype(float))
        # Generated tokens on the path to each node, and the expected cost of a continuation.
        cum = c["gen"].astype(np.float64)
        for d in range(1, int(depth.max(initial=0)) + 1):
            idx = np.flatnonzero(depth == d)
            cum[idx] += cum[parent[idx]]
        done = np.flatnonzero(usable | (leaf == 2))
        mean_total = float(cum[done].mean()) if done.size else 1.0
        mean_turn = mean_total / max(1.0, float(depth[done].mean())) if done.size else 1.0
        a0, b0 = pred.beta_params(kappa_max=self.kappa_max)
        m = len(ids)
        fo.anchors[t, :m] = ids
        fo.a[t, :m] = a0 + s[ids]
        fo.b[t, :m] = b0 + f[ids]
        fo.hf[t, :m] = hf[ids]
        fo.hs[t, :m] = hs[ids]
        fo.cost[t, :m] = np.maximum(mean_total - cum[ids], max(mean_turn, 1.0))
        n_obs = int(s[ROOT] + f[ROOT])
        fo.n[t] = n_obs
        fo.p_fail[t] = 1.0 if s[ROOT] == 0 else 0.0
        fo.p_succ[t] = 1.0 if f[ROOT] == 0 else 0.0
        fo.p_none[t] = 1.0 if n_obs == 0 else 0.0
        # Leaves still in flight are draws we have not seen yet.
        pos = {int(v): k for k, v in enumerate(ids)}
        for anchor in ctx.in_flight.get(tree.uid, []):
            v = pos.get(anchor)
            if v is not None:
                fo.place(np.array([t]), np.array([v]))
        fo.j_round[t] = 0


class OracleAllocator(TraceAllocator):
    """The TRACE rule with the true success probability (simulator only): the upper bound."""

    name = "oracle"

    def __init__(self, cfg):
        super().__init__(cfg, kappa_max=1e6)
