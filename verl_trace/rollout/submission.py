"""One training submission of the TRACE rollout: how its roots are chosen from the whole
candidate pool, and how one worker gathers its chunk of prompts into one planner's pool.

The trainer submits a candidate pool (``trace.allocation.pool_factor`` times the batch) and asks
for ``protocol.ROOTS_KEY`` roots. The manager chooses them once, over the whole pool
(``choose_roots``: the allocator's own ``select_roots``, as a single planner would), deletes the
rest and hands each worker a chunk of roots only. verl's manager hands every worker a chunk of
the trainer's prompt batch, and the worker's ``generate_sequences`` starts one ``_run_prompt``
per prompt. The TRACE worker keeps that path (verl builds the prompt rows and the sampling
parameters) and lets each ``_run_prompt`` add its row to a :class:`Submission`; the prompt that
completes the chunk runs the submission's planner.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..allocation import Budget
from ..config import TraceConfig
from ..predictor import AnchorFeaturizer, Predictor
from ..tree import RolloutTree
from .runner import TreePrompt, build_planner

# verl's per-prompt overrides of rollout.n and sampling (REMAX); the tree budget decides instead.
VERL_PROMPT_OVERRIDES = ("__rollout_n__", "__do_sample__")


@dataclass
class RootChoice:
    """The roots chosen from a candidate pool, in pool order, and what the choice saw."""

    roots: list[str]
    metrics: dict[str, float]


def choose_roots(
    cfg: TraceConfig, pool: Sequence[RolloutTree], *, n_roots: int, budget: Budget,
    predictor: Predictor | None = None, featurizer: AnchorFeaturizer | None = None,
    rng: np.random.Generator | None = None,
) -> RootChoice:  # fmt: skip
    """``n_roots`` of the root-only trees ``pool`` chosen by ``cfg.allocator``'s global root
    allocation over the whole pool: exactly what one planner of the step would choose
    (``TreePlanner.choose_roots`` on a planner built like a worker's, with the step's budget).
    Metrics ``trace/pool/*``: the pool, and the predictor's success estimates for it and for the
    chosen roots when it made any."""
    planner = build_planner(
        cfg, n_roots=n_roots, budget=budget, max_turns=cfg.max_turns, predictor=predictor, featurizer=featurizer,
        rng=rng,
    )  # fmt: skip
    chosen = planner.choose_roots(pool)
    roots = [t.uid for t in pool if t.uid in chosen]
    metrics = {"trace/pool/prompts": float(len(pool)), "trace/pool/roots": float(len(roots)),
               "trace/pool/select_seconds": planner.plan_seconds}
    p_hat = {t.uid: t.root.meta["p_hat"] for t in pool if "p_hat" in t.root.meta}
    if p_hat:
        values = np.array(list(p_hat.values()))
        picked = np.array([p_hat[u] for u in roots if u in p_hat])
        metrics.update({"trace/pool/p_hat/mean": float(values.mean()), "trace/pool/p_hat/min": float(values.min()),
                        "trace/pool/p_hat/max": float(values.max())})
        if picked.size:
            metrics["trace/pool/root_p_hat/mean"] = float(picked.mean())
    return RootChoice(roots, metrics)


def pool_seed(base: int, global_steps: int, uids: Iterable[str]) -> list[int]:
    """A planner's RNG seed: the job's ``trace.seed``, the step and the pool's uids."""
    digest = hashlib.blake2b("|".join(sorted(uids)).encode(), digest_size=4).digest()
    return [base, global_steps, int.from_bytes(digest, "little")]


def prompt_key(row: dict[str, Any]) -> str:
    """The identity of a prompt across steps, for the predictor's per-prompt statistics: a digest
    of its chat messages (verl's ``uid`` is new every step, and ``index`` defaults to 0)."""
    text = json.dumps(row["raw_prompt"], sort_keys=True, default=str)
    return "prompt-" + hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


@dataclass
class Submission:
    """The prompts of one training ``generate_sequences`` call on one worker."""

    id: str
    size: int  # prompts in the chunk
    n_roots: int  # this worker's share of the step's roots
    step_roots: int  # roots of the whole submission (all workers)
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)  # uid -> agent-loop kwargs, arrival order
    agent_names: set[str] = field(default_factory=set)
    sampling_params: dict[str, Any] | None = None

    def add(self, prompt: dict[str, Any], sampling_params: dict[str, Any]) -> bool:
        """Take one prompt as verl's ``_run_prompt`` gets it; True once the pool is complete. The
        stored row is what verl's ``_run_agent_loop`` passes on as ``**kwargs`` (no ``agent_name``)."""
        row = dict(prompt)
        self.agent_names.add(row.pop("agent_name"))
        for key in VERL_PROMPT_OVERRIDES:
            row.pop(key, None)
        if row["uid"] in self.rows:
            raise ValueError(f"submission {self.id}: prompt uid {row['uid']} submitted twice")
        self.rows[row["uid"]] = row
        self.sampling_params = sampling_params
        return len(self.rows) == self.size

    @property
    def global_steps(self) -> int:
        return int(next(iter(self.rows.values()))["global_steps"])

    def tree_prompts(self) -> list[TreePrompt]:
        return [TreePrompt(uid, row, key=prompt_key(row)) for uid, row in self.rows.items()]

    def settle(self, trees: Collection[str]) -> tuple[list[str], list[str]]:
        """Once the worker's trees are known: (pool prompts to tag ``failure``, pool prompts to
        delete). A prompt with a tree is finished by whoever writes its leaves. The trainer waits
        for exactly ``n_roots`` terminal prompts from this worker, so when there are fewer trees (the
        rollout failed, or the planner chose fewer roots) the shortfall fails instead of vanishing."""
        unused = [uid for uid in self.rows if uid not in trees]
        short = max(0, self.n_roots - len(trees))
        return unused[:short], unused[short:]

    def seed(self, base: int) -> list[int]:
        """Planner RNG seed: the job's ``trace.seed``, the step and the chunk's uids."""
        return pool_seed(base, self.global_steps, self.rows)
