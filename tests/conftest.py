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
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from hypothesis import settings

from verl_trace.tree import LeafStatus, RolloutTree

# No per-example time limit: on 2 shared cores a trivial example took 319 ms once (hypothesis'
# default deadline is 200 ms), which measures the machine's load, not the code.
settings.register_profile("shared-cpu", deadline=None)
settings.load_profile("shared-cpu")


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


def _fault_tools():
    from verl.tools.base_tool import BaseTool
    from verl.tools.schemas import ToolResponse

    class BrokenTool(BaseTool):
        async def execute(self, instance_id, parameters, **kwargs):
            raise ConnectionError("backend unreachable")

    class SlowTool(BaseTool):
        async def execute(self, instance_id, parameters, **kwargs):
            await asyncio.sleep(30)
            return ToolResponse(text="too late"), 0.0, {}

    return BrokenTool, SlowTool


def make_tool(cls, name: str = "calculator"):
    from verl.tools.schemas import OpenAIFunctionToolSchema

    from verl_trace.testing.arithmetic import tool_schema

    with contextlib.redirect_stdout(io.StringIO()):  # BaseTool prints its schema
        return cls(config={"type": "native"}, tool_schema=OpenAIFunctionToolSchema.model_validate(tool_schema(name)))


@pytest.fixture(scope="session")
def tokenizer():
    from verl_trace.testing.tiny import build_tokenizer

    return build_tokenizer(CORPUS, vocab_size=512)


@pytest.fixture(scope="session")
def tiny_model(tokenizer):
    from verl_trace.testing.tiny import build_model

    return build_model(tokenizer, hidden=64, layers=2, heads=2, kv_heads=1, seed=0)


@pytest.fixture(scope="session")
def rollout_kit(tokenizer):
    """Helpers for the rollout tests (see the module docstring); the arithmetic task itself is
    ``verl_trace.testing.arithmetic`` (Ray workers import it too)."""
    from verl_trace.rollout import compute_score_reward
    from verl_trace.testing import arithmetic

    broken, slow = _fault_tools()
    return SimpleNamespace(
        make_config=make_config,
        make_tool=make_tool,
        CalculatorTool=arithmetic.CalculatorTool,
        BrokenTool=broken,
        SlowTool=slow,
        task_row=arithmetic.task_row,
        call_text=arithmetic.call_text,
        arithmetic_policy=arithmetic.arithmetic_policy,
        arithmetic_reward=compute_score_reward(arithmetic.compute_score, tokenizer),
        operands=arithmetic.operands,
        last_tool_result=arithmetic.last_tool_result,
    )
