"""One training submission of the TRACE rollout: how its roots are shared among rollout workers,
and how one worker gathers its chunk of prompts into the candidate pool of one planner.

verl's manager hands every worker a chunk of the trainer's prompt batch, and the worker's
``generate_sequences`` starts one ``_run_prompt`` per prompt. The TRACE worker keeps that path
(verl builds the prompt rows and the sampling parameters) and lets each ``_run_prompt`` add its
row to a :class:`Submission`; the prompt that completes the pool runs the submission's planner.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..protocol import ROOTS_KEY
from .runner import TreePrompt

# verl's per-prompt overrides of rollout.n and sampling (REMAX); the tree budget decides instead.
VERL_PROMPT_OVERRIDES = ("__rollout_n__", "__do_sample__")


def split_roots(n_roots: int, chunk_sizes: Sequence[int]) -> list[int]:
    """Each chunk's share of ``n_roots``, proportional to its size (largest remainder first, ties
    to the earlier chunk): the shares add up to ``n_roots`` exactly and none exceeds its chunk."""
    total = sum(chunk_sizes)
    if not 0 <= n_roots <= total:
        raise ValueError(f"{ROOTS_KEY}: {n_roots} roots cannot be chosen from a pool of {total} prompts")
    if total == 0:
        return [0] * len(chunk_sizes)
    parts = [divmod(n_roots * size, total) for size in chunk_sizes]
    shares = [q for q, _ in parts]
    by_remainder = sorted(range(len(parts)), key=lambda i: -parts[i][1])
    for i in by_remainder[: n_roots - sum(shares)]:
        shares[i] += 1
    return shares


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
        """Planner RNG seed: the job's ``trace.seed``, the step and the pool's uids."""
        digest = hashlib.blake2b("|".join(sorted(self.rows)).encode(), digest_size=4).digest()
        return [base, self.global_steps, int.from_bytes(digest, "little")]
