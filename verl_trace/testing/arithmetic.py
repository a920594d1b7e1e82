"""The arithmetic toy task: a calculator tool, its verl ``compute_score`` and a seeded scripted
policy that plays it.

Tests and CPU demos need a multi-turn tool task with a verifiable reward and nothing to download.
It lives in the package, not in a test file, because Ray actors must import it: verl's worker loads
tools by class path from a tool YAML (``multi_turn.tool_config_path``, see ``tool_config``), verl's
reward loop loads ``compute_score`` from a file path (``reward.custom_reward_function``), and a
``ScriptedPolicyClient`` carrying ``arithmetic_policy`` is pickled into every rollout worker.
"""

from __future__ import annotations

import re
from typing import Any

from verl.tools.base_tool import BaseTool
from verl.tools.schemas import ToolResponse

from .scripted import Policy, PolicyCall


def tool_schema(name: str = "calculator") -> dict[str, Any]:
    """The OpenAI function schema of the calculator (one string argument, ``expression``)."""
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": "integer arithmetic",
            "parameters": {
                "type": "object",
                "properties": {"expression": {"type": "string", "description": "e.g. 12 + 30"}},
                "required": ["expression"],
            },
        },
    }


def tool_config(name: str = "calculator") -> dict[str, Any]:
    """A verl tool YAML (``multi_turn.tool_config_path``) with the calculator, as a mapping."""
    return {
        "tools": [
            {
                "class_name": f"{CalculatorTool.__module__}.{CalculatorTool.__qualname__}",
                "config": {"type": "native"},
                "tool_schema": tool_schema(name),
            }
        ]
    }


class CalculatorTool(BaseTool):
    """Adds, subtracts or multiplies two integers; raises on anything else. Notes each call in the
    trajectory's ``extra_fields`` (per-trajectory tool state, where verl asks tools to keep it)."""

    async def execute(self, instance_id: str, parameters: dict[str, Any], **kwargs: Any):
        m = re.fullmatch(r"\s*(-?\d+)\s*([+*-])\s*(-?\d+)\s*", str(parameters.get("expression", "")))
        if m is None:
            raise ValueError(f"cannot evaluate {parameters!r}")
        a, op, b = int(m[1]), m[2], int(m[3])
        value = a + b if op == "+" else a - b if op == "-" else a * b
        agent_data = kwargs.get("agent_data")
        if agent_data is not None:
            agent_data.extra_fields.setdefault("calculator_calls", []).append(parameters["expression"])
        return ToolResponse(text=str(value)), 0.5, {}


def task_row(a: int, b: int) -> dict[str, Any]:
    """A dataset row (the columns verl's RLHFDataset yields) asking for ``a + b``."""
    return {
        "raw_prompt": [{"role": "user", "content": f"Compute {a} + {b} with the calculator."}],
        "tools_kwargs": {},
        "extra_info": {},
        "data_source": "arith",
        "reward_model": {"ground_truth": str(a + b)},
    }


def call_text(expression: str, tool: str = "calculator") -> str:
    """A hermes tool call of ``tool`` on ``expression``."""
    return f'<tool_call>{{"name": "{tool}", "arguments": {{"expression": "{expression}"}}}}</tool_call>'


def operands(text: str) -> tuple[int, int]:
    """The two numbers of the task in a conversation's text."""
    m = re.search(r"Compute (-?\d+) \+ (-?\d+)", text)
    return int(m[1]), int(m[2])


def last_tool_result(text: str) -> str | None:
    """The content of the last tool message in a ChatML conversation, if any."""
    hits = re.findall(r"<\|im_start\|>tool\n(.*?)<\|im_end\|>", text, flags=re.S)
    return hits[-1] if hits else None


def arithmetic_policy(p_call: float = 0.8, p_again: float = 0.3, p_right: float = 0.6, tool: str = "calculator") -> Policy:
    """Turn 0: call the tool (else guess). Later turns: maybe call again, else answer, right with
    probability ``p_right`` when a tool result is in view."""

    def policy(call: PolicyCall) -> str:
        a, b = operands(call.text)
        rng = call.rng
        if call.turn == 0 and rng.random() < p_call:
            return f"<think>add them</think>{call_text(f'{a} + {b}', tool)}"
        if call.turn == 1 and rng.random() < p_again:
            return call_text(f"{a} + {b}", tool)
        seen = last_tool_result(call.text)
        right = seen is not None and seen.strip().lstrip("-").isdigit() and rng.random() < p_right
        guess = int(seen) if right else a + b + int(rng.integers(1, 5))
        return f"The answer is <answer>{guess}</answer>"

    return policy


def compute_score(data_source: str, solution_str: str, ground_truth: str, extra_info: Any = None) -> float:
    """A verl ``compute_score``: 1 if the last ``<answer>`` is the ground truth, else 0."""
    answers = re.findall(r"<answer>(.*?)</answer>", solution_str)
    return float(bool(answers) and answers[-1].strip() == ground_truth)
