"""The TRACE rollout as verl's V1 trainer runs it, on CPU.

Ray and TransferQueue as ``TaskRunnerV1`` starts them; the TRACE trainer (its shared predictor
actor included) submits a candidate pool through its real ``prepare_step``; ``TraceAgentLoopManager``
is built with verl's ``create(config=, llm_client=, teacher_client=, reward_loop_worker_handles=)``
and runs 2 TRACE worker actors, each with a scripted policy as its ``llm_client`` (as verl's
recipe passes the LLM client), verl's ``trace_agent`` loop, the calculator tool loaded from a tool
YAML, and rewards from a real verl ``RewardLoopWorker`` actor. Then the trainer's ReplayBuffer
samples the step and its advantage stage computes ``trace`` advantages from TransferQueue, which
must equal a direct computation on the workers' own trees. The policy injects one engine error and
one raising tool call per worker. A worker is then killed and replaced (this one scores leaves
locally, without reward workers) and the next step resumes with the same shared predictor.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from verl_trace.protocol import METRICS_PARTITION, ROOTS_KEY, TRACE_FIELD
from verl_trace.testing import arithmetic
from verl_trace.tree import LeafStatus, RolloutTree

pytestmark = pytest.mark.slow

N_ROOTS, LEAVES, POOL_FACTOR, WORKERS, VAL_N = 3, 4, 2, 2, 2


def faulty_policy():
    """The arithmetic policy (always calls the calculator first) with two faults per worker: its
    first second-turn generation raises in the engine, its second first-turn call asks the
    calculator for a division (the tool raises)."""
    base = arithmetic.arithmetic_policy(p_call=1.0)
    state = {"engine_failed": False, "first_turns": 0}

    def policy(call):
        if call.turn == 1 and not state["engine_failed"]:
            state["engine_failed"] = True
            raise RuntimeError("CUDA error: device-side assert triggered (injected)")
        if call.turn == 0:
            state["first_turns"] += 1
            if state["first_turns"] == 2:
                return arithmetic.call_text("84 / 2")
        return base(call)

    return policy


def client_for(cfg, tokenizer):
    from verl_trace.testing.scripted import ScriptedPolicyClient

    r = cfg.actor_rollout_ref.rollout
    return ScriptedPolicyClient(tokenizer, faulty_policy(), prompt_length=r.prompt_length, response_length=r.response_length)


class Dataloader:
    """Batches as verl's RLHFDataset collate yields them: one object array per column."""

    def __init__(self, batch_size: int):
        self.batch_size, self.next = batch_size, 0

    def __iter__(self):
        while True:
            rows = []
            for _ in range(self.batch_size):
                rows.append({**arithmetic.task_row(10 + self.next, 7 * self.next % 50), "index": self.next})
                self.next += 1
            yield {k: np.fromiter((r[k] for r in rows), dtype=object, count=len(rows)) for k in rows[0]}


class Recorder:
    """Forwards to the real manager and remembers each submission's uids and roots."""

    def __init__(self, manager):
        self.manager, self.submissions = manager, []

    def generate_sequences(self, batch):
        self.submissions.append((list(batch["uid"]), batch[ROOTS_KEY]))
        return self.manager.generate_sequences(batch)


@pytest.fixture(scope="module")
def job(ray_tq, trace_config, tiny_model_dir, tmp_path_factory):
    import ray
    import yaml
    from transformers import AutoTokenizer
    from verl.experimental.reward_loop.reward_loop import RewardLoopWorker
    from verl.trainer.ppo.v1 import get_trainer_cls

    from verl_trace.rollout.worker import TraceAgentLoopManager
    from verl_trace.trainer.trainer import trace_trainer_class

    tool_yaml = tmp_path_factory.mktemp("tools") / "calculator.yaml"
    tool_yaml.write_text(yaml.safe_dump(arithmetic.tool_config()))
    cfg = trace_config(
        f"actor_rollout_ref.rollout.n={LEAVES}",
        f"actor_rollout_ref.rollout.val_kwargs.n={VAL_N}",
        "actor_rollout_ref.rollout.multi_turn.max_assistant_turns=3",
        f"actor_rollout_ref.rollout.multi_turn.tool_config_path={tool_yaml}",
        f"actor_rollout_ref.rollout.agent.num_workers={WORKERS}",
        "trace.allocator=trace",
        f"trace.allocation.pool_factor={POOL_FACTOR}",
        f"data.train_batch_size={N_ROOTS}",
        "actor_rollout_ref.actor.ppo_mini_batch_size=1",
        "algorithm.rollout_correction.bypass_mode=true",  # old_log_probs = rollout_log_probs (no actor on CPU)
        f"reward.custom_reward_function.path=pkg://{arithmetic.__name__}",
        "reward.custom_reward_function.name=compute_score",
    )
    trainer = trace_trainer_class(get_trainer_cls("sync"))(cfg)  # starts the shared predictor actor
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    reward_worker = ray.remote(RewardLoopWorker).remote(cfg)
    manager = TraceAgentLoopManager.create(
        config=cfg, llm_client=client_for(cfg, tokenizer), teacher_client=None, reward_loop_worker_handles=[reward_worker]
    )
    trainer.agent_loop_manager = Recorder(manager)
    trainer.train_dataloader = Dataloader(N_ROOTS)
    trainer.train_dataloader_it = None
    return SimpleNamespace(cfg=cfg, trainer=trainer, manager=manager, tokenizer=tokenizer, tq=ray_tq)


def wait_terminal(tq, uids, partition="train", timeout=180.0):
    """Poll prompt tags until every uid still present is finished/failure (or gone)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tags = (tq.kv_list(partition) or {}).get(partition, {})
        if all(tags.get(u, {}).get("status", "finished") in ("finished", "failure") for u in uids):
            return
        time.sleep(0.2)
    raise AssertionError(f"prompts not finished after {timeout}s: {[(u, tags.get(u)) for u in uids]}")


def worker_trees(worker) -> dict[str, RolloutTree]:
    import ray

    dumped = ray.get(worker.__ray_call__.remote(lambda self: {u: t.to_dict() for u, t in self.last_step.trees.items()}))
    return {u: RolloutTree.from_dict(d) for u, d in dumped.items()}


def run_step(job, global_steps: int):
    """One training step up to the advantage stage; returns what the tests look at."""
    from verl.trainer.ppo.padding_utils import upsample_batch_to_divisible_size

    from verl_trace.trainer.trainer import pop_rollout_metrics

    trainer, tq = job.trainer, job.tq
    trainer.global_steps = global_steps
    trainer.prepare_step()  # the trainer's own submission: pool, ROOTS_KEY, prompt tags
    pool, n_roots = trainer.agent_loop_manager.submissions[-1]
    wait_terminal(tq, pool)
    left_in_tq = set((tq.kv_list("train") or {}).get("train", {}))
    batch, _ = trainer.replay_buffer.sample(global_steps=global_steps, partition_id="train", batch_size=N_ROOTS)
    trees = {}
    for worker in job.manager.agent_loop_workers:
        trees.update(worker_trees(worker))
    rows = tq.kv_batch_get(keys=batch.keys, partition_id="train", select_fields=["extra_fields", "responses"])
    meta = {k: ef[TRACE_FIELD] for k, ef in zip(batch.keys, rows["extra_fields"])}
    responses = dict(zip(batch.keys, (r.tolist() for r in rows["responses"].unbind())))
    metrics = pop_rollout_metrics()
    padded = upsample_batch_to_divisible_size(batch, 16, job.tokenizer.eos_token_id)
    trainer._compute_old_log_prob(padded, metrics={})
    adv_metrics: dict = {}
    trainer._compute_advantage(padded, adv_metrics)
    data = tq.kv_batch_get(keys=padded.keys, partition_id="train", select_fields=["advantages", "response_mask"])
    advantages = dict(zip(padded.keys, data["advantages"].unbind()))
    return SimpleNamespace(
        pool=pool, n_roots=n_roots, left_in_tq=left_in_tq, batch=batch, trees=trees, meta=meta,
        responses=responses, metrics=metrics, adv_metrics=adv_metrics, advantages=advantages,
    )  # fmt: skip


@pytest.fixture(scope="module")
def step1(job):
    return run_step(job, global_steps=1)


def test_budget_and_one_session_per_leaf(step1):
    assert step1.n_roots == N_ROOTS and len(step1.pool) == POOL_FACTOR * N_ROOTS
    assert len(step1.trees) == N_ROOTS
    assert len(step1.batch) == N_ROOTS * LEAVES == sum(len(t.leaves()) for t in step1.trees.values())
    for uid, tree in step1.trees.items():
        keys = sorted(k for k in step1.batch.keys if k.split("_")[0] == uid)
        # TRACE moves budget between trees, so a tree has any number of leaves; each is its own session.
        assert keys == sorted(f"{uid}_{s}_0" for s in range(len(tree.leaves())))
        assert sorted(step1.meta[k]["path"][-1] for k in keys) == sorted(n.node_id for n in tree.leaves())


def test_unselected_pool_prompts_are_gone_and_the_buffer_returns_the_selected_groups(step1):
    selected = set(step1.trees)
    assert {k.split("_")[0] for k in step1.batch.keys} == selected
    unused = set(step1.pool) - selected
    assert len(unused) == len(step1.pool) - N_ROOTS
    # before sampling, TransferQueue held the roots' prompt tags and leaves only
    assert not {k for k in step1.left_in_tq if k.split("_")[0] in unused}
    assert {k for k in step1.left_in_tq if "_" not in k} == selected


def test_trace_advantages_from_transfer_queue_match_the_workers_trees(job, step1, expected_trace_advantage):
    cfg = job.trainer.trace_config.advantage
    for key in step1.batch.keys:
        meta = step1.meta[key]
        tree, leaf = step1.trees[meta["tree_uid"]], meta["path"][-1]
        traj = tree.render(leaf)
        assert meta["path"] == traj.path and [tuple(s) for s in meta["spans"]] == [tuple(s) for s in traj.turn_spans]
        if traj.response_ids:  # a leaf that failed before generating is one masked filler token
            assert step1.responses[key] == traj.response_ids
        adv = step1.advantages[key]
        torch.testing.assert_close(adv, expected_trace_advantage(tree, leaf, cfg, len(adv)), rtol=1e-5, atol=1e-6)
    for key, adv in step1.advantages.items():
        if key not in step1.meta:  # verl's padding rows
            assert torch.all(adv == 0)
    assert step1.adv_metrics["trace/adv/trees"] == N_ROOTS


def test_faults_are_contained_and_counted(step1):
    m = step1.metrics
    assert m["trace/failed/engine_error"] == WORKERS == m["plan/failed"] == m["trace/leaves_failed"]
    assert m["trace/tool_errors/tool_exception"] >= WORKERS
    failed = [k for k, meta in step1.meta.items() if meta["status"] == LeafStatus.FAILED.value]
    assert len(failed) == WORKERS
    assert all(torch.all(step1.advantages[k] == 0) for k in failed)  # no credit from a broken trajectory
    # one failed after its first turn: the leaf hangs below that turn
    assert all(len(step1.meta[k]["path"]) == 3 for k in failed)


def test_step_metrics_reach_the_trainer(job, step1):
    m = step1.metrics
    assert m["trace/prompts"] == m["plan/roots"] == N_ROOTS
    assert m["trace/leaves"] == m["plan/launched"] == m["plan/budget_leaves"] == N_ROOTS * LEAVES
    assert m["plan/unspent_leaves"] == 0 and m["trace/leaves_per_prompt/mean"] == LEAVES
    assert 0.0 <= m["trace/effective_sample_ratio"] <= 1.0 and 0.0 <= m["trace/mixed_root_ratio"] <= 1.0
    # The manager chose the roots over the whole pool, with the shared predictor's estimates.
    assert m["trace/pool/prompts"] == POOL_FACTOR * N_ROOTS and m["trace/pool/roots"] == N_ROOTS
    assert 0.0 <= m["trace/pool/p_hat/min"] <= m["trace/pool/root_p_hat/mean"] <= m["trace/pool/p_hat/max"] <= 1.0
    assert m["trace/tokens_generated"] > 0 and m["trace/step_seconds"] > 0
    assert not (job.tq.kv_list(METRICS_PARTITION) or {}).get(METRICS_PARTITION)  # popped once


def test_validation_runs_plain_chains(job, step1):
    from verl.utils import tensordict_utils as tu

    tq = job.tq
    batch_dict = next(iter(Dataloader(2)))
    batch_dict["uid"] = np.array([str(uuid.uuid4()) for _ in range(2)], dtype=object)
    batch = tu.get_tensordict(batch_dict)
    tu.assign_non_tensor_data(batch, "global_steps", 1)
    tu.assign_non_tensor_data(batch, "validate", True)
    uids = list(batch["uid"])
    tq.kv_batch_put(keys=uids, partition_id="val", tags=[{"is_prompt": True, "status": "pending", "global_steps": 1}] * 2)
    job.manager.generate_sequences(batch)
    wait_terminal(tq, uids, "val")
    sampled, _ = job.trainer.replay_buffer.sample(global_steps=1, partition_id="val", batch_size=2)
    assert sorted(sampled.keys) == sorted(f"{u}_{s}_0" for u in uids for s in range(VAL_N))
    rows = tq.kv_batch_get(keys=sampled.keys, partition_id="val", select_fields=["extra_fields", "rm_scores"])
    assert all("trace" not in ef for ef in rows["extra_fields"])
    assert set(rows["rm_scores"].to_padded_tensor(0).sum(-1).tolist()) <= {0.0, 1.0}  # scored by the reward loop
    tq.kv_clear(keys=sampled.keys, partition_id="val")


def test_a_failed_rollout_fails_its_share_of_roots_instead_of_hanging_the_trainer(job, step1):
    """A submission whose rollout cannot run (here: rows asking for verl's plain ``tool_agent``,
    which cannot branch): its roots end ``failure`` (the ReplayBuffer returns them and the trainer
    stops with verl's error), the rest of the pool is deleted, the workers stay up."""
    from verl.utils import tensordict_utils as tu

    tq = job.tq
    batch_dict = next(iter(Dataloader(2)))
    batch_dict["uid"] = np.array([str(uuid.uuid4()) for _ in range(2)], dtype=object)
    batch_dict["agent_name"] = np.array(["tool_agent"] * 2, dtype=object)
    batch = tu.get_tensordict(batch_dict)
    tu.assign_non_tensor_data(batch, "global_steps", 1)
    tu.assign_non_tensor_data(batch, ROOTS_KEY, 1)
    uids = list(batch["uid"])
    tq.kv_batch_put(keys=uids, partition_id="train", tags=[{"is_prompt": True, "status": "pending", "global_steps": 1}] * 2)
    job.manager.generate_sequences(batch)  # the manager picks 1 root of 2 and deletes the other
    wait_terminal(tq, uids)
    tags = (tq.kv_list("train") or {}).get("train", {})
    (root,) = [u for u in uids if u in tags]
    assert tags[root]["status"] == "failure"
    assert not [k for k in tags if k.split("_")[0] in uids and k != root]  # no trajectories
    tq.kv_clear(keys=[root], partition_id="train")
    from verl_trace.trainer.trainer import pop_rollout_metrics

    assert pop_rollout_metrics()["trace/pool/prompts"] == 2  # the choice's metrics; the next step starts clean


def test_worker_restart_resumes_with_the_same_predictor(job, step1):
    import ray

    from verl_trace.predictor.service import PREDICTOR_ACTOR_NAME, PredictorService, RemotePredictor

    predictor = ray.get_actor(PREDICTOR_ACTOR_NAME)
    assert ray.get(predictor.pop_metrics.remote())["predictor/updates_total"] == WORKERS  # one update per worker

    def predictions(self, tree_dict):
        """This worker's view of the shared predictor: its own features of a tree's anchors."""
        from verl_trace.allocation.base import anchor_key
        from verl_trace.predictor.base import AnchorBatch

        tree = RolloutTree.from_dict(tree_dict)
        for node in tree.nodes:
            node.features = None
        ids = [n.node_id for n in tree.nodes if not n.terminal]
        batch = AnchorBatch(keys=[anchor_key(tree, i) for i in ids], features=self.featurizer.featurize(tree, ids))
        return ray.get(self.predictor_handle.predict.remote(batch)).p, batch

    tree = next(iter(step1.trees.values())).to_dict()
    old = job.manager.agent_loop_workers[0]
    before, anchors = ray.get(old.__ray_call__.remote(predictions, tree))
    fresh = PredictorService(job.trainer.trace_config.predictor).predict(anchors).p
    assert not np.allclose(before, fresh)  # the shared predictor has learned from step 1

    async def as_a_worker_calls_it():
        """The planner's thread awaits the actor on the loop; on the loop itself it would block it."""
        remote = RemotePredictor(predictor, loop=asyncio.get_running_loop())
        with pytest.raises(RuntimeError, match="event loop"):
            remote.predict(anchors)
        return (await asyncio.to_thread(remote.predict, anchors)).p

    np.testing.assert_array_equal(asyncio.run(as_a_worker_calls_it()), before)

    ray.kill(old)
    new = job.manager.agent_loop_workers_class.options(name=f"trace_worker_restarted_{uuid.uuid4().hex[:6]}").remote(
        job.cfg, client_for(job.cfg, job.tokenizer), None, None  # no reward workers: leaves scored in-process
    )
    job.manager.agent_loop_workers[0] = new
    after, _ = ray.get(new.__ray_call__.remote(predictions, tree))
    np.testing.assert_array_equal(after, before)

    step2 = run_step(job, global_steps=2)
    assert len(step2.batch) == N_ROOTS * LEAVES and len(step2.trees) == N_ROOTS
    assert step2.metrics["plan/unspent_leaves"] == 0
    assert ray.get(predictor.pop_metrics.remote())["predictor/updates_total"] == 2 * WORKERS
