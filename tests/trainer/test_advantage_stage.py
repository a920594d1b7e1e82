"""The trainer's advantage stage as verl runs it, on CPU.

Ray and TransferQueue as ``TaskRunnerV1`` starts them; tree leaves written to TransferQueue by
verl's own ``AgentLoopWorkerTQ._agent_loop_postprocess`` (what a TRACE worker does with each leaf);
prompts tagged and finished as verl's workers do, plus a candidate-pool prompt that was not chosen
as a root and is cleared; the batch sampled by the trainer's real ``ReplayBuffer``, padded by
verl's ``upsample_batch_to_divisible_size`` (what ``_balance_batch`` does), ``old_log_probs`` from
``_compute_old_log_prob`` (bypass mode), then the TRACE trainer's ``_compute_advantage``. The
advantages read back from TransferQueue must equal a direct computation on the same trees.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from verl_trace.advantage import LeafRecord, tree_grpo_leaf_advantages
from verl_trace.protocol import TreeMeta
from verl_trace.tree import LeafStatus, RolloutTree

pytestmark = pytest.mark.slow

N_LEAVES = 4


def build_trees(vocab: int, uids: list[str]) -> list[RolloutTree]:
    """Three trees of N_LEAVES leaves: branch points below the root and deeper, a truncated and a
    failed leaf, and one tree whose rewards are all equal (no signal)."""
    rng = np.random.default_rng(0)

    def turn(tree, parent, obs=True):
        n = int(rng.integers(3, 9))
        return tree.add_turn(
            parent, rng.integers(10, vocab, n).tolist(), rng.integers(10, vocab, 4).tolist() if obs else [],
            action_logprobs=(-rng.random(n)).tolist(), text=f"turn {n}",
        )

    trees = []
    # a: root -> 1 -> {2 (r=1), 3 -> 4 (r=0)}; root -> 5 -> 6 (r=0) and 5 -> 7 (r=1)
    a = RolloutTree(uids[0], rng.integers(10, vocab, 6).tolist(), "q a")
    n1 = turn(a, 0)
    a.finish(turn(a, n1, obs=False), 1.0)
    a.finish(turn(a, turn(a, n1)), 0.0)
    n5 = turn(a, 0)
    a.finish(turn(a, n5, obs=False), 0.0)
    a.finish(turn(a, n5, obs=False), 1.0, LeafStatus.TRUNCATED)
    trees.append(a)
    # b: two chains and a branch at turn 1; one leaf failed on an engine error
    b = RolloutTree(uids[1], rng.integers(10, vocab, 5).tolist(), "q b")
    m1 = turn(b, 0)
    b.finish(turn(b, m1, obs=False), 1.0)
    b.finish(turn(b, m1, obs=False), 0.0)
    b.finish(turn(b, turn(b, 0), obs=False), 1.0)
    b.finish(turn(b, 0), None, LeafStatus.FAILED)
    trees.append(b)
    # c: four chains that all succeed
    c = RolloutTree(uids[2], rng.integers(10, vocab, 7).tolist(), "q c")
    for _ in range(N_LEAVES):
        c.finish(turn(c, turn(c, 0), obs=False), 1.0)
    trees.append(c)
    return trees


@pytest.fixture(scope="module")
def stage(ray_tq, trace_config):
    """The TRACE trainer and verl's agent-loop worker (as plain objects in the driver) on Ray + TransferQueue."""
    from verl.trainer.ppo.v1 import AgentLoopWorkerTQ, get_trainer_cls

    from verl_trace.trainer.trainer import trace_trainer_class

    cfg = trace_config(
        f"actor_rollout_ref.rollout.n={N_LEAVES}",
        "actor_rollout_ref.rollout.multi_turn.max_assistant_turns=3",
        "trace.allocator=tree_random",
        "algorithm.rollout_correction.bypass_mode=true",  # old_log_probs = rollout_log_probs (no actor on CPU)
        "data.train_batch_size=3",
        "actor_rollout_ref.actor.ppo_mini_batch_size=1",
    )
    trainer = trace_trainer_class(get_trainer_cls("sync"))(cfg)
    worker = AgentLoopWorkerTQ.__ray_actor_class__(cfg, None)
    return cfg, trainer, worker, ray_tq


def write_leaves(worker, trees: list[RolloutTree], global_steps: int) -> dict[str, tuple[RolloutTree, int]]:
    """Each leaf through verl's worker postprocess, key {uid}_{session}_0; returns key -> (tree, leaf)."""
    from verl.experimental.agent_loop.agent_loop import AgentLoopMetrics, AgentLoopOutput

    written = {}

    async def run():
        for tree in trees:
            for session, leaf in enumerate(tree.leaves()):
                traj = tree.render(leaf.node_id)
                meta = TreeMeta(tree_uid=tree.uid, path=traj.path, spans=traj.turn_spans, status=traj.status)
                output = AgentLoopOutput(
                    prompt_ids=traj.prompt_ids, response_ids=traj.response_ids, response_mask=traj.response_mask,
                    response_logprobs=traj.response_logprobs, reward_score=traj.reward or 0.0,
                    num_turns=2 * (len(traj.path) - 1), metrics=AgentLoopMetrics(),
                    extra_fields={"trace": meta.to_field(), "min_global_steps": global_steps,
                                  "max_global_steps": global_steps, "turn_scores": [], "tool_rewards": []},
                )
                await worker._agent_loop_postprocess(
                    output, False, uid=tree.uid, session_id=session, global_steps=global_steps,
                    raw_prompt=[{"role": "user", "content": tree.prompt_text}], index=0, data_source="searchR1_nq",
                )
                written[f"{tree.uid}_{session}_0"] = (tree, leaf.node_id)

    asyncio.run(run())
    return written


@pytest.fixture(scope="module")
def sampled(stage):
    """One step's batch, as the trainer holds it when it reaches the advantage stage."""
    import uuid

    from verl.trainer.ppo.padding_utils import upsample_batch_to_divisible_size

    cfg, trainer, worker, tq = stage
    trees = build_trees(len(worker.tokenizer), [str(uuid.uuid4()) for _ in range(3)])
    pool_extra = str(uuid.uuid4())
    uids = [t.uid for t in trees] + [pool_extra]
    tq.kv_batch_put(keys=uids, partition_id="train",
                    tags=[{"is_prompt": True, "status": "pending", "global_steps": 1} for _ in uids])
    for uid in uids:
        tq.kv_put(key=uid, partition_id="train", tag={"status": "running"})
    written = write_leaves(worker, trees, global_steps=1)
    for t in trees:
        tq.kv_put(key=t.uid, partition_id="train", tag={"status": "finished"})
    tq.kv_clear(keys=[pool_extra], partition_id="train")  # a pool prompt the allocator did not pick

    batch, _ = trainer.replay_buffer.sample(global_steps=1, partition_id="train", batch_size=len(trees))
    assert sorted(batch.keys) == sorted(written)
    batch = upsample_batch_to_divisible_size(batch, 16, worker.tokenizer.eos_token_id)
    assert len(batch) == 16 and sum(tag.get("is_padding", False) for tag in batch.tags) == 16 - len(written)
    trainer._compute_old_log_prob(batch, metrics={})
    return batch, written


def advantages_of(tq, batch) -> dict[str, torch.Tensor]:
    data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["advantages", "response_mask"])
    return {k: (a, m) for k, a, m in zip(batch.keys, data["advantages"].unbind(), data["response_mask"].unbind())}


def test_trace_advantages_match_the_tree(stage, sampled, expected_trace_advantage):
    cfg, trainer, _, tq = stage
    batch, written = sampled
    metrics = {}
    trainer.config.algorithm.adv_estimator = "trace"
    trainer._compute_advantage(batch, metrics)
    got = advantages_of(tq, batch)
    for key, (adv, mask) in got.items():
        if key not in written:  # padding row
            assert torch.all(adv == 0) and torch.all(mask == 0)
            continue
        tree, leaf = written[key]
        expected = expected_trace_advantage(tree, leaf, trainer.trace_config.advantage)
        torch.testing.assert_close(adv, expected, rtol=1e-5, atol=1e-6)
    # Turn-level credit: some leaf's turns get different advantages (not one value per row, as GRPO).
    assert any(len(set(adv[mask.bool()].tolist())) > 1 for k, (adv, mask) in got.items() if k in written)
    # The signal is where the tree says: branch points of a and b carry it, c (all equal) none.
    by_tree = {}
    for key, (tree, _) in written.items():
        by_tree.setdefault(tree.prompt_text, []).append(bool(got[key][0].abs().sum() > 0))
    assert any(by_tree["q a"]) and any(by_tree["q b"]) and not any(by_tree["q c"])
    assert metrics["trace/adv/trees"] == 3 and metrics["trace/adv/leaves_per_tree/mean"] == N_LEAVES
    assert metrics["trace/adv/mixed_tree_ratio"] == pytest.approx(2 / 3)
    assert metrics["trace/adv/failed_leaf_ratio"] == pytest.approx(1 / 12)


def test_tree_grpo_advantages_match_the_tree(stage, sampled):
    cfg, trainer, _, tq = stage
    batch, written = sampled
    trainer.config.algorithm.adv_estimator = "tree_grpo"
    trainer._compute_advantage(batch, {})
    got = advantages_of(tq, batch)
    adv_cfg = trainer.trace_config.advantage
    for tree in {t for t, _ in written.values()}:
        leaves = tree.leaves()
        records = [LeafRecord(tuple(tree.path(n.node_id)), n.reward or 0.0, n.status) for n in leaves]
        expected = dict(zip([n.node_id for n in leaves], tree_grpo_leaf_advantages(records, adv_cfg, True)))
        for key, (t, leaf) in written.items():
            if t is tree:
                adv, mask = got[key]
                torch.testing.assert_close(adv, float(expected[leaf]) * mask.float(), rtol=1e-5, atol=1e-6)


def test_other_estimators_are_verls_own(stage, sampled):
    """With `grpo` the hook steps aside: the result is verl's GRPO over the same rows."""
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

    cfg, trainer, _, tq = stage
    batch, written = sampled
    trainer.config.algorithm.adv_estimator = "grpo"
    metrics = {}
    trainer._compute_advantage(batch, metrics)
    assert not any(k.startswith("trace/") for k in metrics)
    fields = ["rm_scores", "response_mask", "advantages"]
    data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=fields).to_padded_tensor()
    index = np.array([k.split("_")[0] for k in batch.keys], dtype=object)
    expected, _ = compute_grpo_outcome_advantage(data["rm_scores"], data["response_mask"], index)
    assert expected.abs().sum() > 0
    torch.testing.assert_close(data["advantages"], expected, rtol=1e-5, atol=1e-6)
