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

import heapq
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

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


class _TreePlan:
    """One tree's anchors and the state of its greedy pass, in plain Python lists: a pipelined
    planner expands one tree at a time, and for tens of anchors scalar code beats numpy calls.

    ``pf``/``ps`` are the predictive probabilities that the next draw at an anchor fails /
    succeeds given its Beta posterior and the ``j`` virtual draws already placed there; ``F``/``S``
    are the probabilities that all leaves of the root group (real and virtual) fail / succeed.

    The objective (docs/algorithm.md §4.2): a tree of ``n`` leaves is worth
    ``P(its outcomes are mixed) * (mixed_weight + n ** leaf_exponent)``. ``(0, 1)`` is the expected
    number of effective leaves (the original rule); ``mixed_weight > 0`` values making one more
    prompt carry signal above adding leaves to a prompt that already does; ``leaf_exponent < 1``
    gives each tree diminishing returns in its leaves.
    """

    __slots__ = ("uid", "anchors", "a", "b", "j", "j_round", "pf", "ps", "bonus", "inv_cost", "n", "F", "S", "Z",
                 "w", "g")

    def __init__(self, uid: str, anchors: list[int], a: list[float], b: list[float], bonus: list[float],
                 inv_cost: list[float], s_root: int, f_root: int, mixed_weight: float = 0.0, leaf_exponent: float = 1.0):
        self.uid, self.anchors, self.a, self.b = uid, anchors, a, b
        self.bonus, self.inv_cost = bonus, inv_cost
        self.w, self.g = mixed_weight, leaf_exponent
        m = len(anchors)
        self.j = [0] * m
        self.j_round = [0] * m
        self.pf = [bi / (ai + bi) for ai, bi in zip(a, b)]
        self.ps = [ai / (ai + bi) for ai, bi in zip(a, b)]
        self.n = s_root + f_root
        self.F = 1.0 if s_root == 0 else 0.0
        self.S = 1.0 if f_root == 0 else 0.0
        self.Z = 1.0 if self.n == 0 else 0.0

    def place(self, v: int, count: int = 1) -> None:
        a, b = self.a[v], self.b[v]
        for _ in range(count):
            self.F *= self.pf[v]
            self.S *= self.ps[v]
            self.Z = 0.0
            self.n += 1
            j = self.j[v] = self.j[v] + 1
            self.pf[v] = (b + j) / (a + b + j)
            self.ps[v] = (a + j) / (a + b + j)
        self.j_round[v] += count

    def _terms(self) -> tuple[float, float]:
        """(value if mixed after one more draw, expected value now): one more draw at ``v`` is
        worth ``after * (1 - F * pf[v] - S * ps[v]) - now``."""
        n = self.n
        return self.w + (n + 1) ** self.g, (self.w + n**self.g) * (1 - self.F - self.S + self.Z)

    def price(self) -> float:
        """What one more leaf is worth in a tree of this size whose outcomes are already mixed:
        1 under the effective-leaves objective. Trees whose best gain is below ``release_gain``
        times this give their round's share to trees that can use it better."""
        return (self.n + 1) ** self.g - self.n**self.g

    def gains(self) -> list[float]:
        """Objective gain of one more continuation at each anchor (contrast bonus excluded)."""
        after, now = self._terms()
        cf, cs = after * self.F, after * self.S
        return [after - cf * pf - cs * ps - now for pf, ps in zip(self.pf, self.ps)]

    def best(self, max_per_anchor: int) -> tuple[float, int]:
        """(score, index) of the best open anchor; (-inf, -1) if none is open."""
        after, now = self._terms()
        cf, cs = after * self.F, after * self.S
        base = after - now
        unit = self.price()  # contrast pairs are valued like leaves, with the same returns to size
        best, arg = NEG, -1
        for v, (pf, ps, bo, ic, jr) in enumerate(zip(self.pf, self.ps, self.bonus, self.inv_cost, self.j_round)):
            if jr < max_per_anchor:
                sc = (base - cf * pf - cs * ps + bo * unit) * ic
                if sc > best:
                    best, arg = sc, v
        return best, arg


class TraceAllocator(Allocator):
    name = "trace"
    needs_predictor = True
    selects_roots = True
    grows_trees = True

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
            cache = ctx.state.predictions
            for t, p, sd in zip(pool, pred.p.tolist(), pred.std.tolist()):
                cache[(t.uid, ROOT)] = (p, sd)
            a, b = pred.beta_params(kappa_max=self.kappa_max)
            value = mixed_probability(a, b, max(2, round(share)))
            order = np.lexsort((ctx.rng.random(len(pool)), -value))
            chosen = [pool[i] for i in order[: ctx.n_roots]]
        ctx.state.release_pool = 0
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
        plans = self._plans(ctx, uids)
        k = [want[u] for u in uids]
        if not final:
            # Trees where even the best continuation is nearly worthless release this round's
            # share to a pool that trees with a high marginal gain draw from.
            for t, plan in enumerate(plans):
                if max(plan.gains(), default=NEG) < self.params.release_gain * plan.price():
                    ctx.state.release_pool += k[t]
                    ctx.quota[plan.uid] -= k[t]
                    k[t] = 0
            extra = min(ctx.state.release_pool, sum(k))
            ctx.state.release_pool -= extra
        counts = self._greedy(plans, k, extra)
        out: list[Launch] = []
        for plan, c in zip(plans, counts):
            for v, n in sorted(c.items()):
                out.append(Launch(plan.uid, plan.anchors[v], n))
            if not final:
                ctx.quota[plan.uid] = max(0, ctx.quota[plan.uid] - sum(c.values()))
        return out

    def _greedy(self, plans: list[_TreePlan], k: list[int], extra: int) -> list[dict[int, int]]:
        """Each tree places its own ``k`` leaves one at a time at its best anchor; then ``extra``
        leaves go one by one to whichever tree's best anchor scores highest (a heap of each
        tree's best score). Returns anchor index -> count per tree."""
        cap = self.params.max_per_anchor
        counts: list[dict[int, int]] = [{} for _ in plans]
        for plan, kk, c in zip(plans, k, counts):
            for _ in range(kk):
                score, v = plan.best(cap)
                if v < 0:
                    break
                plan.place(v)
                c[v] = c.get(v, 0) + 1
        heap = []
        if extra > 0:
            for t, plan in enumerate(plans):
                score, v = plan.best(cap)
                if v >= 0:
                    heap.append((-score, t, v))
            heapq.heapify(heap)
        while extra > 0 and heap:
            _, t, v = heapq.heappop(heap)
            plan = plans[t]
            plan.place(v)
            counts[t][v] = counts[t].get(v, 0) + 1
            extra -= 1
            score, v = plan.best(cap)
            if v >= 0:
                heapq.heappush(heap, (-score, t, v))
        return counts

    def _predictions(self, ctx: PlanContext, trees: Sequence[RolloutTree], ids: Sequence[list[int]]) -> list[tuple[list[float], list[float]]]:
        """(p list, std list) per tree. A node's prediction cannot change within a step (its
        features are fixed and the predictor learns between steps), so each is computed once per
        planner and cached in ``ctx.state.predictions``; a call predicts only the anchors that are new."""
        cache = ctx.state.predictions
        miss = [(t, [i for i in nid if (t.uid, i) not in cache]) for t, nid in zip(trees, ids)]
        miss = [(t, m) for t, m in miss if m]
        if miss:
            preds = ctx.predict([t for t, _ in miss], [m for _, m in miss])
            for (t, m), pr in zip(miss, preds):
                for i, p, sd in zip(m, pr.p.tolist(), pr.std.tolist()):
                    cache[(t.uid, i)] = (p, sd)
        out = []
        for t, nid in zip(trees, ids):
            rows = [cache[(t.uid, i)] for i in nid]
            out.append(([r[0] for r in rows], [r[1] for r in rows]))
        return out

    def _plans(self, ctx: PlanContext, uids: Sequence[str]) -> list[_TreePlan]:
        trees = [ctx.trees[u] for u in uids]
        views = [tree_view(t, ctx.threshold, ctx.max_turns) for t in trees]
        preds = self._predictions(ctx, trees, [v.anchors for v in views])
        return [self._plan(ctx, tree, view, pred) for tree, view, pred in zip(trees, views, preds)]

    def _plan(self, ctx: PlanContext, tree: RolloutTree, view: _TreeView, pred: tuple[list[float], list[float]]) -> _TreePlan:
        """The tree's greedy state: each anchor's Beta posterior (the predictor's estimate as a prior,
        ``Prediction.beta_params``, inherited from the prompt as below, plus the
        outcomes below it), its contrast bonus and inverse cost.

        A prefix's prior inherits its prompt's evidence: the conditional success probability is a
        martingale down the tree, so a prefix is its prompt moved by the turns taken. Its prior mean
        is the root's posterior mean from the leaves *outside* the prefix's subtree (its own leaves
        are added afterwards: nothing counts twice), shifted in logit space by what the predictor
        says the turns changed (logit p_v - logit p_root); its concentration is the predictor's,
        capped by the root's. A prompt whose chains all failed thereby makes its prefixes look hard
        too, which features alone cannot know (docs/algorithm.md §4.1).

        Scalar Python in one pass: for tens of anchors several times faster than the same
        arithmetic as numpy calls (tests/test_trace_planning.py keeps the numpy form as the
        reference and checks they agree)."""
        ids = view.anchors
        ps, sds = pred
        kmax, cw, ce = self.kappa_max, self.params.contrast_weight, -self.params.cost_exponent
        floor, total = max(view.mean_turn, 1.0), view.mean_total
        S, F, HS, HF, CUM = view.s, view.f, view.hs, view.hf, view.cum
        s_root, f_root = S[ROOT], F[ROOT]
        A, B, bonus, inv_cost = [], [], [], []
        a_root = b_root = root_odds = 0.0
        for k, i in enumerate(ids):
            p = ps[k]
            pk = min(max(p, 1e-4), 1 - 1e-4)
            var = max(sds[k], 1e-6) ** 2
            kappa = min(max(pk * (1 - pk) / var - 1.0, 1.0), kmax)
            a0, b0 = kappa * pk, kappa * (1 - pk)
            pc = min(max(p, 1e-6), 1 - 1e-6)
            if k == 0:  # the root (tree_view lists it first)
                a_root, b_root, root_odds = a0, b0, (1 - pc) / pc
            else:  # the prompt's evidence outside this subtree, moved by the turns taken
                out_a, out_b = a_root + s_root - S[i], b_root + f_root - F[i]
                odds = (out_a / out_b) * (pc / (1 - pc)) * root_odds
                mean = odds / (1.0 + odds)
                kappa = min(a0 + b0, out_a + out_b)
                a0, b0 = kappa * mean, kappa * (1 - mean)
            a, b = a0 + S[i], b0 + F[i]
            q = a / (a + b)
            A.append(a)
            B.append(b)
            bonus.append(cw * (q * HF[i] + (1 - q) * HS[i]))
            inv_cost.append(max(total - CUM[i], floor) ** ce)
        plan = _TreePlan(tree.uid, ids, A, B, bonus, inv_cost, s_root, f_root, self.params.mixed_weight,
                         self.params.leaf_exponent)
        # Leaves still in flight are draws we have not seen yet.
        flying = ctx.in_flight.get(tree.uid)
        if flying:
            pos = {v: k for k, v in enumerate(ids)}
            for anchor, count in Counter(flying).items():
                v = pos.get(anchor)
                if v is not None:
                    plan.place(v, count)
            plan.j_round = [0] * len(ids)
        return plan


class OracleAllocator(TraceAllocator):
    """The TRACE rule with the true success probability (simulator only): the upper bound."""

    name = "oracle"
    simulator_only = True

    def __init__(self, cfg):
        super().__init__(cfg, kappa_max=1e6)
