"""BFCL functions as verl tools: one ``BfclFunctionTool`` per function, all backed by the
trajectory's own :class:`~.env.BfclEnv`.

The tool YAML lists every function of the eight simulator classes (``tool_config()`` writes it;
``recipes/bfcl/config/tool_config/bfcl_tool_config.yaml`` is its output), each entry only naming
the function; the schema is built from BFCL's doc at load time. Each dataset row narrows the set to
its entry's classes with verl's per-sample ``extra_info.tool_selection`` and carries the scenario in
``extra_info.tools_kwargs[SCENARIO_KEY]``::

    {"id": "multi_turn_base_0", "initial_config": "<JSON>", "involved_classes": [...], "long_context": false}

The first call of a trajectory builds the environment from it into ``tool_state(agent_data)``; every
call is recorded as ``[user_turn, assistant_message, "name(k=v)"]`` in
``agent_data.extra_fields[CALLS_KEY]``, which the reward (``verl_trace.rewards.bfcl``) re-executes
with BFCL's checker.
"""

from __future__ import annotations

import contextlib
import io
import json
from typing import Any

from verl.tools.base_tool import BaseTool
from verl.tools.schemas import OpenAIFunctionToolSchema, ToolResponse

from ...rollout.tool_state import tool_state
from . import package
from .env import BfclEnv, call_string
from .schemas import openai_schema

SCENARIO_KEY = "bfcl_scenario"  # extra_info.tools_kwargs[SCENARIO_KEY]
CALLS_KEY = "bfcl_calls"  # extra_fields[CALLS_KEY]: [[user_turn, assistant_message, call], ...]
ENV_KEY = "bfcl_env"  # tool_state(agent_data)[ENV_KEY]


def tool_config() -> dict[str, Any]:
    """The verl tool YAML (as a mapping) with one entry per BFCL function of the eight classes."""
    return {
        "tools": [
            {"class_name": f"{BfclFunctionTool.__module__}.{BfclFunctionTool.__qualname__}",
             "config": {"type": "native", "function": name}}
            for name in package.function_index()
        ]
    }


def scenario(entry: dict[str, Any]) -> dict[str, Any]:
    """What a row carries for the environment (``extra_info.tools_kwargs[SCENARIO_KEY]``)."""
    return {
        "id": entry["id"],
        "initial_config": json.dumps(entry.get("initial_config", {})),
        "involved_classes": list(entry["involved_classes"]),
        "long_context": "long_context" in package.category_of(entry["id"]),
    }


def environment(scn: dict[str, Any]) -> BfclEnv:
    return BfclEnv(json.loads(scn["initial_config"]), list(scn["involved_classes"]), bool(scn["long_context"]))


def _count(messages: list[dict[str, Any]], role: str) -> int:
    return sum(1 for m in messages if m.get("role") == role)


class BfclFunctionTool(BaseTool):
    def __init__(self, config: dict, tool_schema: OpenAIFunctionToolSchema | None = None):
        name = (config or {}).get("function")
        index = package.function_index()
        if name not in index:
            raise ValueError(f"BfclFunctionTool config.function must name a BFCL function, got {name!r}")
        self.bfcl_class = index[name][0]
        with contextlib.redirect_stdout(io.StringIO()):  # BaseTool prints its schema
            super().__init__(config, tool_schema)

    def get_openai_tool_schema(self) -> OpenAIFunctionToolSchema:
        return OpenAIFunctionToolSchema.model_validate(openai_schema(package.function_index()[self.config["function"]][1]))

    async def execute(self, instance_id: str, parameters: dict[str, Any], **kwargs: Any) -> tuple[ToolResponse, float, dict]:
        agent_data = kwargs.get("agent_data")
        scn = None if agent_data is None else (agent_data.tools_kwargs or {}).get(SCENARIO_KEY)
        if scn is None:
            raise ValueError(f"no BFCL scenario: the row needs extra_info.tools_kwargs[{SCENARIO_KEY!r}]")
        state = tool_state(agent_data)
        if ENV_KEY not in state:
            state[ENV_KEY] = environment(scn)
        # Synchronous from here on: parallel calls of one step run in the order they were parsed.
        text = state[ENV_KEY].execute(self.name, parameters)
        turn = _count(agent_data.messages, "user") - 1
        step = _count(agent_data.messages, "assistant")
        agent_data.extra_fields.setdefault(CALLS_KEY, []).append([turn, step, call_string(self.name, parameters)])
        return ToolResponse(text=text), 0.0, {}
