"""The agent as the RL phase and the evaluation run it: verl's agent loop (``TraceToolAgentLoop``
through ``TreeRolloutRunner``) over the in-process engine (``HFLLMClient``, backed by the very
model being trained), the real ``SearchTool`` over HTTP and the qa_em reward.

All rollouts of a run share one asyncio event loop (:meth:`SearchAgent.run`), so the engine's
batching task and the search tool's HTTP pool live across steps; :meth:`SearchAgent.close` ends
both.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Sequence
from typing import Any

import numpy as np

from ..allocation import Budget
from ..config import BudgetConfig, TraceConfig
from ..predictor import AnchorFeaturizer, Predictor
from ..rewards import qa_em
from ..rollout import HFLLMClient, StepResult, TreeRolloutRunner, build_planner, compute_score_reward
from ..tools.search_tool import close_shared_sessions
from .demonstrations import make_search_tool
from .settings import DemoSettings, verl_config
from .world import Question


class SearchAgent:
    def __init__(self, settings: DemoSettings, tokenizer: Any, model: Any, retrieve_url: str):
        self.settings = settings
        self.tokenizer = tokenizer
        self.config = verl_config(settings.task)
        task = settings.task
        self.client = HFLLMClient(model, tokenizer, prompt_length=task.prompt_length,
                                  response_length=task.response_length, max_batch_size=settings.rl.max_batch_size,
                                  seed=settings.seed)
        self.runner = TreeRolloutRunner(self.config, self.client, tokenizer,
                                        tools=[make_search_tool(retrieve_url, task.topk)],
                                        reward_fn=compute_score_reward(qa_em.compute_score, tokenizer),
                                        hf_model_type="qwen2", max_concurrency=settings.rl.max_concurrency,
                                        run_timeout=120.0)
        self._loop = asyncio.new_event_loop()

    def run(self, coro: Coroutine) -> Any:
        return self._loop.run_until_complete(coro)

    def rollout(self, questions: Sequence[Question], trace_cfg: TraceConfig, *, n_roots: int, leaves: int,
                temperature: float, predictor: Predictor | None = None, featurizer: AnchorFeaturizer | None = None,
                rng: np.random.Generator | None = None, uid_prefix: str = "") -> StepResult:
        """One budgeted tree step over the candidate pool ``questions``."""
        planner = build_planner(trace_cfg, n_roots=n_roots, budget=Budget(leaves=leaves),
                                max_turns=self.settings.task.max_turns, predictor=predictor, featurizer=featurizer,
                                rng=rng)
        prompts = [q.prompt(f"{uid_prefix}{i}") for i, q in enumerate(questions)]
        sampling = {"temperature": temperature, "top_p": 1.0, "top_k": -1, "logprobs": True}
        return self.run(self.runner.run_step(planner, prompts, sampling))

    def chains(self, questions: Sequence[Question], temperature: float, uid_prefix: str = "eval-") -> StepResult:
        """One plain chain per question (held-out evaluation)."""
        cfg = TraceConfig(allocator="uniform", max_turns=self.settings.task.max_turns,
                          budget=BudgetConfig(leaves_per_prompt=1, min_leaves_per_root=1))
        return self.rollout(questions, cfg, n_roots=len(questions), leaves=len(questions), temperature=temperature,
                            uid_prefix=uid_prefix)

    def update_weights(self) -> None:
        """Tell the engine the weights changed (the model is shared in place; this bumps its version)."""
        self.run(self.client.update_weights())

    def close(self) -> None:
        if self._loop.is_closed():
            return
        try:
            pending = asyncio.all_tasks(self._loop)  # runs of a step cut short by Ctrl-C
            for task in pending:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.run_until_complete(close_shared_sessions())
            self._loop.run_until_complete(self.client.close())
        finally:
            self._loop.close()
