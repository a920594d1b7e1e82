"""tool -> server -> observation -> reward, inside verl's real ToolAgentLoop and NaiveRewardManager.

The policy is scripted (mechanics, not learning): it issues the gold chain's queries as real
hermes ``<tool_call>`` text, then answers with the chain's final entity only if that entity is in
the last observation it was shown. Whether it gives up early is drawn from a seeded RNG per
question, so the batch has both outcomes and each reward is known in advance.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import signal

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from verl import DataProto
from verl.experimental.agent_loop.agent_loop import DictConfigWrap, ToolListWrap
from verl.experimental.agent_loop.tool_agent_loop import ToolAgentLoop
from verl.experimental.reward_loop.reward_manager.naive import NaiveRewardManager
from verl.tools.tool_registry import load_all_tools
from verl.trainer.ppo.reward import get_custom_reward_fn
from verl.utils.dataset.rl_dataset import RLHFDataset
from verl.workers.rollout.replica import TokenOutput

from verl_trace.testing.tiny import build_tokenizer
from verl_trace.tools.search_tool import close_shared_sessions

pytestmark = pytest.mark.slow

SEED = 0
GIVE_UP = 0.3
CONFIG = OmegaConf.create({
    "actor_rollout_ref": {"rollout": {
        "prompt_length": 2048, "response_length": 2048, "full_determinism": False,
        "multi_turn": {"format": "hermes", "max_user_turns": 5, "max_assistant_turns": 5, "max_parallel_calls": 1,
                       "max_tool_response_length": 4096, "tool_response_truncate_side": "right"}}},
    "data": {"apply_chat_template_kwargs": {}},
    "reward": {"custom_reward_function": {"path": "pkg://verl_trace.rewards.qa_em", "name": "compute_score"}},
})


class ScriptedSearchPolicy:
    """An LLM client with verl's ``generate`` interface that follows a question's gold search chain."""

    def __init__(self, tokenizer, records: list[dict], seed: int):
        self.tokenizer = tokenizer
        self.records = {r["question"]: r for r in records}
        self.seed = seed

    def stop_after(self, question: str) -> int:
        """How many searches it makes before answering (fewer than the chain needs = giving up)."""
        rng = random.Random(f"{self.seed}:{question}")
        hops = len(self.records[question]["metadata"]["chain"])
        return rng.randrange(hops) if rng.random() < GIVE_UP else hops

    async def generate(self, request_id, *, prompt_ids, sampling_params, **kwargs) -> TokenOutput:
        text = self.tokenizer.decode(prompt_ids)
        question = re.search(r"Question: (.*?)<\|im_end\|>", text).group(1)
        chain = self.records[question]["metadata"]["chain"]
        observations = text.split("<|im_start|>tool\n")[1:]
        done = len(observations)
        if done < self.stop_after(question):
            call = {"name": "search", "arguments": {"query_list": [chain[done]["query"]]}}
            out = f"<think>I need {chain[done]['query']}.</think>\n<tool_call>{json.dumps(call)}</tool_call>"
        else:
            final = chain[-1]["finds"]
            seen = done == len(chain) and final in observations[-1]
            out = f"<think>Done.</think>\n<answer>{final if seen else 'unknown'}</answer>"
        ids = self.tokenizer.encode(out, add_special_tokens=False) + [self.tokenizer.eos_token_id]
        return TokenOutput(token_ids=ids, log_probs=[-0.5] * len(ids))


@pytest.fixture(scope="module")
def rows(prepare):
    return prepare.convert([prepare.MINI_DIR / "test.jsonl"], "test", progress=False)


@pytest.fixture(scope="module")
def tokenizer(rows, mini_corpus_rows, prepare):
    texts = [d["contents"] for d in mini_corpus_rows] + [r["prompt"][-1]["content"] for r in rows]
    return build_tokenizer(texts, vocab_size=1024)


async def rollout_and_score(rows, records, tokenizer, tools) -> list[tuple]:
    policy = ScriptedSearchPolicy(tokenizer, records, SEED)
    reward = NaiveRewardManager(CONFIG, tokenizer, get_custom_reward_fn(CONFIG))

    async def one(row):
        loop = ToolAgentLoop(trainer_config=DictConfigWrap(CONFIG), server_manager=policy, tokenizer=tokenizer,
                             processor=None, dataset_cls=RLHFDataset, data_config=DictConfigWrap(CONFIG.data),
                             hf_model_type="qwen2", tools=ToolListWrap(tools))
        out = await loop.run({"temperature": 1.0}, raw_prompt=row["prompt"],
                             tools_kwargs=row["extra_info"]["tools_kwargs"], extra_info=row["extra_info"])
        response = torch.tensor(out.response_ids)[None]
        data = DataProto.from_dict(
            tensors={"prompts": torch.tensor(out.prompt_ids)[None], "responses": response,
                     "attention_mask": torch.ones(1, len(out.prompt_ids) + response.shape[1], dtype=torch.long)},
            non_tensors={"data_source": np.array([row["data_source"]], dtype=object),
                         "reward_model": np.array([row["reward_model"]], dtype=object),
                         "extra_info": np.array([dict(row["extra_info"])], dtype=object)})
        return out, await reward.run_single(data)

    try:
        return await asyncio.gather(*(one(row) for row in rows))
    finally:
        await close_shared_sessions()


def tools_for(url: str, monkeypatch) -> list:
    monkeypatch.setenv("RETRIEVAL_URL", f"{url}/retrieve")
    from pathlib import Path

    return load_all_tools(str(Path(__file__).resolve().parents[2] / "recipes/search_r1/config/tool_config/search_tool_config.yaml"), None)


def observation_text(out, tokenizer) -> str:
    """The tokens the loop masked out (mask 0) are the tool turns; decode them."""
    ids = [t for t, m in zip(out.response_ids, out.response_mask) if m == 0]
    return tokenizer.decode(ids)


def test_search_round_trip_in_tool_agent_loop(server, rows, mini_records, tokenizer, monkeypatch):
    batch = rows[:24]
    results = asyncio.run(rollout_and_score(batch, mini_records, tokenizer, tools_for(server.url, monkeypatch)))
    policy = ScriptedSearchPolicy(tokenizer, mini_records, SEED)
    outcomes = []
    for row, (out, scored) in zip(batch, results):
        question = row["extra_info"]["question"]
        chain = row["extra_info"]["gold_chain"]
        searches = policy.stop_after(question)
        expected = float(searches == len(chain))
        assert scored["reward_score"] == expected, (question, scored)
        assert scored["reward_extra_info"]["format_ok"] == 1.0
        assert out.num_turns == 2 * searches + 2 and out.extra_fields.get("search_calls", 0) == searches
        assert out.extra_fields.get("search_errors", 0) == 0
        observed = observation_text(out, tokenizer)
        assert observed.count("Doc 1(Title: ") == searches
        for hop in chain[:searches]:
            assert f'Doc 1(Title: "{hop["query"]}")' in observed and hop["finds"] in observed
        assert tokenizer.decode([t for t, m in zip(out.response_ids, out.response_mask) if m == 1]).count(
            "<tool_call>") == searches
        outcomes.append(expected)
    assert 0 < sum(outcomes) < len(outcomes)  # the seeded policy produced both rewards


def test_dead_server_gives_error_observations_and_the_rollout_finishes(start_server, rows, mini_records, tokenizer,
                                                                        monkeypatch):
    proc = start_server()
    proc.signal(signal.SIGKILL)
    proc.proc.wait(timeout=10)
    policy = ScriptedSearchPolicy(tokenizer, mini_records, SEED)
    batch = [r for r in rows if policy.stop_after(r["extra_info"]["question"]) > 0][:6]
    tools = tools_for(proc.url, monkeypatch)
    for tool in tools:  # fail fast: this test is about the error path, not the backoff schedule
        tool.settings = tool.settings.model_copy(update={"backoff": 0.01, "max_retries": 1})
    results = asyncio.run(rollout_and_score(batch, mini_records, tokenizer, tools))
    for row, (out, scored) in zip(batch, results):
        searches = policy.stop_after(row["extra_info"]["question"])
        assert scored["reward_score"] == 0.0 and scored["reward_extra_info"]["has_answer"] == 1.0
        assert out.extra_fields["search_errors"] == out.extra_fields.get("search_calls", 0) == searches
        assert observation_text(out, tokenizer).count("Search error: the retrieval service failed") == searches
