"""The synthetic multi-turn task of the learning simulator, and its exact success probabilities.

A prompt ``i`` has a *type* ``c_i`` (what the question is about: visible to the policy and the
predictor), a hidden *difficulty* ``h_i`` (a success logit), a number of *hops* ``H_i`` (turns
before the episode ends) and a verbosity (token cost). At each turn ``t < H_i`` the agent picks one
of ``actions`` actions; exactly one is right, ``a*_{i,t} = argmax_a (U_t c_i)_a`` for a fixed random
matrix ``U_t`` per turn position, so the right action is a smooth function of the type that one
shared policy can learn and transfer across prompts. The episode's reward is
``Bernoulli(sigmoid(h_i + gain * right - loss * wrong))``. After each turn an observation flags
progress (a noisy copy of "that action was right").

Because the policy at a turn depends only on the prompt and the turn index, the conditional
success probability of any prefix (``k`` right actions among the first ``d``) under the current
policy is an exact backward recursion, ``P[d][k] = q_d P[d+1][k+1] + (1 - q_d) P[d+1][k]`` with
``q_d`` the policy's probability of the right action: held-out return is computed exactly (no
evaluation noise) and the oracle allocator gets the true probability of every anchor.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from benchmarks.sim.regime import Component, StrictModel


class TaskSettings(StrictModel):
    """Everything that defines the task (docs/benchmarks.md, "Learning simulator", explains each)."""

    type_dims: int = Field(default=6, ge=1)
    actions: int = Field(default=4, ge=2)
    hops_min: int = Field(default=2, ge=1)
    hops_max: int = Field(default=4, ge=1)
    gain: float = Field(default=1.0, ge=0.0)  # success-logit change of a right action
    loss: float = Field(default=1.0, ge=0.0)  # ... of a wrong one (subtracted)
    difficulty: list[Component] = Field(
        default_factory=lambda: [Component(weight=0.35, mean=-4.0, std=1.5), Component(weight=0.40, mean=0.0, std=1.5),
                                 Component(weight=0.25, mean=3.5, std=1.5)],
        min_length=1,
    )
    # Difficulty partly follows the type: h += type_difficulty * (v . c) / |v| for a fixed random v,
    # so some kinds of question are harder than others (0: difficulty independent of the type).
    type_difficulty: float = 0.0
    cue_noise: float = Field(default=2.0, ge=0.0)  # the prompt's difficulty cue is h + N(0, cue_noise^2)
    flag_hit: float = Field(default=0.8, ge=0.0, le=1.0)  # P(progress flag | right action)
    flag_false: float = Field(default=0.2, ge=0.0, le=1.0)  # P(progress flag | wrong action)
    turn_tokens: float = Field(default=100.0, gt=0.0)  # median generated tokens of a turn
    turn_tokens_sigma: float = Field(default=0.5, ge=0.0)
    verbosity_sigma: float = Field(default=0.3, ge=0.0)  # per-prompt token scale, lognormal
    train_prompts: int = Field(default=256, ge=2)
    eval_prompts: int = Field(default=1024, ge=1)


class Task:
    """One task instance (one seed): prompts, right actions, difficulty and its cue."""

    def __init__(self, s: TaskSettings, seed: int):
        if s.hops_max < s.hops_min:
            raise ValueError(f"task.hops_max ({s.hops_max}) < task.hops_min ({s.hops_min})")
        self.s = s
        rng = np.random.default_rng([seed, 101])
        n = s.train_prompts + s.eval_prompts
        self.turns = s.hops_max
        self.types = rng.normal(0.0, 1.0, (n, s.type_dims))
        self.U = rng.normal(0.0, 1.0, (self.turns, s.actions, s.type_dims))
        self.right = np.einsum("tad,nd->nta", self.U, self.types).argmax(-1)  # (n, turns)
        w = np.array([c.weight for c in s.difficulty])
        comp = rng.choice(len(w), size=n, p=w / w.sum())
        h = np.array([rng.normal(s.difficulty[k].mean, s.difficulty[k].std) for k in comp])
        v = rng.normal(0.0, 1.0, s.type_dims)
        self.difficulty = h + s.type_difficulty * (self.types @ v) / np.linalg.norm(v)
        self.hops = rng.integers(s.hops_min, s.hops_max + 1, n)
        self.verbosity = np.exp(rng.normal(0.0, s.verbosity_sigma, n))
        self.cue = self.difficulty + rng.normal(0.0, s.cue_noise, n)
        self.train = np.arange(s.train_prompts)
        self.held_out = np.arange(s.train_prompts, n)

    def success_tables(self, ids: np.ndarray, q: np.ndarray) -> np.ndarray:
        """``P[i, d, k]``: success probability of prompt ``ids[i]`` after ``d`` turns with ``k``
        right, under a policy whose probability of the right action at turn ``t`` is ``q[i, t]``.
        Entries with ``d > hops`` are unused."""
        s = self.s
        n, T = len(ids), self.turns
        h, hops = self.difficulty[ids], self.hops[ids]
        k = np.arange(T + 1)
        P = np.zeros((n, T + 1, T + 1))
        final = 1.0 / (1.0 + np.exp(-(h[:, None] + s.gain * k[None, :] - s.loss * (hops[:, None] - k[None, :]))))
        for d in range(T, -1, -1):
            if d == T:
                P[:, d] = final
                continue
            qd = q[:, d][:, None]
            cont = qd * P[:, d + 1, 1:] + (1 - qd) * P[:, d + 1, :-1]  # (n, T): k = 0 .. T-1
            cont = np.concatenate([cont, np.zeros((n, 1))], axis=1)
            P[:, d] = np.where((d == hops)[:, None], final, cont)
        return P

    def features(self, ids: np.ndarray) -> np.ndarray:
        """The prompt block of every anchor's features: difficulty cue, hops, type."""
        return np.concatenate(
            [(self.cue[ids] / 4.0)[:, None], (self.hops[ids] / self.turns)[:, None], self.types[ids]], axis=1
        ).astype(np.float32)
