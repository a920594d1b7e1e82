"""Shared fixtures. Test modules cannot import each other or this file (``--import-mode=importlib``;
verl also installs a top-level package named ``tests``), so helpers are handed out as fixtures:

* ``make_world`` / ``world``: a seeded random agent environment for allocator and advantage tests;
* ``tokenizer``, ``tiny_model``, ``rollout_kit``: a real tokenizer and tiny model built once per
  session, verl configs, real ``BaseTool`` subclasses and the arithmetic task the scripted policy
  plays, for the rollout tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from verl_trace.tree import LeafStatus, RolloutTree


def _sigmoid(z: float) -> float:
    return float(1.0 / (1.0 + np.exp(-z)))


class RandomWorld:
    """A minimal seeded stand-in for an agent environment: every prompt has a latent logit, every
    turn moves it by a random step, and a leaf succeeds with the final turn's probability. Nodes
    carry noisy features and the true probability, like the simulator's."""

    def __init__(self, seed: int = 0, max_turns: int = 4, stop_prob: float = 0.3, fail_prob: float = 0.0):
        self.rng = np.random.default_rng(seed)
        self.max_turns, self.stop_prob, self.fail_prob = max_turns, stop_prob, fail_prob

    def pool(self, n: int, prefix: str = "u") -> list[RolloutTree]:
        out = []
        for i in range(n):
            t = RolloutTree(f"{prefix}{i}", [1, 2, 3], f"prompt number {i}", key=f"{prefix}-key-{i}")
            z = float(self.rng.normal(0.0, 2.5))
            t.root.meta.update(z=z, true_p=_sigmoid(z))
            t.root.features = np.array([z + self.rng.normal(), 1.0], np.float32)
            out.append(t)
        return out

    def rollout(self, tree: RolloutTree, launch) -> list[int]:
        leaves = []
        for _ in range(launch.count):
            node = launch.anchor
            if self.rng.random() < self.fail_prob:
                nid = tree.add_turn(node, [], meta={"z": tree[node].meta["z"], "true_p": tree[node].meta["true_p"]},
                                    features=tree[node].features)
                tree.finish(nid, None, LeafStatus.FAILED)
                leaves.append(nid)
                continue
            z = tree[node].meta["z"]
            while True:
                z += float(self.rng.normal(0.0, 1.0))
                n_tok = int(self.rng.integers(3, 20))
                nid = tree.add_turn(
                    node,
                    self.rng.integers(10, 400, size=n_tok).tolist(),
                    [7, 8],
                    action_logprobs=(-self.rng.random(n_tok)).tolist(),
                    text=f"turn {tree[node].depth + 1}",
                    tool_calls=1,
                    entropy=float(self.rng.random()),
                    meta={"z": z, "true_p": _sigmoid(z)},
                    features=np.array([z + self.rng.normal(), 0.0], np.float32),
                )
                node = nid
                if tree[nid].depth >= self.max_turns or self.rng.random() < self.stop_prob:
                    status = LeafStatus.TRUNCATED if tree[nid].depth >= self.max_turns else LeafStatus.OK
                    tree.finish(nid, float(self.rng.random() < _sigmoid(z)), status)
                    break
            leaves.append(node)
        return leaves


@pytest.fixture
def world() -> RandomWorld:
    return RandomWorld(seed=0)


@pytest.fixture(scope="session")
def make_world():
    return RandomWorld


# ---------------------------------------------------------------------- rollout tests
CORPUS = [
    "Compute 12 + 30 with the calculator.",
    "You are a careful assistant. Use tools when useful.",
    '<tool_call>{"name": "calculator", "arguments": {"expression": "12 + 30"}}</tool_call>',
    "The answer is <answer>42</answer>",
    "<think>I should add the numbers.</think>",
    "Error executing tool: division by zero. timed out.",
] * 8


def make_config(**rollout: Any):
    """The minimal verl config ToolAgentLoop reads (verl's full ppo_trainer composes too)."""
    from omegaconf import OmegaConf

    multi_turn = {
        "format": "hermes",
        "max_user_turns": 4,
        "max_assistant_turns": 3,
        "max_parallel_calls": 2,
        "max_tool_response_length": 256,
        "tool_response_truncate_side": "middle",
    }
    multi_turn.update(rollout.pop("multi_turn", {}))
    cfg = {"prompt_length": 512, "response_length": 256, "full_determinism": False, "multi_turn": multi_turn}
    cfg.update(rollout)
    return OmegaConf.create({"actor_rollout_ref": {"rollout": cfg}, "data": {"apply_chat_template_kwargs": {}}})


def _schema(name: str, description: str):
    from verl.tools.schemas import OpenAIFunctionToolSchema

    return OpenAIFunctionToolSchema.model_validate(
        {
            "type": "function",
            "function": {
                "name": name,
                "description": description,
                "parameters": {
                    "type": "object",
                    "properties": {"expression": {"type": "string", "description": "e.g. 12 + 30"}},
                    "required": ["expression"],
                },
            },
        }
    )


def _tool_classes():
    from verl.tools.base_tool import BaseTool
    from verl.tools.schemas import ToolResponse

    class CalculatorTool(BaseTool):
        """Adds, subtracts or multiplies two integers; raises on anything else. Notes each call in
        the trajectory's ``extra_fields`` (per-trajectory tool state, as verl asks tools to keep it)."""

        async def execute(self, instance_id, parameters, **kwargs):
            m = re.fullmatch(r"\s*(-?\d+)\s*([+*-])\s*(-?\d+)\s*", str(parameters.get("expression", "")))
            if m is None:
                raise ValueError(f"cannot evaluate {parameters!r}")
            a, op, b = int(m[1]), m[2], int(m[3])
            value = a + b if op == "+" else a - b if op == "-" else a * b
            agent_data = kwargs.get("agent_data")
            if agent_data is not None:
                agent_data.extra_fields.setdefault("calculator_calls", []).append(parameters["expression"])
            return ToolResponse(text=str(value)), 0.5, {}

    class BrokenTool(BaseTool):
        async def execute(self, instance_id, parameters, **kwargs):
            raise ConnectionError("backend unreachable")

    class SlowTool(BaseTool):
        async def execute(self, instance_id, parameters, **kwargs):
            await asyncio.sleep(30)
            return ToolResponse(text="too late"), 0.0, {}

    return CalculatorTool, BrokenTool, SlowTool


def make_tool(cls, name: str = "calculator"):
    with contextlib.redirect_stdout(io.StringIO()):  # BaseTool prints its schema
        return cls(config={"type": "native"}, tool_schema=_schema(name, "integer arithmetic"))


# ---------------------------------------------------------------------- the arithmetic task
def task_row(a: int, b: int) -> dict[str, Any]:
    return {
        "raw_prompt": [{"role": "user", "content": f"Compute {a} + {b} with the calculator."}],
        "tools_kwargs": {},
        "extra_info": {},
        "data_source": "arith",
        "reward_model": {"ground_truth": str(a + b)},
    }


def _operands(text: str) -> tuple[int, int]:
    m = re.search(r"Compute (-?\d+) \+ (-?\d+)", text)
    return int(m[1]), int(m[2])


def _last_tool_result(text: str) -> str | None:
    hits = re.findall(r"<\|im_start\|>tool\n(.*?)<\|im_end\|>", text, flags=re.S)
    return hits[-1] if hits else None


def call_text(expression: str, tool: str = "calculator") -> str:
    return f'<tool_call>{{"name": "{tool}", "arguments": {{"expression": "{expression}"}}}}</tool_call>'


def arithmetic_policy(p_call: float = 0.8, p_again: float = 0.3, p_right: float = 0.6, tool: str = "calculator"):
    """Turn 0: call the tool (else guess). Later turns: maybe call again, else answer, right with
    probability ``p_right`` when a tool result is in view."""

    def policy(call) -> str:
        a, b = _operands(call.text)
        rng = call.rng
        if call.turn == 0 and rng.random() < p_call:
            return f"<think>add them</think>{call_text(f'{a} + {b}', tool)}"
        if call.turn == 1 and rng.random() < p_again:
            return call_text(f"{a} + {b}", tool)
        seen = _last_tool_result(call.text)
        right = seen is not None and seen.strip().lstrip("-").isdigit() and rng.random() < p_right
        guess = int(seen) if right else a + b + int(rng.integers(1, 5))
        return f"The answer is <answer>{guess}</answer>"

    return policy


def arithmetic_score(data_source, solution_str, ground_truth, extra_info=None) -> float:
    """A verl-style ``compute_score``: 1 if the last <answer> is the ground truth."""
    answers = re.findall(r"<answer>(.*?)</answer>", solution_str)
    return float(bool(answers) and answers[-1].strip() == ground_truth)


@pytest.fixture(scope="session")
def tokenizer():
    from verl_trace.tiny import build_tokenizer

    return build_tokenizer(CORPUS, vocab_size=512)


@pytest.fixture(scope="session")
def tiny_model(tokenizer):
    from verl_trace.tiny import build_model

    return build_model(tokenizer, hidden=64, layers=2, heads=2, kv_heads=1, seed=0)


@pytest.fixture(scope="session")
def rollout_kit(tokenizer):
    """Helpers for the rollout tests (see the module docstring)."""
    from verl_trace.rollout import compute_score_reward

    calculator, broken, slow = _tool_classes()
    return SimpleNamespace(
        make_config=make_config,
        make_tool=make_tool,
        CalculatorTool=calculator,
        BrokenTool=broken,
        SlowTool=slow,
        task_row=task_row,
        call_text=call_text,
        arithmetic_policy=arithmetic_policy,
        arithmetic_reward=compute_score_reward(arithmetic_score, tokenizer),
        operands=_operands,
        last_tool_result=_last_tool_result,
    )
