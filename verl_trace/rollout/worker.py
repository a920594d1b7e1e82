"""Layer 5: the TRACE rollout as verl's V1 trainer runs it, ``TraceAgentLoopManager`` and its Ray
workers (``actor_rollout_ref.rollout.agent.agent_loop_manager_class`` names the manager).

verl's ``AgentLoopManagerTQ`` splits each prompt batch among ``AgentLoopWorkerTQ`` actors, which
run ``rollout.n`` independent agent loops per prompt and write every trajectory to TransferQueue.
The TRACE manager first chooses a training batch's roots (``protocol.ROOTS_KEY`` of them) from the
whole candidate pool with the allocator's global root allocation (``submission.choose_roots``:
the choice one planner over the pool would make), deletes the other prompts from TransferQueue,
and splits the roots among the workers the way verl splits a batch. Each worker then runs ONE
``TreePlanner`` over its roots through ``TreeRolloutRunner``, with the worker's own LLM client
(one sticky request id per tree keeps its branches on one server), tools and reward path, and
afterwards:

1. puts the step's ``trace/*`` and ``plan/*`` metrics into TransferQueue
   (``protocol.METRICS_PARTITION``; the trainer merges and logs them, with the manager's
   ``trace/pool/*``);
2. queues the finished trees at the job's shared predictor (for allocators that use one), which
   trains on them while the trainer works, off the step's critical path;
3. writes every leaf of every tree with verl's own ``_agent_loop_postprocess`` (key
   ``{uid}_{session}_0``, one session per leaf, ``extra_fields["trace"]``), and marks each root's
   prompt ``finished`` once all its leaves are in.

Validation batches take verl's own path: ``val_kwargs.n`` plain chains per prompt.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import ray
import torch
import transfer_queue as tq
from tensordict import TensorDict
from verl.experimental.agent_loop.agent_loop import AgentLoopOutput, _agent_loop_registry
from verl.trainer.ppo.v1.agent_loop_tq import AgentLoopManagerTQ, AgentLoopWorkerTQ
from verl.utils import tensordict_utils as tu

from ..allocation import allocator_class, step_budget, worker_budget
from ..config import TraceConfigError, load_trace_config
from ..gcfreeze import freeze_startup_objects
from ..predictor import build_featurizer
from ..predictor.service import RemotePredictor, get_predictor_actor
from ..protocol import METRICS_PARTITION, ROOTS_KEY, TREE_ESTIMATORS
from ..tree import LeafStatus, save_trees
from .agent_loop import TraceToolAgentLoop
from .reward import RewardFn, compute_score_reward
from .runner import LeafOutput, StepResult, TreePrompt, TreeRolloutRunner, build_planner
from .submission import Submission, choose_roots, pool_seed, prompt_key

logger = logging.getLogger(__name__)

STEP_ROOTS_KEY = "trace_step_roots"  # manager -> worker: roots of the whole submission (token budget share)
_SUBMISSION_KEY = "trace_submission"  # worker-internal: which Submission a prompt belongs to


class TraceAgentLoopWorker(AgentLoopWorkerTQ.__ray_actor_class__):
    """verl's TransferQueue agent-loop worker with TRACE's tree rollout for training batches.

    Run it as the Ray actor ``TraceAgentLoopWorkerActor`` (verl's worker is itself a Ray actor
    class, which cannot be subclassed; its plain class can). ``last_step`` keeps the latest
    training submission's ``StepResult`` (trees, leaves, metrics) for inspection through Ray.
    """

    def __init__(
        self,
        config: Any,
        llm_client: Any,
        teacher_client: Any = None,
        reward_loop_worker_handles: list[Any] | None = None,
    ):
        super().__init__(config, llm_client, teacher_client, reward_loop_worker_handles)
        self.trace_config = load_trace_config(self.config.get("trace"))  # resolved by main_trace's start-up checks
        if self.trace_config.max_turns is None:
            raise TraceConfigError(
                "trace.max_turns: unresolved; start the job with python -m verl_trace.main_trace, whose start-up "
                "checks validate the trace: section and resolve it from verl's settings"
            )
        self.keep_failed_leaves = self.config.algorithm.adv_estimator in TREE_ESTIMATORS
        self.predictor_handle = None
        self.featurizer = None
        if allocator_class(self.trace_config.allocator).needs_predictor:
            self.predictor_handle = get_predictor_actor()
            self.featurizer = build_featurizer(self.trace_config.predictor, self.trace_config.max_turns)
        self.reward_fn = self._reward_loop_score if reward_loop_worker_handles else self._local_reward_fn()
        self._submissions: dict[str, Submission] = {}
        self.last_step: StepResult | None = None
        # Start-up is over (verl, clients, tokenizer): keep the collector off these objects, which a
        # step's trees would otherwise make it re-walk on every full collection (verl_trace.gcfreeze).
        freeze_startup_objects()

    # ------------------------------------------------------------------ entry point
    async def generate_sequences(self, batch: TensorDict) -> None:
        """verl's fire-and-forget dispatch; a training batch becomes one tree submission."""
        sub = None
        if not tu.get(batch, "validate", False):
            n_roots = int(tu.pop(batch, ROOTS_KEY, len(batch)))
            step_roots = int(tu.pop(batch, STEP_ROOTS_KEY, n_roots))
            if not 0 <= n_roots <= len(batch):
                raise ValueError(f"{ROOTS_KEY}: {n_roots} roots cannot be chosen from {len(batch)} prompts")
            sub = Submission(id=uuid.uuid4().hex, size=len(batch), n_roots=n_roots, step_roots=step_roots)
            self._submissions[sub.id] = sub
            tu.assign_non_tensor_data(batch, _SUBMISSION_KEY, sub.id)
        try:
            await super().generate_sequences(batch)
        except BaseException:
            if sub is not None:
                self._submissions.pop(sub.id, None)
            raise

    async def _run_prompt(self, prompt: dict, sampling_params: dict, trajectory: dict, trace: bool = False) -> None:
        """Validation: verl's plain chains. Training: add the prompt to its submission's pool; the
        prompt that completes the pool runs the submission (in this background task)."""
        sub_id = prompt.pop(_SUBMISSION_KEY, None)
        if sub_id is None:
            return await super()._run_prompt(prompt, sampling_params, trajectory, trace)
        sub = self._submissions[sub_id]
        await tq.async_kv_put(key=prompt["uid"], partition_id="train", tag={"status": "running"})
        if sub.add(prompt, sampling_params):
            del self._submissions[sub_id]
            await self._run_submission(sub)

    # ------------------------------------------------------------------ one submission
    async def _run_submission(self, sub: Submission) -> None:
        try:
            result = await self._roll_out(sub) if sub.n_roots else None
        except Exception:
            logger.exception("TRACE rollout of %d prompts (%d roots) failed", sub.size, sub.n_roots)
            await self._write(sub, None)
            return
        update = None
        if result is not None:
            # Neither is worth losing the step's trees for: a failure is logged, the trees written.
            await _logged(f"TRACE step {sub.global_steps}: metrics", self._publish_metrics(sub, result.metrics))
            if self.trace_config.tree_dump_dir:
                path = Path(self.trace_config.tree_dump_dir) / f"step_{sub.global_steps}-{sub.id[:8]}.json"
                await _logged(f"TRACE step {sub.global_steps}: tree dump",
                              asyncio.to_thread(save_trees, result.trees.values(), path))
            try:
                update = await self._send_predictor_update(result)
            except Exception:
                logger.exception("TRACE step %d: predictor update could not be sent", sub.global_steps)
        # The trainer waits for the written trees, not for the predictor: the update is already
        # queued at the actor (which serves calls in order, so the next step's predictions see it)
        # and finishes while the trees are written and the policy is trained.
        await self._write(sub, result)
        if update is not None:
            await _logged(f"TRACE step {sub.global_steps}: predictor update", update)

    async def _roll_out(self, sub: Submission) -> StepResult:
        tc = self.trace_config
        rollout = self.config.actor_rollout_ref.rollout
        budget = worker_budget(
            tc, n_roots=sub.n_roots, step_roots=sub.step_roots, rollout_n=rollout.n,
            response_length=rollout.response_length,
        )  # fmt: skip
        predictor = None
        if self.predictor_handle is not None:
            predictor = RemotePredictor(self.predictor_handle, loop=asyncio.get_running_loop())
        planner = build_planner(
            tc, n_roots=sub.n_roots, budget=budget, max_turns=tc.max_turns, predictor=predictor,
            featurizer=self.featurizer, rng=np.random.default_rng(sub.seed(tc.seed)),
        )  # fmt: skip
        loop_cls, tool_timeout = _trace_loop(sub.agent_names)
        runner = TreeRolloutRunner(
            self.config, self.llm_client, self.tokenizer, tools=self.tools, reward_fn=self.reward_fn,
            processor=self.processor, dataset_cls=self.dataset_cls, hf_model_type=self.hf_model_type,
            max_concurrency=budget.leaves, tool_timeout=tool_timeout, agent_loop_cls=loop_cls,
            plan_in_thread=True,
        )  # fmt: skip
        result = await runner.run_step(planner, sub.tree_prompts(), sub.sampling_params)
        self.last_step = result
        m = result.metrics
        logger.info(
            "TRACE step %d: %d of %d prompts as roots, %d leaves (%d failed), %.1fs",
            sub.global_steps, len(result.trees), sub.size, m["trace/leaves"], m["trace/leaves_failed"],
            m["trace/step_seconds"],
        )  # fmt: skip
        return result

    async def _publish_metrics(self, sub: Submission, metrics: dict[str, float]) -> None:
        key = f"step{sub.global_steps}-{sub.id}"
        await tq.async_kv_put(key=key, partition_id=METRICS_PARTITION, tag={k: float(v) for k, v in metrics.items()})

    async def _send_predictor_update(self, result: StepResult) -> Any:
        """Queue the step's (anchor, outcome) pairs at the predictor actor; returns the pending call."""
        if self.predictor_handle is None:
            return None
        anchors, outcomes = await asyncio.to_thread(result.training_batch)
        return self.predictor_handle.update.remote(anchors, outcomes) if len(anchors) else None

    async def _write(self, sub: Submission, result: StepResult | None) -> None:
        """Settle the pool (``Submission.settle``), then write each tree and finish its prompt.
        ``result=None``: the rollout failed, so this worker's share of roots fails (the trainer's
        ReplayBuffer then reports it instead of waiting forever) and the rest is deleted."""
        leaves: dict[str, list[LeafOutput]] = {uid: [] for uid in ([] if result is None else result.trees)}
        for leaf in [] if result is None else result.leaves:
            leaves[leaf.uid].append(leaf)
        failed, unused = sub.settle(leaves)
        if failed and result is not None:
            logger.error("TRACE step %d: the planner chose %d roots of %d", sub.global_steps, len(leaves), sub.n_roots)
        for uid in failed:
            await tq.async_kv_put(key=uid, partition_id="train", tag={"status": "failure"})
        if unused:
            await tq.async_kv_clear(keys=unused, partition_id="train")
        await asyncio.gather(*(self._write_tree(sub.rows[uid], tree_leaves) for uid, tree_leaves in leaves.items()))

    async def _write_tree(self, row: dict[str, Any], leaves: Sequence[LeafOutput]) -> None:
        kept = [leaf for leaf in leaves if self.keep_failed_leaves or leaf.status is not LeafStatus.FAILED]
        results = await asyncio.gather(
            *(self._write_leaf(row, session, leaf.output) for session, leaf in enumerate(kept)), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        for e in errors:
            logger.error("writing a leaf of %s failed", row["uid"], exc_info=(type(e), e, e.__traceback__))
        status = "finished" if kept and not errors else "failure"
        await tq.async_kv_put(key=row["uid"], partition_id="train", tag={"status": status})

    async def _write_leaf(self, row: dict[str, Any], session: int, output: AgentLoopOutput) -> None:
        # verl's metrics cast these tags to int; an engine that does not report the weights'
        # version (or a leaf that failed before generating) gets the step's.
        for key in ("min_global_steps", "max_global_steps"):
            if output.extra_fields.get(key) is None:
                output.extra_fields[key] = int(row["global_steps"])
        await self._agent_loop_postprocess(output, False, **row, session_id=session)

    # ------------------------------------------------------------------ rewards
    async def _reward_loop_score(self, output: AgentLoopOutput, row: dict[str, Any]) -> float:
        """A leaf's reward from verl's reward-loop workers, as verl's worker asks for it."""
        await self._compute_score([output], kwargs=dict(row))
        return float(output.reward_score)

    def _local_reward_fn(self) -> RewardFn:
        """No reward-loop workers: ``reward.custom_reward_function`` or verl's default
        ``compute_score``, called the way verl's naive reward manager calls it."""
        from verl.trainer.ppo.reward import get_custom_reward_fn
        from verl.utils.reward_score import default_compute_score

        return compute_score_reward(get_custom_reward_fn(self.config) or default_compute_score, self.tokenizer)


async def _logged(what: str, coro: Any) -> None:
    try:
        await coro
    except Exception:
        logger.exception("%s failed", what)


def _trace_loop(agent_names: set[str]) -> tuple[type[TraceToolAgentLoop], float | None]:
    """The agent-loop class and tool timeout of a submission's rows, from verl's registry (where
    ``agent_loop_config_path`` entries land)."""
    if len(agent_names) != 1:
        raise ValueError(f"agent_name: one tree submission needs one agent loop, got {sorted(agent_names)}")
    (name,) = agent_names
    entry = _agent_loop_registry.get(name)
    if entry is None:
        raise ValueError(f"agent_name: {name!r} is not a registered agent loop ({sorted(_agent_loop_registry)})")
    cls = hydra.utils.get_class(entry["_target_"])
    if not (isinstance(cls, type) and issubclass(cls, TraceToolAgentLoop)):
        raise ValueError(
            f"actor_rollout_ref.rollout.agent.default_agent_loop: agent loop {name!r} is {entry['_target_']}; the "
            "TRACE rollout branches at turn boundaries and needs a TraceToolAgentLoop (trace_agent)"
        )
    extra = {k: v for k, v in dict(entry).items() if k not in ("_target_", "name", "tool_timeout")}
    if extra:
        raise ValueError(
            f"actor_rollout_ref.rollout.agent.agent_loop_config_path: entry {name!r} sets {sorted(extra)}; "
            "the TRACE rollout passes only tool_timeout to its agent loops"
        )
    return cls, entry.get("tool_timeout")


TraceAgentLoopWorkerActor = ray.remote(TraceAgentLoopWorker)


class TraceAgentLoopManager(AgentLoopManagerTQ):
    """verl's TransferQueue agent-loop manager with TRACE workers. A training batch's roots
    (``protocol.ROOTS_KEY``) are chosen from the whole pool here, then split among the workers."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.agent_loop_workers_class = TraceAgentLoopWorkerActor  # verl's __init__ sets its own
        self.trace_config = load_trace_config(self.config.get("trace"))
        self.predictor = None
        self.featurizer = None
        if allocator_class(self.trace_config.allocator).needs_predictor:
            # This runs in the trainer's thread, not on an event loop: the predictor answers through ray.get.
            self.predictor = RemotePredictor(get_predictor_actor())
            self.featurizer = build_featurizer(self.trace_config.predictor, self.trace_config.max_turns)

    def generate_sequences(self, prompts: TensorDict) -> None:
        if ROOTS_KEY not in prompts.keys():  # validation (or a trainer without a pool): verl's split
            return super().generate_sequences(prompts)
        n_roots = int(tu.get(prompts, ROOTS_KEY))
        if n_roots < len(prompts):
            prompts = self.choose_roots(prompts, n_roots)
        chunks = prompts.chunk(len(self.agent_loop_workers))  # as verl's manager: fewer roots, fewer workers
        for chunk in chunks:
            tu.assign_non_tensor_data(chunk, ROOTS_KEY, len(chunk))  # every prompt of a chunk is a root
            tu.assign_non_tensor_data(chunk, STEP_ROOTS_KEY, n_roots)
        ray.get([worker.generate_sequences.remote(chunk) for worker, chunk in zip(self.agent_loop_workers, chunks)])

    def choose_roots(self, prompts: TensorDict, n_roots: int) -> TensorDict:
        """The pool's rows chosen as roots (pool order); the others are deleted from TransferQueue
        (a pool prompt left there would count as a group for verl's ReplayBuffer)."""
        uids = [str(u) for u in tu.get(prompts, "uid")]
        raw = tu.get(prompts, "raw_prompt")
        steps = tu.get(prompts, "global_steps")
        step = int(steps[0] if isinstance(steps, list | torch.Tensor) else steps)
        pool = [TreePrompt(uid, {"raw_prompt": m}, key=prompt_key({"raw_prompt": m})).root_tree() for uid, m in zip(uids, raw)]
        tc, rollout = self.trace_config, self.config.actor_rollout_ref.rollout
        budget = step_budget(tc, n_roots=n_roots, rollout_n=rollout.n, response_length=rollout.response_length)
        choice = choose_roots(tc, pool, n_roots=n_roots, budget=budget, predictor=self.predictor,
                              featurizer=self.featurizer, rng=np.random.default_rng(pool_seed(tc.seed, step, uids)))
        chosen = set(choice.roots)
        unused = [u for u in uids if u not in chosen]
        if unused:
            tq.kv_clear(keys=unused, partition_id="train")
        tq.kv_put(key=f"step{step}-pool-{uuid.uuid4().hex}", partition_id=METRICS_PARTITION,
                  tag={k: float(v) for k, v in choice.metrics.items()})
        logger.info("TRACE step %d: chose %d roots from a pool of %d", step, len(chosen), len(uids))
        return tu.index_select_tensor_dict(prompts, [i for i, u in enumerate(uids) if u in chosen])
