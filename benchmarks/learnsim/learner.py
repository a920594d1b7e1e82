"""One policy-gradient update per step, through verl: the advantage estimator from verl's
registry (``core_algos.get_adv_estimator_fn``: our ``trace`` / ``tree_grpo``, verl's own ``grpo``)
and verl's PPO policy loss (``core_algos.get_policy_loss_fn('vanilla')``) with a real
``ActorConfig``, token-mean aggregation, then Adam.

A row is a leaf and a "token" is a turn's action (one log-probability per turn), so a shared prefix
appears in every leaf below it, as it does in verl's batch. Updates are on-policy (one epoch, one
mini-batch), so the PPO ratio is 1 and the clip is inactive: the loss is the policy gradient with
the estimator's advantages.
"""

from __future__ import annotations

import numpy as np
import torch
from verl.trainer.ppo import core_algos
from verl.workers.config.actor import ActorConfig

from verl_trace.advantage import register
from verl_trace.config import AdvantageConfig
from verl_trace.tree import RolloutTree

from .policy import SoftmaxPolicy
from .rollout import leaf_rows

register()


class Learner:
    def __init__(self, policy: SoftmaxPolicy, estimator: str, lr: float, advantage: AdvantageConfig):
        self.policy, self.estimator, self.advantage = policy, estimator, advantage
        self.adv_fn = core_algos.get_adv_estimator_fn(estimator)
        self.actor = ActorConfig(strategy="fsdp", rollout_n=1, ppo_mini_batch_size=1, use_dynamic_bsz=False,
                                 ppo_micro_batch_size_per_gpu=1, clip_ratio=0.2, loss_agg_mode="token-mean")
        self.loss_fn = core_algos.get_policy_loss_fn(self.actor.policy_loss.loss_mode)
        self.opt = torch.optim.Adam([policy.W], lr=lr)

    def advantages(self, trees: list[RolloutTree]) -> tuple[torch.Tensor, torch.Tensor, list]:
        uids, prompts, paths, actions, rewards = leaf_rows(trees)
        T = self.policy.task.turns
        n = len(uids)
        lengths = np.array([len(p) - 1 for p in paths])
        mask_np = (np.arange(T)[None, :] < lengths[:, None]).astype(np.float32)
        scores_np = np.zeros((n, T), np.float32)
        scores_np[np.arange(n), lengths - 1] = rewards
        mask, scores = torch.from_numpy(mask_np), torch.from_numpy(scores_np)
        index = np.array(uids, dtype=object)
        if self.estimator == "grpo":
            adv, _ = self.adv_fn(token_level_rewards=scores, response_mask=mask, index=index, norm_adv_by_std_in_grpo=True)
        else:
            spans = [[(t, t + 1) for t in range(len(p) - 1)] for p in paths]
            adv, _ = self.adv_fn(token_level_rewards=scores, response_mask=mask, index=index, tree_paths=paths,
                                 turn_spans=spans, trace_config=self.advantage)
        return adv, mask, [prompts, actions]

    def update(self, trees: list[RolloutTree]) -> dict[str, float]:
        adv, mask, (prompts, actions) = self.advantages(trees)
        nonzero = bool((adv != 0).any())
        out = {"effective_leaves": float(((adv != 0) & (mask > 0)).any(1).sum()), "leaves": float(len(prompts))}
        if not nonzero:  # nothing to learn from: no optimizer step (Adam's momentum would still move W)
            out["skipped"] = 1.0
            return out
        T = mask.shape[1]
        act = np.zeros((len(actions), T), np.int64)
        for i, a in enumerate(actions):
            act[i, : len(a)] = a
        act = torch.from_numpy(act)
        logp = self.policy.log_probs(np.asarray(prompts))  # (n, T, A)
        log_prob = logp.gather(2, act.unsqueeze(-1)).squeeze(-1)
        self.actor.global_batch_info.update(dp_size=1, batch_num_tokens=float(mask.sum()), global_batch_size=len(prompts),
                                            loss_scale_factor=None)
        loss, _ = self.loss_fn(old_log_prob=log_prob.detach(), log_prob=log_prob, advantages=adv, response_mask=mask.bool(),
                               loss_agg_mode=self.actor.loss_agg_mode, config=self.actor)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        out["skipped"] = 0.0
        out["abs_advantage"] = float(adv[mask > 0].abs().mean())
        return out
