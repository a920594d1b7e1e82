"""BFCL v4 multi-turn function calling as a :class:`~.base.Task`.

Rows: the system prompt and the entry's first user turn in ``prompt``; the later user turns in
``extra_info.user_turns`` (``trace_agent`` delivers each one when the model ends its turn without a
tool call); the entry's functions in ``extra_info.tool_selection``; the scenario in
``extra_info.tools_kwargs``; the ground truth (per user turn) as JSON. The mini version is a fixed
set of short entries covering all eight simulator classes, base and miss_param.

The teacher replays BFCL's ground truth one call per generation and ends each user turn with a
short reply; with ``mistake_rate`` it sometimes corrupts an argument or ends a turn early.
"""

from __future__ import annotations

import json
import random
import re
from functools import cache
from typing import Any

from ..rewards import bfcl as bfcl_reward
from ..tools.bfcl import SCENARIO_KEY, BfclEnv, environment, package, parse_call, scenario, tool_config
from .base import Task

SYSTEM = (
    "You are an assistant that completes the user's requests by calling the functions you are given. "
    "Call functions when a request needs them, one or more per message. If a request lacks a value that a "
    "function requires, ask the user for it instead of guessing. When the current request is done, reply "
    "to the user without a function call."
)
# Short entries that together use all eight simulator classes (multi_turn_base) and three with a
# turn that lacks a parameter (multi_turn_miss_param: the model must ask, not call).
MINI_TRAIN = ("multi_turn_base_50", "multi_turn_base_100", "multi_turn_base_11", "multi_turn_base_144",
              "multi_turn_base_177", "multi_turn_base_169", "multi_turn_base_45", "multi_turn_miss_param_139")
MINI_VAL = ("multi_turn_base_182", "multi_turn_base_13", "multi_turn_miss_param_50")
ROLLOUT = {"multi_turn": {"max_assistant_turns": 12, "max_user_turns": 0, "max_parallel_calls": 4}}

_USER = re.compile(r"<\|im_start\|>user\n(.*?)<\|im_end\|>", re.S)


def entry(entry_id: str) -> tuple[dict[str, Any], list[list[str]]]:
    category = package.category_of(entry_id)
    found = next((e for e in package.load_entries(category) if e["id"] == entry_id), None)
    if found is None:
        raise KeyError(f"no BFCL entry {entry_id!r} in {category}")
    return found, package.load_ground_truth(category)[entry_id]


def row(e: dict[str, Any], ground_truth: list[list[str]], split: str, index: int) -> dict[str, Any]:
    """One entry as a verl dataset row (parquet layout)."""
    first, *later = e["question"]
    if not first or any(not t for t in later):
        raise ValueError(f"{e['id']}: a user turn without a message (miss_func layout) is not supported")
    functions = [d["name"] for cls in e["involved_classes"] for d in package.function_docs(cls)]
    return {
        "data_source": f"bfcl_{package.category_of(e['id'])}",
        "prompt": [{"role": "system", "content": SYSTEM}, *first],
        "ability": "function_calling",
        "reward_model": {"style": "rule", "ground_truth": json.dumps(ground_truth)},
        "extra_info": {
            "split": split,
            "index": index,
            "bfcl_id": e["id"],
            "user_turns": [list(t) for t in later],
            "tool_selection": functions,
            "tools_kwargs": {SCENARIO_KEY: scenario(e)},
        },
    }


def mini_rows(split: str) -> list[dict[str, Any]]:
    ids = {"train": MINI_TRAIN, "val": MINI_VAL}[split]
    return [row(*entry(i), split, k) for k, i in enumerate(ids)]


def call_text(name: str, arguments: dict[str, Any]) -> str:
    return f"<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"


class BfclTeacher:
    """Plays the ground truth of the entries it knows (found by their first user message)."""

    def __init__(self, entry_ids: list[str], seed: int = 0, mistake_rate: float = 0.0):
        self.seed, self.mistake_rate = seed, mistake_rate
        self.by_question: dict[str, str] = {}
        for i in entry_ids:
            e, _ = entry(i)
            self.by_question[e["question"][0][0]["content"]] = i

    @staticmethod
    @cache
    def _plan(entry_id: str) -> list[list[tuple[str, dict[str, Any]]]]:
        e, gt = entry(entry_id)
        env: BfclEnv = environment(scenario(e))  # only to bind positional arguments to names
        return [[parse_call(c, env) for c in turn] for turn in gt]

    def __call__(self, call: Any) -> str:
        users = _USER.findall(call.text)
        if not users or users[0] not in self.by_question:
            raise ValueError("BFCL teacher: the prompt's first user message is not one of its entries")
        plan = self._plan(self.by_question[users[0]])
        turn = min(len(users) - 1, len(plan) - 1)
        made = call.text.rsplit("<|im_start|>user", 1)[-1].count("<tool_call>")
        rng = random.Random(f"{self.seed}|{call.request_id}|{turn}|{made}")
        todo = plan[turn]
        if not todo:
            return "Some details are missing for this request. Could you tell me exactly what to use?"
        if made >= len(todo) or (made > 0 and rng.random() < self.mistake_rate / 2):
            return "Done."
        name, args = todo[made]
        if args and rng.random() < self.mistake_rate:
            key = rng.choice(sorted(args))
            args = {**args, key: _corrupt(args[key])}
        return call_text(name, args)


def _corrupt(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1
    if isinstance(value, str):
        return value + "s"
    return value


def task() -> Task:
    ids = list(MINI_TRAIN + MINI_VAL)
    return Task(
        name="bfcl",
        tool_config=tool_config(),
        reward_path="pkg://verl_trace.rewards.bfcl",
        reward_name="compute_score",
        compute_score=bfcl_reward.compute_score,
        splits={"train": mini_rows("train"), "val": mini_rows("val")},
        make_teacher=lambda seed=0, mistake_rate=0.0: BfclTeacher(ids, seed, mistake_rate),
        rollout=ROLLOUT,
    )
