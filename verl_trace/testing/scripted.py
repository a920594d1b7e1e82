"""A seeded scripted policy behind verl's LLM client interface.

Mechanics tests (snapshot/resume, budgets, faults) need controlled multi-turn behaviour that a
random tiny model cannot give: a tool call in turn 1, an answer in turn 2, a malformed call on
purpose. ``ScriptedPolicyClient`` asks a policy function for the next assistant text, tokenizes
it with the real tokenizer, appends EOS and applies verl's vLLM cap on ``max_tokens``, so
everything downstream (verl's agent loop, tool parser, token builder) runs for real. Logprobs and
entropy are drawn from the seeded RNG; they are placeholders, not model scores.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from verl.workers.rollout.replica import TokenOutput

from ..rollout.engine import ENTROPY_KEY, vllm_max_tokens


@dataclass
class PolicyCall:
    """What the policy sees for one generation."""

    request_id: str
    prompt_ids: list[int]
    text: str  # the running sequence decoded with special tokens
    turn: int  # assistant generations already in this conversation (ChatML: <|im_start|>assistant)
    rng: np.random.Generator
    index: int  # call number on this client


Policy = Callable[[PolicyCall], str]


class ScriptedPolicyClient:
    """``policy(call) -> text``; an exception raised by the policy surfaces as an engine error."""

    def __init__(
        self,
        tokenizer: Any,
        policy: Policy,
        *,
        prompt_length: int,
        response_length: int,
        seed: int = 0,
        delay_s: float = 0.0,
    ):
        self.tokenizer = tokenizer
        self.policy = policy
        self.prompt_length = prompt_length
        self.response_length = response_length
        self.rng = np.random.default_rng(seed)
        self.delay_s = delay_s
        self.calls: list[tuple[str, int]] = []  # (request_id, prompt length) per call
        self.seeds: list[Any] = []  # sampling_params["seed"] per call

    async def generate(self, request_id: str, *, prompt_ids: list[int], sampling_params: dict[str, Any], **kwargs: Any) -> TokenOutput:
        index = len(self.calls)
        self.calls.append((request_id, len(prompt_ids)))
        self.seeds.append(sampling_params.get("seed"))
        text = self.tokenizer.decode(prompt_ids, skip_special_tokens=False)
        turn = max(0, text.count("<|im_start|>assistant") - 1)
        if self.delay_s:
            await asyncio.sleep(self.delay_s * (1.0 + self.rng.random()))
        reply = self.policy(PolicyCall(request_id, list(prompt_ids), text, turn, self.rng, index))
        ids = self.tokenizer.encode(reply, add_special_tokens=False) + [self.tokenizer.eos_token_id]
        ids = ids[: vllm_max_tokens(len(prompt_ids), sampling_params, self.prompt_length, self.response_length)]
        logprobs = (-self.rng.exponential(0.7, len(ids))).tolist()
        return TokenOutput(
            token_ids=ids,
            log_probs=logprobs if sampling_params.get("logprobs", True) else None,
            stop_reason="completed",
            num_preempted=0,
            extra_fields={ENTROPY_KEY: float(self.rng.uniform(0.5, 2.5))},
        )
