"""Rollouts of the synthetic task as real :class:`~verl_trace.tree.RolloutTree` objects, grown by
the product's planner (``verl_trace.allocation.drive``).

Each node records the action it took (``meta['action']``), the true conditional success probability
under the policy that sampled it (``meta['true_p']``: read only by the oracle and by calibration
metrics), the policy's log-probability and entropy at that turn (``stats``: what ARPO's entropy rule
and the predictor see) and the features the shared predictor sees: the prompt block (difficulty
cue, hops, type), then depth, progress flags so far, the last flag, mean and last log-probability,
the last turn's entropy, is-root (built on demand by ``Sampler.featurize``, the planner's featurizer
hook). Never the difficulty or the right actions themselves.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from verl_trace.allocation import Issued
from verl_trace.tree import LeafStatus, RolloutTree

from .task import Task

N_TURN_FEATURES = 7


@dataclass(slots=True)
class _State:
    depth: int
    right: int  # right actions so far
    flags: int
    last_flag: float
    logprob_sum: float
    last_logprob: float
    entropy: float


@dataclass
class _TreeData:
    """One tree's prompt and policy, as Python lists and floats: the per-turn sampling loop reads
    them hundreds of thousands of times per run, and a list read is several times cheaper than a
    numpy scalar read (the values are the same float64 numbers)."""

    prompt: int
    probs: list[list[float]]  # (turns, actions) policy at sampling time
    entropy: list[float]  # (turns,)
    table: list[list[float]]  # (turns + 1, turns + 1) conditional success probability P[d][k]
    block: np.ndarray  # prompt feature block
    states: list[_State]
    right: list[int]  # (turns,) the right action of each turn
    hops: int
    verbosity: float


class Sampler:
    """Samples continuations for the planner and keeps what training needs."""

    def __init__(self, task: Task, seed: int):
        self.task = task
        self.rng = random.Random(seed)
        self.data: dict[str, _TreeData] = {}

    def pool(self, ids: np.ndarray, probs: np.ndarray, step: int) -> list[RolloutTree]:
        """Root-only trees for the candidate pool, under the policy ``probs`` (n, turns, actions)."""
        task = self.task
        right_p = np.take_along_axis(probs, task.right[ids][:, :, None], axis=2)[:, :, 0]
        tables = task.success_tables(ids, right_p)
        ent = -(probs * np.log(np.maximum(probs, 1e-300))).sum(-1)
        blocks = task.features(ids)
        self.data = {}
        out = []
        probs_l, ent_l, tables_l = probs.tolist(), ent.tolist(), tables.tolist()
        right_l, hops_l, verb_l = task.right[ids].tolist(), task.hops[ids].tolist(), task.verbosity[ids].tolist()
        for j, i in enumerate(ids.tolist()):
            uid = f"s{step}/p{i}"
            tree = RolloutTree(uid, key=f"p{i}")
            st = _State(0, 0, 0, 0.0, 0.0, 0.0, 0.0)
            self.data[uid] = _TreeData(i, probs_l[j], ent_l[j], tables_l[j], blocks[j], [st], right_l[j], hops_l[j], verb_l[j])
            tree.root.meta["true_p"] = tables_l[j][0][0]
            out.append(tree)
        return out

    def featurize(self, tree: RolloutTree, node_ids: Sequence[int]) -> np.ndarray:
        """Feature rows of nodes (the planner's ``featurize`` hook: built only for the anchors a
        predictor looks at, in one array)."""
        d = self.data[tree.uid]
        T = self.task.turns
        rows = []
        for i in node_ids:
            s = d.states[i]
            rows.append((s.depth / T, s.flags / T, s.last_flag, s.logprob_sum / max(1, s.depth), s.last_logprob,
                         s.entropy, 1.0 if s.depth == 0 else 0.0))
        turn = np.array(rows, np.float32).reshape(len(rows), N_TURN_FEATURES)
        return np.concatenate([np.broadcast_to(d.block, (len(rows), len(d.block))), turn], axis=1)

    def rollout(self, tree: RolloutTree, launch: Issued) -> list[int]:
        """``launch.count`` continuations of ``tree`` from ``launch.anchor`` (drive's callback)."""
        return [self._continue(tree, launch.anchor) for _ in range(launch.count)]

    def _continue(self, tree: RolloutTree, anchor: int) -> int:
        rng = self.rng
        s_task = self.task.s
        d = self.data[tree.uid]
        hops, right, verb = d.hops, d.right, d.verbosity
        s = d.states[anchor]
        node = anchor
        while True:
            t = s.depth
            pr = d.probs[t]
            a = _sample(pr, rng.random())
            ok = int(a == right[t])
            lp = math.log(max(pr[a], 1e-300))
            flag = rng.random() < (s_task.flag_hit if ok else s_task.flag_false)
            ent = d.entropy[t]
            ns = _State(t + 1, s.right + ok, s.flags + flag, float(flag), s.logprob_sum + lp, lp, ent)
            n_tok = max(1, round(verb * s_task.turn_tokens * math.exp(rng.gauss(0.0, s_task.turn_tokens_sigma))))
            p_true = d.table[ns.depth][ns.right]
            node = tree.add_turn(
                node,
                (0,) * n_tok,
                tool_calls=0 if ns.depth == hops else 1,
                meta={"action": a, "true_p": p_true, "key": f"{tree.uid}/{len(tree)}"},
            )
            # no per-token logprobs here: the turn's mean (the sampled action's) is set directly
            tree.nodes[node].mean_logprob, tree.nodes[node].entropy = lp, ent
            d.states.append(ns)
            if ns.depth == hops:
                reward = 1.0 if rng.random() < p_true else 0.0
                tree.finish(node, reward, LeafStatus.OK)
                return node
            s = ns


def _sample(p: list[float], u: float) -> int:
    acc = 0.0
    for a, pa in enumerate(p):
        acc += pa
        if u < acc:
            return a
    return len(p) - 1


def leaf_rows(trees: list[RolloutTree]) -> tuple[list[str], list[int], list[tuple[int, ...]], list[list[int]], list[float]]:
    """Per usable leaf: tree uid, prompt index, node path (root first), actions along it, reward."""
    uids, prompts, paths, actions, rewards = [], [], [], [], []
    for tree in trees:
        prompt = int(tree.key[1:])
        for leaf in tree.leaves():
            path = tuple(tree.path(leaf.node_id))
            uids.append(tree.uid)
            prompts.append(prompt)
            paths.append(path)
            actions.append([tree[i].meta["action"] for i in path[1:]])
            rewards.append(float(leaf.reward))
    return uids, prompts, paths, actions, rewards


