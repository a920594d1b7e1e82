"""The planner: an event-driven state machine that turns allocator decisions into launches.

Executors drive it the same way whether leaves come from the simulator's event queue or from
verl agent loops: ``start(pool)`` returns the first launches; each finished leaf is reported with
``leaf_done(launch, leaf_id)`` (the executor has already added its turns to the tree), which
returns any new launches. Budget checks, readiness (per tree, or a global barrier in ``rounds``
mode), the final sweep and the never-silently-underspent fallback live here, once.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..predictor.base import AnchorBatch
from ..tree import ROOT, LeafStatus, RolloutTree
from .base import Allocator, Launch, PlanContext, even_split


@dataclass(frozen=True)
class Issued(Launch):
    """A launch as issued by the planner: tagged with the tree's round so completions can be
    attributed to it."""

    round: int = 0


class TreePlanner:
    def __init__(self, allocator: Allocator, ctx: PlanContext):
        self.allocator, self.ctx = allocator, ctx
        self.cfg = ctx.cfg
        self._round: dict[str, int] = {}
        self._pending: dict[tuple[str, int], int] = {}
        self._launched: dict[tuple[str, int], int] = {}
        self._finished: set[str] = set()
        self._launch_of: dict[tuple[str, int], tuple[int, bool]] = {}  # (uid, leaf) -> (anchor, first chain)
        self._closed = False
        self._swept = False
        self.plan_seconds = 0.0
        self.fallback_leaves = 0
        self.started = False

    # ------------------------------------------------------------------ events
    def choose_roots(self, pool: Sequence[RolloutTree]) -> dict[str, int]:
        """The allocator's global root allocation over the candidate pool, checked against the
        budget: uid -> first chains, for at most ``n_roots`` roots. ``start`` begins with it; a
        caller that spreads the chosen roots over several planners (the verl rollout manager)
        calls it on one planner over the whole pool, so the choice is the same as one planner's."""
        ctx = self.ctx
        uids = {t.uid for t in pool}
        if len(uids) != len(pool):
            raise ValueError("candidate pool has duplicate uids")
        if len(pool) < ctx.n_roots:
            raise ValueError(f"candidate pool has {len(pool)} prompts, fewer than the {ctx.n_roots} roots to select")
        min_leaves = self.cfg.budget.min_leaves_per_root
        if ctx.ledger.budget.leaves < ctx.n_roots * min_leaves:
            raise ValueError(
                f"budget of {ctx.ledger.budget.leaves} leaves is smaller than {ctx.n_roots} roots x "
                f"budget.min_leaves_per_root={min_leaves}"
            )
        t0 = time.perf_counter()
        plan = self.allocator.select_roots(ctx, pool)
        self.plan_seconds += time.perf_counter() - t0
        if any(u not in uids for u in plan):
            raise ValueError(f"allocator {self.allocator.name} selected roots outside the pool")
        chosen = {u: n for u, n in plan.items() if n > 0}
        if len(chosen) > ctx.n_roots:
            raise ValueError(f"allocator {self.allocator.name} selected {len(chosen)} roots, more than {ctx.n_roots}")
        if sum(chosen.values()) > ctx.ledger.budget.leaves:
            raise ValueError(f"allocator {self.allocator.name} planned more first chains than the budget")
        return chosen

    def start(self, pool: Sequence[RolloutTree]) -> list[Issued]:
        ctx = self.ctx
        if self.started:
            raise RuntimeError("planner.start() called twice; build one planner per step")
        self.started = True
        chosen = self.choose_roots(pool)
        by_uid = {t.uid: t for t in pool}
        for u in chosen:
            ctx.trees[u] = by_uid[u]
            ctx.rounds_done[u] = 0
            ctx.in_flight[u] = []
            self._round[u] = -1  # the first chains open round 0
        first = [Launch(u, ROOT, n) for u, n in chosen.items() if n > 0]
        if ctx.ledger.budget.tokens is not None:
            # A token budget reserves a worst-case leaf per leaf in flight: one chain for every root
            # before any root's second, or the first roots' chains could leave a later root empty.
            first = [Launch(x.uid, ROOT, 1) for x in first] + [Launch(x.uid, ROOT, x.count - 1) for x in first]
        launches = self._issue(first)
        return launches or self._final()

    def leaf_done(self, launch: Issued, leaf_id: int) -> list[Issued]:
        return self.leaves_done([(launch, leaf_id)])

    def leaves_done(self, done: Sequence[tuple[Issued, int]]) -> list[Issued]:
        """Report finished leaves (several at once lets the allocator batch its predictions)."""
        ctx = self.ctx
        touched: dict[str, None] = {}
        for launch, leaf_id in done:
            tree = ctx.trees[launch.uid]
            leaf = tree[leaf_id]
            if not leaf.terminal:
                raise ValueError(f"leaf_done: node {leaf_id} of tree {launch.uid} is not a finished leaf")
            # Walk up from the leaf to the anchor: the turns this launch generated.
            new_tokens, cur = 0, leaf_id
            while cur != launch.anchor:
                if cur is None or cur == ROOT:
                    raise ValueError(f"leaf {leaf_id} of tree {launch.uid} does not descend from anchor {launch.anchor}")
                node = tree.nodes[cur]
                new_tokens += len(node.action_ids)
                cur = node.parent
            ctx.ledger.complete(new_tokens, failed=leaf.status is LeafStatus.FAILED)
            self._launch_of[(launch.uid, leaf_id)] = (launch.anchor, launch.anchor == ROOT and launch.round == 0)
            ctx.in_flight[launch.uid].remove(launch.anchor)
            self._pending[(launch.uid, launch.round)] -= 1
            touched[launch.uid] = None
        return self._plan(touched)

    @property
    def done(self) -> bool:
        return self.started and self._closed and self.ctx.ledger.in_flight == 0

    # ------------------------------------------------------------------ planning
    def _ready(self, touched: Sequence[str]) -> list[str]:
        """Trees to re-plan now. In ``pipelined`` mode only a tree whose leaves were just reported
        can have become ready (every other live tree is waiting on its open round), so this costs
        O(reported trees), not O(trees), per event."""
        ctx = self.ctx
        if self.cfg.schedule == "rounds":
            return [u for u in ctx.trees if u not in self._finished] if ctx.ledger.in_flight == 0 else []
        rf = self.cfg.ready_fraction
        out = []
        for u in touched:
            if u in self._finished:
                continue
            key = (u, self._round[u])
            if self._pending.get(key, 0) <= int((1.0 - rf) * self._launched.get(key, 0)):
                out.append(u)
        return out

    def _plan(self, touched: Sequence[str]) -> list[Issued]:
        ctx = self.ctx
        launches: list[Issued] = []
        ready = self._ready(touched)
        if ready and ctx.ledger.remaining > 0:
            t0 = time.perf_counter()
            proposed = self.allocator.expand(ctx, ready)
            self.plan_seconds += time.perf_counter() - t0
            launches = self._issue(proposed)
        expanded = {x.uid for x in launches}
        self._finished.update(u for u in ready if u not in expanded)
        if not launches and ctx.ledger.in_flight == 0:
            launches = self._final()
        return launches

    def _final(self) -> list[Issued]:
        """Nothing in flight: give the allocator one last call, then fall back to fresh chains at
        the roots, so the budget is spent unless it truly cannot be (and then say why)."""
        ctx, led = self.ctx, self.ctx.ledger
        if led.remaining <= 0 or self._closed:
            self._closed = True
            return []
        if not self._swept:
            self._swept = True
            t0 = time.perf_counter()
            proposed = self.allocator.expand(ctx, list(ctx.trees), final=True)
            self.plan_seconds += time.perf_counter() - t0
            launches = self._issue(proposed)
            if launches:
                return launches
        if not ctx.trees:
            led.note_unspent("no_roots", led.remaining)
            self._closed = True
            return []
        can = led.affordable(led.remaining)
        if can == 0:
            led.note_unspent("token_budget", led.remaining)
            self._closed = True
            return []
        uids = list(ctx.trees)
        launches = self._issue([Launch(u, ROOT, n) for u, n in zip(uids, even_split(can, len(uids))) if n > 0])
        self.fallback_leaves += sum(x.count for x in launches)
        return launches

    def _issue(self, proposed: Sequence[Launch]) -> list[Issued]:
        """Check launches against the tree and the ledger; each tree that gets any opens a round."""
        ctx = self.ctx
        accepted: list[Launch] = []
        for lz in proposed:
            if lz.count <= 0:
                continue
            tree = ctx.trees.get(lz.uid)
            if tree is None:
                raise ValueError(f"allocator {self.allocator.name} expanded unknown tree {lz.uid!r}")
            node = tree[lz.anchor]
            if node.terminal or node.depth >= ctx.max_turns:
                raise ValueError(
                    f"allocator {self.allocator.name} chose node {lz.anchor} of {lz.uid}, which is not an anchor"
                )
            n = ctx.ledger.affordable(lz.count)
            if n < lz.count and ctx.ledger.remaining >= lz.count:
                ctx.ledger.note_unspent("token_budget", lz.count - n)
            if n == 0:
                continue
            ctx.ledger.launch(n)
            accepted.append(Launch(lz.uid, lz.anchor, n))
        for uid in dict.fromkeys(x.uid for x in accepted):
            self._round[uid] += 1
            self._finished.discard(uid)
            ctx.rounds_done[uid] = self._round[uid]
        out = []
        for x in accepted:
            key = (x.uid, self._round[x.uid])
            self._pending[key] = self._pending.get(key, 0) + x.count
            self._launched[key] = self._launched.get(key, 0) + x.count
            ctx.in_flight[x.uid].extend([x.anchor] * x.count)
            out.append(Issued(x.uid, x.anchor, x.count, round=self._round[x.uid]))
        return out

    # ------------------------------------------------------------------ results
    def metrics(self) -> dict[str, float]:
        led = self.ctx.ledger
        m = {f"plan/{k}": float(v) for k, v in led.summary().items()}
        m["plan/seconds"] = self.plan_seconds
        m["plan/fallback_leaves"] = float(self.fallback_leaves)
        m["plan/unspent_leaves"] = float(led.remaining)
        for reason, n in led.unspent_reasons.items():
            m[f"plan/unspent_{reason}"] = float(n)
        m["plan/roots"] = float(len(self.ctx.trees))
        return m

    def training_batch(self) -> tuple[AnchorBatch, np.ndarray]:
        """(anchor, outcome) rows for the predictor: every anchor on a usable leaf's path, labelled
        with that leaf's success (an anchor's conditional success probability is exactly the
        expected outcome of the leaves sampled below it), with the shared model's row weights
        (``predictor.example_weight``, docs/algorithm.md §3):

        * ``leaf``: 1 per row, so anchors count by how many leaves the allocator put below them;
        * ``anchor``: 1/n for each of an anchor's n rows: every anchor counts once;
        * ``first``: every anchor counts once, from the leaves that were committed before any
          outcome below it was seen (a root's first chains; for a prefix, the leaf that created
          it), so neither which anchors got more leaves nor which outcomes prompted them can tilt
          the labels; the other rows get weight 0 (per-key evidence still counts them).
        """
        ctx = self.ctx
        mode = self.cfg.predictor.example_weight
        trees, anchors, rows, ys, fresh = self._training_rows()
        if not trees:
            return AnchorBatch(keys=[]), np.zeros(0)
        batch = ctx.anchors_of(trees, anchors).select(rows)
        idx = rows
        if mode == "anchor":
            batch.weight = 1.0 / np.bincount(idx)[idx]
        elif mode == "first":
            keep = fresh.astype(np.float64)
            count = np.bincount(idx, weights=keep)[idx]
            batch.weight = np.divide(keep, count, out=np.zeros_like(keep), where=count > 0)
        return batch, ys

    def _usable_leaves(self, tree: RolloutTree, leaf_kind: np.ndarray) -> list[int]:
        """Leaves whose outcome the predictor learns from, in node order."""
        ids = np.flatnonzero(leaf_kind == 1).tolist()  # finished and not failed
        if self.cfg.advantage.truncated == "drop":
            nodes = tree.nodes
            ids = [i for i in ids if nodes[i].status is not LeafStatus.TRUNCATED]
        return ids

    def _training_rows(self) -> tuple[list[RolloutTree], list[list[int]], np.ndarray, np.ndarray, np.ndarray]:
        """The rows of ``training_batch`` for the whole forest in a few array operations rather than
        a Python walk up every leaf's path (~29,000 rows at 512 x 16). Rows come leaf by leaf (trees
        in order, leaves in node order), each leaf's path from its parent up to the root; anchors are
        numbered in order of first appearance. Returns (trees with rows, their anchors' node ids,
        row -> anchor number, row outcome, row committed before any outcome below it was seen)."""
        ctx = self.ctx
        par, off, leaves, anchor, first, root, succ = [], 0, [], [], [], [], []
        with_rows: list[tuple[RolloutTree, int]] = []
        for tree in ctx.trees.values():
            c = tree.columns()
            ids = self._usable_leaves(tree, c["leaf"])
            if ids:
                with_rows.append((tree, off))
                for i in ids:
                    a, f = self._launch_of.get((tree.uid, i), (ROOT, True))
                    leaves.append(off + i)
                    anchor.append(off + a)
                    first.append(f)
                    root.append(off)
                succ.append(c["reward"][ids] >= ctx.threshold)
            par.append(np.where(c["parent"] >= 0, c["parent"] + off, -1))  # node ids of the whole forest
            off += len(c["parent"])
        if not with_rows:
            return [], [], np.zeros(0, np.int64), np.zeros(0), np.zeros(0, bool)
        parent = np.concatenate(par)
        # path[:, k]: the (k+1)-th ancestor of each leaf, -1 past the root
        cols = [parent[np.asarray(leaves, np.int64)]]
        while (cols[-1] >= 0).any():
            up = cols[-1]
            cols.append(np.where(up >= 0, parent[np.maximum(up, 0)], -1))
        path = np.stack(cols[:-1], axis=1)
        valid = path >= 0
        below = np.logical_and.accumulate(path != np.asarray(anchor)[:, None], axis=1)
        fresh = below | (np.asarray(first)[:, None] & (path == np.asarray(root)[:, None]))
        seq = path[valid]  # row-major: leaf by leaf, each path upwards
        y = np.repeat(np.concatenate(succ).astype(np.float64), valid.sum(axis=1))
        nodes, first_row = np.unique(seq, return_index=True)
        order = nodes[np.argsort(first_row)]  # anchors in order of first appearance
        number = np.empty(off, np.int64)
        number[order] = np.arange(len(order))
        starts = np.array([o for _, o in with_rows], np.int64)
        tree_of = np.searchsorted(starts, order, side="right") - 1
        bounds = np.searchsorted(tree_of, np.arange(len(with_rows) + 1))
        anchors = [(order[bounds[t]:bounds[t + 1]] - o).tolist() for t, (_, o) in enumerate(with_rows)]
        return [t for t, _ in with_rows], anchors, number[seq], y, fresh[valid]
