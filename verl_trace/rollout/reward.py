"""Terminal rewards for tree leaves.

A reward function gets the leaf's verl trajectory (``AgentLoopOutput``, response cut to
``response_length``) and its dataset row, and returns a score, or a dict with ``score`` plus extra
info (verl's ``compute_score`` convention). The runner uses it only when the agent loop did not
set ``reward_score`` itself.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from verl.experimental.agent_loop.agent_loop import AgentLoopOutput

RewardFn = Callable[[AgentLoopOutput, Mapping[str, Any]], Awaitable[float | dict[str, Any]]]


def compute_score_reward(compute_score: Callable[..., Any], tokenizer: Any) -> RewardFn:
    """Adapt a verl ``compute_score(data_source, solution_str, ground_truth, extra_info)`` (sync or
    async, e.g. ``verl.utils.reward_score.default_compute_score`` or a custom reward function)
    the way verl's ``NaiveRewardManager`` calls it: the whole response, tool tokens included,
    decoded without special tokens; the ground truth from ``row['reward_model']``; ``extra_info``
    is the row's updated with the trajectory's ``extra_fields`` (verl's ``tool_extra_fields``)."""

    async def reward(output: AgentLoopOutput, row: Mapping[str, Any]) -> float | dict[str, Any]:
        text = tokenizer.decode(output.response_ids, skip_special_tokens=True)
        extra_info = dict(row.get("extra_info") or {})
        extra_info.update(output.extra_fields)  # verl's reward managers add the trajectory's fields too
        extra_info["num_turns"] = output.num_turns
        kwargs = {
            "data_source": row.get("data_source"),
            "solution_str": text,
            "ground_truth": (row.get("reward_model") or {}).get("ground_truth"),
            "extra_info": extra_info,
        }
        if inspect.iscoroutinefunction(compute_score):
            return await compute_score(**kwargs)
        return await asyncio.get_running_loop().run_in_executor(None, lambda: compute_score(**kwargs))

    return reward


def split_score(result: float | dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """(score, extra info) from a reward function's result."""
    if isinstance(result, Mapping):
        if "score" not in result:
            raise ValueError(f"reward dict needs a 'score' entry, got keys {sorted(result)}")
        return float(result["score"]), {k: v for k, v in result.items() if k != "score"}
    return float(result), {}
