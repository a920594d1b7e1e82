"""The policy update: verl's advantage estimator and policy loss on a step's leaves, and AdamW.

This is the small trainer the CPU demo and benchmark need, not a replacement for verl's: the
advantage comes from verl's registry (``trace`` / ``tree_grpo``, registered by this package) fed
with the leaves' ``extra_fields["trace"]`` exactly as the trainer-side hook feeds it, and the loss
is ``core_algos.get_policy_loss_fn(actor.policy_loss.loss_mode)`` (PPO clip, ``vanilla``) with a
real verl ``ActorConfig``. Old log-probs are the rollout log-probs (the engine's, at the sampling
temperature): no separate recomputation pass, as with verl's ``bypass`` rollout correction mode.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from verl.trainer.ppo import core_algos
from verl.workers.config.actor import ActorConfig

from ..advantage import register
from ..config import AdvantageConfig
from ..protocol import parse_tree_meta
from ..rollout import LeafOutput
from .sequences import collate, pad_response, response_logprobs
from .settings import RLSettings


@dataclass
class LeafBatch:
    """A step's leaves as padded tensors (one row per leaf) plus their tree metadata."""

    prompts: list[list[int]]
    responses: list[list[int]]
    response_mask: torch.Tensor  # (B, R)
    old_log_probs: torch.Tensor  # (B, R)
    token_level_rewards: torch.Tensor  # (B, R): the score on the last response token
    index: np.ndarray  # tree uid per row
    tree_paths: list[list[int]]
    turn_spans: list[list[list[int]]]
    leaf_status: list[str]

    @classmethod
    def from_leaves(cls, leaves: Sequence[LeafOutput]) -> LeafBatch:
        outs = [leaf.output for leaf in leaves]
        width = max(len(o.response_ids) for o in outs)
        rewards = torch.zeros(len(outs), width)
        for i, o in enumerate(outs):
            rewards[i, len(o.response_ids) - 1] = float(o.reward_score)
        meta = [parse_tree_meta(o.extra_fields, where=f"leaf {leaf.uid}/{leaf.leaf_id}") for leaf, o in zip(leaves, outs)]
        return cls(
            prompts=[list(o.prompt_ids) for o in outs],
            responses=[list(o.response_ids) for o in outs],
            response_mask=pad_response([o.response_mask for o in outs], width),
            old_log_probs=pad_response([o.response_logprobs or [0.0] * len(o.response_ids) for o in outs], width),
            token_level_rewards=rewards,
            index=np.array([m.tree_uid for m in meta], dtype=object),
            tree_paths=[list(m.path) for m in meta],
            turn_spans=[[list(s) for s in m.spans] for m in meta],
            leaf_status=[m.status.value for m in meta],
        )

    def __len__(self) -> int:
        return len(self.prompts)


def compute_advantages(batch: LeafBatch, estimator: str, adv_cfg: AdvantageConfig) -> torch.Tensor:
    """(B, R) advantages from verl's registered estimator ``estimator`` (``trace`` or ``tree_grpo``),
    or ``grpo``: GRPO over all leaves of a tree as one flat group (ARPO's), which is the ``trace``
    estimator without the tree metadata (docs/algorithm.md §5), failed leaves still left out."""
    register()
    tree = estimator != "grpo"
    fn = core_algos.get_adv_estimator_fn(estimator if tree else "trace")
    adv, _ = fn(token_level_rewards=batch.token_level_rewards, response_mask=batch.response_mask, index=batch.index,
                config=None, tree_paths=batch.tree_paths if tree else None,
                turn_spans=batch.turn_spans if tree else None, leaf_status=batch.leaf_status, trace_config=adv_cfg)
    return adv


class Learner:
    """PPO-clip updates of ``model`` in place; one epoch over the step's leaves in ``mini_batches``
    optimizer steps, each accumulated over micro-batches of ``micro_batch_size`` rows."""

    def __init__(self, model: torch.nn.Module, settings: RLSettings, pad_id: int, seed: int = 0):
        self.model, self.settings, self.pad_id = model, settings, pad_id
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay,
                                           betas=(0.9, 0.999))
        # Linear warm-up: Adam's first steps move every weight by about lr whatever its gradient.
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda k: min(1.0, (k + 1) / max(1, settings.lr_warmup)))
        self.actor_config = ActorConfig(strategy="fsdp", rollout_n=1, ppo_mini_batch_size=1, use_dynamic_bsz=False,
                                        ppo_micro_batch_size_per_gpu=settings.micro_batch_size,
                                        clip_ratio=settings.clip_ratio, loss_agg_mode="token-mean")
        self.policy_loss = core_algos.get_policy_loss_fn(self.actor_config.policy_loss.loss_mode)
        self.rng = random.Random(seed)

    def update(self, batch: LeafBatch, advantages: torch.Tensor,
               after_step: Callable[[], None] | None = None) -> dict[str, float]:
        """One PPO epoch over the leaves; ``after_step()`` runs after every optimizer step (the
        engine's ``update_weights``). A step whose advantages are all zero (no group with mixed
        outcomes) has nothing to learn from and makes no optimizer step: Adam's momentum would
        otherwise keep moving the weights on stale gradients."""
        s = self.settings
        if not bool((advantages != 0).any()):
            return {"actor/skipped": 1.0}
        rows = [i for i in range(len(batch)) if float(batch.response_mask[i].sum()) > 0]
        self.rng.shuffle(rows)
        n_mb = max(1, min(s.mini_batches, len(rows)))
        metrics: dict[str, list[float]] = {}
        self.model.train()
        for mb in np.array_split(np.array(rows, dtype=np.int64), n_mb):
            mb = mb.tolist()
            tokens = float(batch.response_mask[mb].sum())
            # verl's loss aggregation over a mini-batch split into micro-batches (workers/utils/losses.py)
            self.actor_config.global_batch_info.update(dp_size=1, batch_num_tokens=tokens, global_batch_size=len(mb),
                                                       loss_scale_factor=None)
            self.optimizer.zero_grad(set_to_none=True)
            for start in range(0, len(mb), s.micro_batch_size):
                micro = mb[start : start + s.micro_batch_size]
                for key, value in self._micro_step(batch, advantages, micro).items():
                    metrics.setdefault(key, []).append(value)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), s.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            if after_step is not None:
                after_step()
            metrics.setdefault("actor/grad_norm", []).append(float(grad_norm))
        self.model.eval()
        out = {k: float(np.sum(v) if k == "actor/pg_loss" else np.mean(v)) for k, v in metrics.items()}
        out["actor/pg_loss"] /= n_mb
        out["actor/skipped"] = 0.0
        out["actor/lr"] = float(self.scheduler.get_last_lr()[0])
        return out

    def _micro_step(self, batch: LeafBatch, advantages: torch.Tensor, rows: list[int]) -> dict[str, float]:
        seq = collate([batch.prompts[i] for i in rows], [batch.responses[i] for i in rows], self.pad_id)
        width = seq.response_len
        mask = batch.response_mask[rows, :width]
        log_prob = response_logprobs(self.model, seq, self.settings.temperature)
        loss, pg_metrics = self.policy_loss(old_log_prob=batch.old_log_probs[rows, :width], log_prob=log_prob,
                                            advantages=advantages[rows, :width], response_mask=mask.bool(),
                                            loss_agg_mode=self.actor_config.loss_agg_mode, config=self.actor_config)
        loss.backward()
        out = {k: float(v) for k, v in pg_metrics.items()}
        out["actor/pg_loss"] = float(loss.detach())
        return out

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "rng": self.rng.getstate()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.rng.setstate(state["rng"])
