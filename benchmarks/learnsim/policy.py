"""The policy: a softmax over the actions of each turn, linear in the prompt's type, shared by
every prompt (so what it learns on one prompt transfers to prompts of similar type).

``logits[t] = W[t] @ [c; 1]``. The start is a partly informed policy (a warm start, as RL usually
begins from a supervised model): ``W[t] = scale * (rho * U[t] + sqrt(1 - rho^2) * N[t])`` with the
task's own ``U[t]``, so the right action is already more likely than chance on most prompts but
wrong on some.
"""

from __future__ import annotations

import numpy as np
import torch

from .task import Task


class SoftmaxPolicy:
    def __init__(self, task: Task, seed: int, init_scale: float, init_alignment: float):
        rng = np.random.default_rng([seed, 202])
        T, A, D = task.U.shape
        rho = init_alignment
        w = init_scale * (rho * task.U + np.sqrt(max(0.0, 1 - rho * rho)) * rng.normal(0.0, 1.0, (T, A, D)))
        self.W = torch.nn.Parameter(torch.from_numpy(np.concatenate([w, np.zeros((T, A, 1))], axis=2)).float())
        self.task = task
        self._x = torch.from_numpy(np.concatenate([task.types, np.ones((len(task.types), 1))], axis=1)).float()

    def log_probs(self, ids: np.ndarray) -> torch.Tensor:
        """(n, turns, actions) log-probabilities for prompts ``ids`` (differentiable)."""
        logits = torch.einsum("nd,tad->nta", self._x[torch.from_numpy(ids)], self.W)
        return torch.log_softmax(logits, dim=-1)

    def probs(self, ids: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.log_probs(ids).exp().double().numpy()

    def right_probability(self, ids: np.ndarray, probs: np.ndarray | None = None) -> np.ndarray:
        """(n, turns): probability of the right action at each turn."""
        p = self.probs(ids) if probs is None else probs
        return np.take_along_axis(p, self.task.right[ids][:, :, None], axis=2)[:, :, 0]

    def expected_return(self, ids: np.ndarray) -> float:
        """Mean success probability over prompts ``ids`` when sampling from the policy: exact."""
        P = self.task.success_tables(ids, self.right_probability(ids))
        return float(P[:, 0, 0].mean())
