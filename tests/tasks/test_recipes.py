"""The two task recipes' data path: prepare_data.py output read by verl's RLHFDataset, played by
the task teachers through TraceToolAgentLoop with the tools verl loads from the recipe's tool YAML,
and scored by verl's NaiveRewardManager with the recipe's reward function (the trajectory's extra
fields reach it as verl's ``tool_extra_fields``)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from omegaconf import OmegaConf

pytest.importorskip("bfcl_eval", reason="bfcl-eval is installed by `make venv` (pip install --no-deps)")

from verl_trace.rollout import TraceToolAgentLoop  # noqa: E402
from verl_trace.tasks import get_task  # noqa: E402
from verl_trace.testing.scripted import ScriptedPolicyClient  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SP = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "logprobs": True}


def script(recipe: str):
    spec = importlib.util.spec_from_file_location(f"prepare_{recipe}", ROOT / "recipes" / recipe / "prepare_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bfcl_full_split_keeps_conversations_together(tmp_path):
    assert script("bfcl").main(["--out-dir", str(tmp_path), "--seed", "3"]) == 0
    train, val = (pq.read_table(tmp_path / f"{s}.parquet").to_pylist() for s in ("train", "val"))
    assert (len(train), len(val)) == (540, 60)
    number = lambda r: r["extra_info"]["bfcl_id"].rsplit("_", 1)[1]  # noqa: E731
    assert not {number(r) for r in train} & {number(r) for r in val}
    assert {r["data_source"] for r in val} == {"bfcl_multi_turn_base", "bfcl_multi_turn_miss_param", "bfcl_multi_turn_long_context"}
    r = train[0]
    assert r["prompt"][0]["role"] == "system" and r["prompt"][1]["role"] == "user"
    assert len(json.loads(r["reward_model"]["ground_truth"])) == 1 + len(r["extra_info"]["user_turns"])


def test_bfcl_tool_yaml_matches_the_installed_package():
    import yaml

    from verl_trace.tools.bfcl import tool_config

    committed = yaml.safe_load((ROOT / "recipes/bfcl/config/tool_config/bfcl_tool_config.yaml").read_text())
    assert committed == tool_config() and len(committed["tools"]) == 128


def test_math_prepare_reads_the_three_formats(tmp_path):
    (tmp_path / "gsm.jsonl").write_text(json.dumps({"question": "2+2?", "answer": "two and two\n#### 1,004"}) + "\n")
    (tmp_path / "math.jsonl").write_text(
        json.dumps({"problem": "Half of 1?", "solution": "It is $\\boxed{\\frac{1}{2}}$."}) + "\n"
        + json.dumps({"problem": "x?", "answer": "3"}) + "\n")
    import pyarrow as pa

    dapo = [{"prompt": [{"role": "user", "content": "Solve the following math problem step by step. The last line of your "
             "response should be of the form Answer: $Answer (without quotes) where $Answer is the answer to the problem."
             "\n\nWhat is 6*7?\n\nRemember to put your answer on its own line after \"Answer:\"."}],
             "reward_model": {"ground_truth": "42"}}]
    pq.write_table(pa.Table.from_pylist(dapo), tmp_path / "dapo.parquet")
    m = script("math_tool")
    args = ["--out-dir", str(tmp_path / "out"), "--split", "train", "--input", f"gsm8k={tmp_path / 'gsm.jsonl'}",
            "--input", f"math={tmp_path / 'math.jsonl'}", "--input", f"dapo={tmp_path / 'dapo.parquet'}"]
    assert m.main(args) == 0
    rows = pq.read_table(tmp_path / "out" / "train.parquet").to_pylist()
    assert [(r["prompt"][1]["content"], r["reward_model"]["ground_truth"]) for r in rows] == [
        ("2+2?", "1004"), ("Half of 1?", "\\frac{1}{2}"), ("x?", "3"), ("What is 6*7?", "42")]
    assert [r["extra_info"]["index"] for r in rows] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="not a gsm8k row"):
        m.main(["--out-dir", str(tmp_path / "o2"), "--input", f"gsm8k={tmp_path / 'math.jsonl'}"])


@pytest.mark.parametrize("recipe,task_name,split", [("bfcl", "bfcl", "val"), ("math_tool", "math", "test")])
def test_mini_parquet_through_verl_dataset_loop_and_reward_manager(recipe, task_name, split, tmp_path, tokenizer, rollout_kit):
    from verl.experimental.agent_loop.agent_loop import DictConfigWrap, ToolListWrap
    from verl.experimental.reward_loop.reward_manager.naive import NaiveRewardManager
    from verl.protocol import DataProto
    from verl.tools.tool_registry import load_all_tools
    from verl.trainer.ppo.reward import get_custom_reward_fn
    from verl.utils.dataset.rl_dataset import RLHFDataset

    assert script(recipe).main(["--mini", "--out-dir", str(tmp_path)]) == 0
    base = OmegaConf.load(ROOT / f"recipes/{recipe}/config/{recipe}_base.yaml")
    data_cfg = OmegaConf.create({"prompt_key": "prompt", "max_prompt_length": 32768, "filter_overlong_prompts": False,
                                 "return_raw_chat": True, "truncation": "error", "apply_chat_template_kwargs": {}})
    dataset = RLHFDataset(str(tmp_path / f"{split}.parquet"), tokenizer, data_cfg, None)
    task = get_task(task_name)
    cfg = rollout_kit.make_config(prompt_length=32768, response_length=8192, multi_turn=dict(task.rollout["multi_turn"]))
    cfg.reward = base.reward
    tools = load_all_tools(str(ROOT / base.actor_rollout_ref.rollout.multi_turn.tool_config_path), None)
    r = cfg.actor_rollout_ref.rollout

    async def one(item, reward):
        client = ScriptedPolicyClient(tokenizer, task.teacher(), prompt_length=r.prompt_length,
                                      response_length=r.response_length, seed=0)
        loop = TraceToolAgentLoop(trainer_config=DictConfigWrap(cfg), server_manager=client, tokenizer=tokenizer,
                                  processor=None, dataset_cls=RLHFDataset, data_config=DictConfigWrap(cfg.data),
                                  hf_model_type="qwen2", tools=ToolListWrap(tools))
        out = await loop.run(SP, **item)
        response = torch.tensor(out.response_ids)[None]
        data = DataProto.from_dict(
            tensors={"prompts": torch.tensor(out.prompt_ids)[None], "responses": response,
                     "attention_mask": torch.ones(1, len(out.prompt_ids) + response.shape[1], dtype=torch.long)},
            non_tensors={"data_source": np.array([item["data_source"]], dtype=object),
                         "reward_model": np.array([item["reward_model"]], dtype=object),
                         "extra_info": np.array([dict(item["extra_info"])], dtype=object),
                         "tool_extra_fields": np.array([out.extra_fields], dtype=object)})
        return (await reward.run_single(data))["reward_score"]

    items = [dataset[i] for i in range(min(3, len(dataset)))]

    async def all_items():
        reward = NaiveRewardManager(cfg, tokenizer, get_custom_reward_fn(cfg))  # binds the running loop
        return await asyncio.gather(*(one(item, reward) for item in items))

    assert asyncio.run(all_items()) == [1.0] * len(items)
