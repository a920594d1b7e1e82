"""Manual check of verl-0.9.1-adv-extra-fields.patch (not a test: it needs a patched copy of verl).

Plain verl ``PPOTrainerSync`` with ``algorithm.adv_extra_fields=[extra_fields]`` and a small
adapter estimator must give exactly the advantages of verl-trace's trainer hook, on the trees, Ray
and TransferQueue set-up of tests/trainer/test_advantage_stage.py:

    mkdir -p /tmp/verlpatched && cp -r "$(python -c 'import verl, os; print(os.path.dirname(verl.__file__))')" /tmp/verlpatched/
    (cd /tmp/verlpatched && patch -p1 < "$REPO/patches/verl-0.9.1-adv-extra-fields.patch")
    python -c 'from verl_trace.testing.tiny import build_tiny_model as b; b("/tmp/tiny", ["a b c"] * 50, vocab_size=400)'
    TINY=/tmp/tiny PYTHONPATH=/tmp/verlpatched:$REPO python tests/trainer/verify_adv_extra_fields.py
"""

from __future__ import annotations

import importlib.util
import os
import sys
import uuid
from pathlib import Path

import ray
import torch
import transfer_queue as tq
import verl
from omegaconf import OmegaConf, open_dict
from verl.trainer.ppo import core_algos
from verl.trainer.ppo.padding_utils import upsample_batch_to_divisible_size
from verl.trainer.ppo.v1 import AgentLoopWorkerTQ, get_trainer_cls

from verl_trace.advantage import compute_trace_advantage
from verl_trace.protocol import parse_tree_meta
from verl_trace.trainer.config_check import prepare_trace_config
from verl_trace.trainer.hydra_config import compose_config
from verl_trace.trainer.trainer import trace_trainer_class

ROOT = Path(__file__).resolve().parents[1]


@core_algos.register_adv_est("trace_nt")
def trace_from_non_tensor(token_level_rewards, response_mask, index=None, config=None, non_tensor_batch=None, **_):
    """What verl-trace would register with the patch: the tree metadata comes in non_tensor_batch."""
    metas = [
        parse_tree_meta(extra, f"row {i}") if mask.any() else None
        for i, (extra, mask) in enumerate(zip(non_tensor_batch["extra_fields"], response_mask))
    ]
    return compute_trace_advantage(
        token_level_rewards, response_mask, index, config,
        tree_paths=[None if m is None else m.path for m in metas],
        turn_spans=[None if m is None else m.spans for m in metas],
        leaf_status=[None if m is None else m.status.value for m in metas],
    )


def main() -> None:
    if "verlpatched" not in verl.__file__:
        sys.exit(f"verl is imported from {verl.__file__}; put the patched copy first on PYTHONPATH")
    spec = importlib.util.spec_from_file_location("stage", ROOT / "tests" / "trainer" / "test_advantage_stage.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)

    cfg = compose_config(overrides=[
        f"actor_rollout_ref.model.path={os.environ['TINY']}", "actor_rollout_ref.rollout.name=vllm",
        "actor_rollout_ref.rollout.n=4", "actor_rollout_ref.rollout.multi_turn.max_assistant_turns=3",
        "trace.allocator=tree_random", "algorithm.rollout_correction.bypass_mode=true",
        "transfer_queue.backend.SimpleStorage.num_data_storage_units=2", "data.train_batch_size=3",
        "actor_rollout_ref.actor.ppo_mini_batch_size=1", "+algorithm.adv_extra_fields=[extra_fields]",
    ])
    prepare_trace_config(cfg)
    with open_dict(cfg):
        cfg.transfer_queue.enable = True
    OmegaConf.resolve(cfg)
    ray.init(num_cpus=4, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"]}})
    tq.init(cfg.transfer_queue)
    try:
        plain = get_trainer_cls("sync")(cfg)
        hooked = trace_trainer_class(get_trainer_cls("sync"))(cfg)
        worker = AgentLoopWorkerTQ.__ray_actor_class__(cfg, None)
        trees = stage.build_trees(len(worker.tokenizer), [str(uuid.uuid4()) for _ in range(3)])
        uids = [t.uid for t in trees]
        tags = [{"is_prompt": True, "status": "finished", "global_steps": 1} for _ in uids]
        tq.kv_batch_put(keys=uids, partition_id="train", tags=tags)
        stage.write_leaves(worker, trees, 1)
        batch, _ = plain.replay_buffer.sample(global_steps=1, partition_id="train", batch_size=3)
        batch = upsample_batch_to_divisible_size(batch, 16, worker.tokenizer.eos_token_id)
        plain._compute_old_log_prob(batch, {})

        def advantages(trainer, estimator):
            trainer.config.algorithm.adv_estimator = estimator
            trainer._compute_advantage(batch, {})
            data = tq.kv_batch_get(keys=batch.keys, partition_id="train", select_fields=["advantages"])
            return data["advantages"].to_padded_tensor(0.0)

        patched, hook = advantages(plain, "trace_nt"), advantages(hooked, "trace")
        print(f"rows {len(batch)}, rows with signal {int((patched != 0).any(-1).sum())}, "
              f"max |patched - hook| {float((patched - hook).abs().max())}, identical {torch.equal(patched, hook)}")
    finally:
        tq.close()
        ray.shutdown()


if __name__ == "__main__":
    main()
