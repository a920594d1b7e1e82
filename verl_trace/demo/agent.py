"""The agent in this process, for the demo's own evaluator (``evaluate``): verl's agent loop
(``TraceToolAgentLoop`` through ``TreeRolloutRunner``) over the in-process engine
(``HFLLMClient``), the real ``SearchTool`` over HTTP and the qa_em reward, configured like the
RL job's rollout workers (the same tool config, episode limits and reward), so its greedy chains
are the ones verl's validation generates (tests/test_demo_job.py compares the two).

All runs share one asyncio event loop (:meth:`SearchAgent.run`), so the engine's batching task
and the search tool's HTTP pool live across calls; :meth:`SearchAgent.close` ends both.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Sequence
from typing import Any

import numpy as np

from ..allocation import Budget
from ..config import BudgetConfig, TraceConfig
from ..rewards import qa_em
from ..rollout import HFLLMClient, StepResult, TreeRolloutRunner, build_planner, compute_score_reward
from ..tools.search_tool import close_shared_sessions
from .demonstrations import MAX_CONCURRENCY, make_search_tool
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
                                        hf_model_type="qwen2", max_concurrency=MAX_CONCURRENCY,
                                        run_timeout=120.0)
        self._loop = asyncio.new_event_loop()

    def run(self, coro: Coroutine) -> Any:
        return self._loop.run_until_complete(coro)

    def chains(self, questions: Sequence[Question], temperature: float, uid_prefix: str = "eval-") -> StepResult:
        """One plain chain per question (the uniform allocator, one leaf per root)."""
        cfg = TraceConfig(allocator="uniform", max_turns=self.settings.task.max_turns,
                          budget=BudgetConfig(leaves_per_prompt=1, min_leaves_per_root=1))
        planner = build_planner(cfg, n_roots=len(questions), budget=Budget(leaves=len(questions)),
                                max_turns=self.settings.task.max_turns, rng=np.random.default_rng(self.settings.seed))
        prompts = [q.prompt(f"{uid_prefix}{i}") for i, q in enumerate(questions)]
        sampling = {"temperature": temperature, "top_p": 1.0, "top_k": -1, "logprobs": True}
        return self.run(self.runner.run_step(planner, prompts, sampling))

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
