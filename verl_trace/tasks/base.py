"""A task as the rest of the project consumes it: tools, reward, data and a scripted teacher.

A :class:`Task` bundles what a trainer, a demo or a test needs to run one task family on verl:

* ``tool_config``: the verl tool YAML as a mapping (write it to a file for
  ``multi_turn.tool_config_path``; ``tools()`` builds the same tools in-process, as verl's worker does);
* ``reward``: verl's ``custom_reward_function`` (``path`` with ``pkg://``, ``name``) and the function itself;
* ``rows(split)``: verl dataset rows in the parquet layout (``prompt``, ``data_source``,
  ``reward_model.ground_truth``, ``extra_info``; ``prepare_data.py`` writes exactly these);
  ``loop_kwargs(row)`` turns one into the keyword arguments verl's RLHFDataset hands an agent
  loop (``raw_prompt``, ``tools_kwargs``, ...);
* ``teacher``: a scripted policy (``ScriptedPolicyClient``'s ``policy(call) -> text``) that plays
  the task through the real agent loop, for warm-start demonstrations; seeded, with a
  ``mistake_rate`` so demonstrations are imperfect on purpose;
* ``rollout``: the ``actor_rollout_ref.rollout`` settings the task needs (turn limits, lengths).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml


@dataclass(frozen=True)
class Task:
    name: str
    tool_config: dict[str, Any]
    reward_path: str  # verl reward.custom_reward_function.path (pkg://module)
    reward_name: str  # ... .name
    compute_score: Callable[..., Any]
    splits: Mapping[str, Sequence[dict[str, Any]]]  # split name -> rows (parquet layout)
    make_teacher: Callable[..., Callable[[Any], str]]  # (seed=0, mistake_rate=0.0) -> policy
    rollout: Mapping[str, Any] = field(default_factory=dict)  # actor_rollout_ref.rollout overrides

    def rows(self, split: str) -> list[dict[str, Any]]:
        if split not in self.splits:
            raise KeyError(f"task {self.name!r} has splits {sorted(self.splits)}, not {split!r}")
        return [dict(r) for r in self.splits[split]]

    def teacher(self, seed: int = 0, mistake_rate: float = 0.0) -> Callable[[Any], str]:
        return self.make_teacher(seed=seed, mistake_rate=mistake_rate)

    def tools(self) -> list[Any]:
        """The tool objects verl's worker would build from ``tool_config``."""
        from verl.tools.schemas import OpenAIFunctionToolSchema

        out = []
        for spec in self.tool_config["tools"]:
            module, _, cls_name = spec["class_name"].rpartition(".")
            cls = _import(module, cls_name)
            schema = spec.get("tool_schema")
            with contextlib.redirect_stdout(io.StringIO()):  # BaseTool prints its schema
                out.append(cls(config=dict(spec["config"]),
                               tool_schema=None if schema is None else OpenAIFunctionToolSchema.model_validate(schema)))
        return out

    def write_tool_config(self, path: Any) -> Any:
        with open(path, "w") as f:
            yaml.safe_dump(self.tool_config, f, sort_keys=False)
        return path


def _import(module: str, name: str) -> Any:
    import importlib

    return getattr(importlib.import_module(module), name)


def loop_kwargs(row: Mapping[str, Any]) -> dict[str, Any]:
    """A parquet-layout row as verl's RLHFDataset yields it to the agent loop."""
    extra = dict(row.get("extra_info") or {})
    return {**row, "raw_prompt": list(row["prompt"]), "extra_info": extra,
            "tools_kwargs": extra.get("tools_kwargs", {}), "index": extra.get("index", 0)}
