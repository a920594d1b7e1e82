"""The shared, generalizable predictor: one small model for every prompt and prefix.

A deep ensemble of small MLPs over anchor features (prompt, turns so far, turn index, tool-call
facts, policy statistics), trained online with a Bernoulli likelihood on (anchor, terminal
reward) pairs kept in a FIFO replay buffer. Sharing parameters across prompts is what lets it
predict for prompts and prefixes it has never seen (the idea of GPS, arXiv 2602.01970); the
spread of the members (each trained on its own bootstrap weights) is the epistemic uncertainty
the allocator turns into a Beta prior.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch

from .base import AnchorBatch, Prediction, Predictor, check_outcomes
from .calibration import calibration_report


def sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + e^-x) without overflow for large negative logits: e^-|x| never exceeds 1. Bit for bit
    the direct form where x >= 0; for x < 0 the algebraically equal e^x / (1 + e^x)."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


class EnsemblePredictor(Predictor):
    name = "shared"

    def __init__(
        self,
        members: int = 5,
        hidden: int = 32,
        lr: float = 3e-3,
        weight_decay: float = 1e-4,
        steps_per_update: int = 40,
        batch_size: int = 256,
        buffer_size: int = 20_000,
        seed: int = 0,
        replay_discount: float = 1.0,
    ):
        for name, v in [("members", members), ("hidden", hidden), ("batch_size", batch_size), ("buffer_size", buffer_size)]:
            if v < 1:
                raise ValueError(f"predictor.{name} must be >= 1, got {v}")
        if steps_per_update < 0:
            raise ValueError("predictor.steps_per_update must be >= 0")
        if not 0.0 < replay_discount <= 1.0:
            raise ValueError(f"predictor.replay_discount must be in (0, 1], got {replay_discount}")
        # A row from k updates ago weighs replay_discount ** k: the policy moved since (issue 15).
        self.replay_discount = replay_discount
        self.members, self.hidden, self.lr, self.weight_decay = members, hidden, lr, weight_decay
        self.steps_per_update, self.batch_size, self.buffer_size = steps_per_update, batch_size, buffer_size
        self.seed = seed
        self._gen = torch.Generator().manual_seed(seed)
        self.dim: int | None = None
        self.params: dict[str, torch.Tensor] = {}
        self._opt: torch.optim.Optimizer | None = None
        self._bx = np.zeros((0, 0), np.float32)
        self._by = np.zeros(0, np.float32)
        self._bw = np.zeros(0, np.float32)  # row weights (AnchorBatch.weight; 1 when not given)
        self._bt = np.zeros(0, np.int64)  # the update that added each row
        self._mu: np.ndarray | None = None
        self._sd: np.ndarray | None = None
        self.updates = 0
        self._np: dict[str, np.ndarray] | None = None  # numpy copy of params for inference

    # ------------------------------------------------------------------ model
    def _build(self, dim: int) -> None:
        k, h = self.members, self.hidden
        g = self._gen
        self.dim = dim
        self.params = {
            "w1": (torch.randn(k, dim, h, generator=g) / dim**0.5).requires_grad_(),
            "b1": torch.zeros(k, 1, h).requires_grad_(),
            "w2": (torch.randn(k, h, 1, generator=g) / h**0.5).requires_grad_(),
            "b2": torch.zeros(k, 1, 1).requires_grad_(),
        }
        self._opt = torch.optim.Adam(self.params.values(), lr=self.lr, weight_decay=self.weight_decay)
        self._bx = np.zeros((0, dim), np.float32)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """(n, d) -> (members, n) logits; all members in one batched matmul."""
        p = self.params
        xk = x.unsqueeze(0).expand(self.members, -1, -1)
        h = torch.relu(torch.baddbmm(p["b1"], xk, p["w1"]))
        return torch.baddbmm(p["b2"], h, p["w2"]).squeeze(-1)

    def _norm(self, x: np.ndarray) -> torch.Tensor:
        if self._mu is not None:
            x = (x - self._mu) / self._sd
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))

    def _features(self, anchors: AnchorBatch) -> np.ndarray:
        if anchors.features is None:
            raise ValueError("the shared predictor needs anchor features; configure a featurizer")
        if self.dim is not None and anchors.features.shape[1] != self.dim:
            raise ValueError(f"feature dimension changed: model has {self.dim}, got {anchors.features.shape[1]}")
        return anchors.features

    # ------------------------------------------------------------------ API
    def predict(self, anchors: AnchorBatch) -> Prediction:
        x = self._features(anchors)
        if self.dim is None or self.updates == 0:
            n = len(anchors)
            return Prediction(p=np.full(n, 0.5), std=np.full(n, 0.5 / 3**0.5))  # uniform prior
        probs = self._forward_numpy(x)
        mean = probs.mean(0)
        return Prediction(p=mean, std=np.sqrt(np.maximum((probs * probs).mean(0) - mean * mean, 0.0)))

    def _forward_numpy(self, x: np.ndarray) -> np.ndarray:
        """(n, d) -> (members, n) probabilities. Inference runs in numpy on a copy of the weights
        taken after each update: the input normalization folded into the first layer, all members'
        first layers as one (d, members * hidden) GEMM and their second layers as one block-diagonal
        GEMM. The planner predicts a handful of anchors at a time, where torch's per-op dispatch
        costs more than the arithmetic, and the trainer tens of thousands, where one GEMM wins."""
        if self._np is None:
            p = {k: v.detach().numpy() for k, v in self.params.items()}
            k, d, h = p["w1"].shape
            w1 = p["w1"].transpose(1, 0, 2).reshape(d, k * h).astype(np.float64)
            b1 = p["b1"].reshape(k * h).astype(np.float64)
            if self._mu is not None:  # fold the input normalization into the first layer, once
                w1 = w1 / self._sd.astype(np.float64)[:, None]
                b1 = b1 - self._mu.astype(np.float64) @ w1
            # block-diagonal second layer: all members' logits in one GEMM, (k * h, k)
            w2 = np.zeros((k * h, k), np.float32)
            for m in range(k):
                w2[m * h : (m + 1) * h, m] = p["w2"][m, :, 0]
            self._np = {"w1": np.ascontiguousarray(w1, np.float32), "b1": b1.astype(np.float32), "w2": w2,
                        "b2": p["b2"].reshape(k).astype(np.float64)}
        w = self._np
        h = x.astype(np.float32, copy=False) @ w["w1"]
        h += w["b1"]
        np.maximum(h, 0.0, out=h)
        logits = (h @ w["w2"]).T.astype(np.float64) + w["b2"][:, None]
        return sigmoid(logits)

    def update(self, anchors: AnchorBatch, outcomes: np.ndarray, before: Prediction | None = None) -> dict[str, float]:
        """``before``: this model's prediction for ``anchors`` if the caller already made it (the
        hybrid does), so the calibration report does not run the forward pass twice."""
        y = check_outcomes(anchors, outcomes)
        if not len(anchors):
            return {}
        x = self._features(anchors)
        metrics = calibration_report((self.predict(anchors) if before is None else before).p, y, prefix="predictor/shared_")
        if self.dim is None:
            self._build(x.shape[1])
        w = np.ones(len(y)) if anchors.weight is None else anchors.weight
        keep = w > 0  # zero-weight rows teach the model nothing: keep them out of the buffer
        self._bx = np.concatenate([self._bx, x[keep].astype(np.float32)])[-self.buffer_size :]
        self._by = np.concatenate([self._by, y[keep].astype(np.float32)])[-self.buffer_size :]
        self._bw = np.concatenate([self._bw, w[keep].astype(np.float32)])[-self.buffer_size :]
        self._bt = np.concatenate([self._bt, np.full(int(keep.sum()), self.updates)])[-self.buffer_size :]
        if not len(self._by):  # nothing to learn from yet
            return metrics
        self._mu = self._bx.mean(0)
        self._sd = self._bx.std(0) + 1e-3
        bw = self._bw
        if self.replay_discount < 1.0:
            bw = bw * self.replay_discount ** (self.updates - self._bt).astype(np.float32)
        bx, by, bw = self._norm(self._bx), torch.from_numpy(self._by), torch.from_numpy(np.asarray(bw, np.float32))
        n = by.shape[0]
        loss_val = float("nan")
        for _ in range(self.steps_per_update):
            idx = torch.randint(0, n, (min(self.batch_size, n),), generator=self._gen)
            logits = self._logits(bx[idx])
            # Bootstrap: each member weighs the minibatch with its own Poisson(1) draws, times the
            # rows' own weights.
            w = torch.poisson(torch.ones(self.members, idx.numel()), generator=self._gen) * bw[idx]
            target = by[idx].unsqueeze(0).expand_as(logits)
            loss = (torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none") * w).sum() / w.sum().clamp_min(1e-6)
            self._opt.zero_grad()
            loss.backward()
            self._opt.step()
            loss_val = float(loss.detach())
        self.updates += 1
        self._np = None
        metrics["predictor/shared_loss"] = loss_val
        metrics["predictor/shared_buffer"] = float(n)
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {
            "config": {
                "members": self.members, "hidden": self.hidden, "lr": self.lr, "weight_decay": self.weight_decay,
                "steps_per_update": self.steps_per_update, "batch_size": self.batch_size,
                "buffer_size": self.buffer_size, "seed": self.seed,
            },
            "dim": self.dim,
            "updates": self.updates,
            "params": {k: v.detach().clone() for k, v in self.params.items()},
            # Deep copies: torch's optimizer state_dict returns live tensors, and a checkpoint (or a
            # second predictor loaded from it) must not alias this one's moments.
            "optimizer": None if self._opt is None else copy.deepcopy(self._opt.state_dict()),
            "buffer_x": self._bx.copy(),
            "buffer_y": self._by.copy(),
            "buffer_w": self._bw.copy(),
            "buffer_t": self._bt.copy(),
            "mu": None if self._mu is None else self._mu.copy(),
            "sd": None if self._sd is None else self._sd.copy(),
            "rng": self._gen.get_state().clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        cfg = state["config"]
        if (cfg["members"], cfg["hidden"]) != (self.members, self.hidden):
            raise ValueError(
                f"checkpoint predictor has members={cfg['members']} hidden={cfg['hidden']}, "
                f"config has members={self.members} hidden={self.hidden}"
            )
        self.updates = int(state["updates"])
        if state["dim"] is not None:
            self._build(int(state["dim"]))
            with torch.no_grad():
                for k, v in state["params"].items():
                    self.params[k].copy_(torch.as_tensor(v))
            if state["optimizer"] is not None:
                self._opt.load_state_dict(copy.deepcopy(state["optimizer"]))
        self._bx = np.asarray(state["buffer_x"], np.float32)
        self._by = np.asarray(state["buffer_y"], np.float32)
        self._bw = np.asarray(state.get("buffer_w", np.ones(len(self._by))), np.float32)
        self._bt = np.asarray(state.get("buffer_t", np.full(len(self._by), self.updates)), np.int64)
        self._mu = None if state["mu"] is None else np.asarray(state["mu"], np.float32)
        self._sd = None if state["sd"] is None else np.asarray(state["sd"], np.float32)
        self._gen.set_state(state["rng"])
        self._np = None
