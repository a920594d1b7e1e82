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

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..predictor.base import Prediction
from ..tree import ROOT, LeafStatus, RolloutTree
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


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def prefix_prior(
    a: np.ndarray, b: np.ndarray, p: np.ndarray, s: np.ndarray, f: np.ndarray, s_root: float, f_root: float
) -> tuple[np.ndarray, np.ndarray]:
    """Beta priors for a tree's anchors (row 0 is the root) that inherit the prompt's evidence.

    A prefix's success probability is its prompt's, moved by the turns taken (the conditional
    success probability is a martingale down the tree). So a prefix's prior mean is the root's
    posterior mean from the leaves *outside* the prefix's subtree (no double counting: its own
    leaves are added by the caller), shifted in logit space by what the predictor says the turns
    changed (logit p_v - logit p_root). A prompt whose chains all failed thereby makes its prefixes
    look hard too, which the predictor alone (features only) cannot know. The concentration is the
    predictor's, capped by the root's (a prefix is never surer than its prompt's evidence).
    """
    a, b = np.array(a, np.float64), np.array(b, np.float64)
    if a.size < 2:
        return a, b
    out_a = a[0] + s_root - s[1:]
    out_b = b[0] + f_root - f[1:]
    mean = 1.0 / (1.0 + np.exp(-(_logit(out_a / (out_a + out_b)) + _logit(p[1:]) - _logit(p[:1]))))
    kappa = np.minimum(a[1:] + b[1:], out_a + out_b)
    a[1:], b[1:] = kappa * mean, kappa * (1 - mean)
    return a, b


@dataclass
class _TreeView:
    """One tree's outcome counts and token costs, computed in one pass over its nodes (plain Python:
    for trees of tens of nodes this beats a dozen small numpy calls)."""

    anchors: list[int]
    s: list[int]  # usable successes below each node
    f: list[int]  # usable failures below each node
    hs: list[int]  # children whose subtree holds a success
    hf: list[int]  # ... a failure
    cum: list[int]  # generated tokens on the path root -> node
    mean_total: float  # mean generated tokens of a finished leaf's path
    mean_turn: float  # mean generated tokens of one turn


def tree_view(tree: RolloutTree, threshold: float, max_turns: int) -> _TreeView:
    nodes = tree.nodes
    n = len(nodes)
    s, f, hs, hf, cum, parent = [0] * n, [0] * n, [0] * n, [0] * n, [0] * n, [0] * n
    anchors: list[int] = []
    tokens = depth = done = 0
    for i, node in enumerate(nodes):
        p = node.parent
        if p is not None:
            parent[i] = p
            cum[i] = cum[p] + len(node.action_ids)
        if node.terminal:
            done += 1
            tokens += cum[i]
            depth += node.depth
            if node.status is not LeafStatus.FAILED:
                if node.reward >= threshold:
                    s[i] = 1
                else:
                    f[i] = 1
        elif node.depth < max_turns:
            anchors.append(i)
    for i in range(n - 1, 0, -1):  # children have larger ids than their parents
        p = parent[i]
        if s[i]:
            s[p] += s[i]
            hs[p] += 1
        if f[i]:
            f[p] += f[i]
            hf[p] += 1
    mean_total = tokens / done if done else 1.0
    mean_turn = mean_total / max(1.0, depth / done) if done else 1.0
    return _TreeView(anchors, s, f, hs, hf, cum, mean_total, mean_turn)


@dataclass
class _Forest:
    """Padded (trees x anchors) arrays for a vectorized greedy pass over many trees.

    ``pf``/``ps`` are the predictive probabilities that the next draw at an anchor fails /
    succeeds given its Beta posterior and the ``j`` virtual draws already placed there; the tree's
    group state is the probability that all its leaves (real and virtual) fail / succeed."""

    uids: list[str]
    anchors: np.ndarray  # (T, A) node ids, -1 = padding
    a: np.ndarray  # Beta posterior per anchor
    b: np.ndarray
    contrast: np.ndarray  # expected new informative sibling pairs of one more child
    inv_cost: np.ndarray  # 1 / expected_tokens ** cost_exponent (0 for padding)
    j: np.ndarray  # virtual draws placed at the anchor (in flight + this pass)
    j_round: np.ndarray  # draws placed at the anchor in this pass
    pf: np.ndarray
    ps: np.ndarray
    n: np.ndarray  # (T,) leaves in the root group, real + virtual
    p_fail: np.ndarray  # (T,) P(every leaf of the group fails)
    p_succ: np.ndarray  # (T,) P(every leaf succeeds)
    p_none: np.ndarray  # (T,) 1 while the group is empty (both events hold vacuously)

    def place(self, t: np.ndarray, v: np.ndarray, count: int = 1) -> None:
        for _ in range(count):
            self.p_fail[t] *= self.pf[t, v]
            self.p_succ[t] *= self.ps[t, v]
            self.p_none[t] = 0.0
            self.n[t] += 1
            self.j[t, v] += 1
            a, b, j = self.a[t, v], self.b[t, v], self.j[t, v]
            self.pf[t, v] = (b + j) / (a + b + j)
            self.ps[t, v] = (a + j) / (a + b + j)
        self.j_round[t, v] += count

    def effective_gain(self) -> np.ndarray:
        """Expected increase in leaves with a non-zero advantage from one more continuation."""
        n, f, s, z = self.n[:, None], self.p_fail[:, None], self.p_succ[:, None], self.p_none[:, None]
        return (n + 1) * (1 - f * self.pf - s * self.ps) - n * (1 - f - s + z)


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
            cache = ctx.state.setdefault("predictions", {})
            for t, p, sd in zip(pool, pred.p.tolist(), pred.std.tolist()):
                cache[(t.uid, ROOT)] = (p, sd)
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
            best = np.where(forest.anchors >= 0, forest.effective_gain(), NEG).max(axis=1)
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
        open_ = (fo.anchors >= 0) & (fo.j_round < self.params.max_per_anchor)
        rows = np.arange(len(fo.uids))
        while True:
            score = np.where(open_, (fo.effective_gain() + fo.contrast) * fo.inv_cost, NEG)
            best = score.argmax(axis=1)
            best_val = score[rows, best]
            active = (k > 0) & np.isfinite(best_val)
            if active.any():
                t, v = rows[active], best[active]
                k[active] -= 1
            elif extra > 0 and np.isfinite(best_val).any():
                t = np.array([int(best_val.argmax())])
                v = best[t]
                extra -= 1
            else:
                break
            fo.place(t, v)
            counts[t, v] += 1
            open_[t, v] = fo.j_round[t, v] < self.params.max_per_anchor
        return counts

    def _predictions(self, ctx: PlanContext, trees: Sequence[RolloutTree], ids: Sequence[list[int]]) -> list[np.ndarray]:
        """(2, n) arrays of (p, std) per tree. A node's prediction cannot change within a step (its
        features are fixed and the predictor learns between steps), so each is computed once per
        planner and cached in ``ctx.state``; a call predicts only the anchors that are new."""
        cache: dict[tuple[str, int], tuple[float, float]] = ctx.state.setdefault("predictions", {})
        miss = [(t, [i for i in nid if (t.uid, i) not in cache]) for t, nid in zip(trees, ids)]
        miss = [(t, m) for t, m in miss if m]
        if miss:
            preds = ctx.predict([t for t, _ in miss], [m for _, m in miss])
            for (t, m), pr in zip(miss, preds):
                for i, p, sd in zip(m, pr.p.tolist(), pr.std.tolist()):
                    cache[(t.uid, i)] = (p, sd)
        return [np.array([cache[(t.uid, i)] for i in nid], np.float64).reshape(-1, 2).T for t, nid in zip(trees, ids)]

    def _forest(self, ctx: PlanContext, uids: Sequence[str]) -> _Forest:
        trees = [ctx.trees[u] for u in uids]
        views = [tree_view(t, ctx.threshold, ctx.max_turns) for t in trees]
        preds = self._predictions(ctx, trees, [v.anchors for v in views])
        shape = (len(trees), max(len(v.anchors) for v in views))
        T = shape[0]
        fo = _Forest(
            uids=list(uids),
            anchors=np.full(shape, -1, np.int64),
            a=np.ones(shape),
            b=np.ones(shape),
            contrast=np.zeros(shape),
            inv_cost=np.zeros(shape),
            j=np.zeros(shape),
            j_round=np.zeros(shape),
            pf=np.full(shape, 0.5),
            ps=np.full(shape, 0.5),
            n=np.zeros(T),
            p_fail=np.ones(T),
            p_succ=np.ones(T),
            p_none=np.ones(T),
        )
        for t, (tree, view, pred) in enumerate(zip(trees, views, preds)):
            self._fill_tree(ctx, fo, t, tree, view, pred)
        return fo

    def _fill_tree(self, ctx: PlanContext, fo: _Forest, t: int, tree: RolloutTree, view: _TreeView, pred: np.ndarray) -> None:
        ids = view.anchors
        m = len(ids)
        s = np.array([view.s[i] for i in ids], np.float64)
        f = np.array([view.f[i] for i in ids], np.float64)
        p, std = pred
        a0, b0 = prefix_prior(*Prediction(p, std).beta_params(kappa_max=self.kappa_max), p, s, f, view.s[ROOT], view.f[ROOT])
        a, b = a0 + s, b0 + f
        q = a / (a + b)
        hs = np.array([view.hs[i] for i in ids], np.float64)
        hf = np.array([view.hf[i] for i in ids], np.float64)
        cost = np.maximum(view.mean_total - np.array([view.cum[i] for i in ids], np.float64), max(view.mean_turn, 1.0))
        fo.anchors[t, :m] = ids
        fo.a[t, :m], fo.b[t, :m] = a, b
        fo.pf[t, :m], fo.ps[t, :m] = b / (a + b), a / (a + b)
        fo.contrast[t, :m] = self.params.contrast_weight * (q * hf + (1 - q) * hs)
        fo.inv_cost[t, :m] = cost ** -self.params.cost_exponent
        n_obs = view.s[ROOT] + view.f[ROOT]
        fo.n[t] = n_obs
        fo.p_fail[t] = 1.0 if view.s[ROOT] == 0 else 0.0
        fo.p_succ[t] = 1.0 if view.f[ROOT] == 0 else 0.0
        fo.p_none[t] = 1.0 if n_obs == 0 else 0.0
        # Leaves still in flight are draws we have not seen yet.
        flying = ctx.in_flight.get(tree.uid)
        if flying:
            pos = {v: k for k, v in enumerate(ids)}
            for anchor, count in Counter(flying).items():
                v = pos.get(anchor)
                if v is not None:
                    fo.place(np.array([t]), np.array([v]), count)
            fo.j_round[t] = 0


class OracleAllocator(TraceAllocator):
    """The TRACE rule with the true success probability (simulator only): the upper bound."""

    name = "oracle"

    def __init__(self, cfg):
        super().__init__(cfg, kappa_max=1e6)
