"""Math with a Python tool as a :class:`~.base.Task`.

The mini version generates arithmetic word problems with 3-4 digit numbers and two or three
operations, so a small model cannot answer them without running code; the answer is an integer,
checked by ``verl_trace.rewards.math_boxed``. The teacher writes the program (one ``python`` call),
reads the printed result and answers ``\\boxed{result}``; with ``mistake_rate`` it sometimes writes
a wrong operator or answers without running the code.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from typing import Any

from ..rewards import math_boxed
from ..tools.python_tool import DEFAULT_SCHEMA, PythonTool
from .base import Task

SYSTEM = (
    "Solve the problem. You can run Python with the `python` tool (print what you need to see). "
    "Give the final answer as \\boxed{answer}."
)
ROLLOUT = {"multi_turn": {"max_assistant_turns": 4, "max_parallel_calls": 1}}
_TOOL = re.compile(r"<\|im_start\|>tool\n(.*?)<\|im_end\|>", re.S)
_USER = re.compile(r"<\|im_start\|>user\n(.*?)<\|im_end\|>", re.S)


@dataclass(frozen=True)
class Problem:
    question: str
    expression: str  # Python that computes the answer
    answer: int


# (question template, expression template); a, b, c are drawn so every answer is a positive integer
TEMPLATES = (
    ("A warehouse holds {a} crates with {b} bolts in each. {c} bolts are shipped out. How many bolts are left?",
     "{a} * {b} - {c}"),
    ("A train covers {a} km on each of {b} days and then {c} km more. How many km does it cover in total?",
     "{a} * {b} + {c}"),
    ("A factory makes {a} parts per hour, {b} hours a day, for {c} days. How many parts does it make?",
     "{a} * {b} * {c}"),
    ("{ab} coins are shared equally by {a} players; then each player spends {c} coins. How many coins does each "
     "player have left?", "{ab} // {a} - {c}"),
)


def generate(n: int, seed: int) -> list[Problem]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        q, e = rng.choice(TEMPLATES)
        a, b = rng.randint(101, 989), rng.randint(101, 989)
        c = rng.randint(11, 99)
        values = {"a": a, "b": b, "c": c, "ab": a * b}
        expr = e.format(**values)
        out.append(Problem(q.format(**values), expr, int(eval(expr))))  # our own template, not model text
    return out


def row(question: str, answer: str, split: str, index: int, source: str) -> dict[str, Any]:
    """One problem as a verl dataset row (parquet layout)."""
    return {
        "data_source": source,
        "prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": str(answer)},
        "extra_info": {"split": split, "index": index},
    }


def mini_rows(split: str, n: int | None = None) -> list[dict[str, Any]]:
    count, seed = {"train": (64, 0), "val": (32, 1)}[split]
    return [row(p.question, str(p.answer), split, i, "math_tool_arith") for i, p in enumerate(generate(n or count, seed))]


def code_call(code: str) -> str:
    return f"<tool_call>{json.dumps({'name': 'python', 'arguments': {'code': code}})}</tool_call>"


class MathTeacher:
    def __init__(self, problems: list[Problem], seed: int = 0, mistake_rate: float = 0.0):
        self.by_question = {p.question: p for p in problems}
        self.seed, self.mistake_rate = seed, mistake_rate

    def __call__(self, call: Any) -> str:
        users = _USER.findall(call.text)
        problem = self.by_question.get(users[0]) if users else None
        if problem is None:
            raise ValueError("math teacher: the prompt is not one of its problems")
        rng = random.Random(f"{self.seed}|{call.request_id}|{call.turn}")
        outputs = _TOOL.findall(call.text)
        if not outputs:
            if rng.random() < self.mistake_rate / 2:  # guesses without the tool
                return f"The answer is \\boxed{{{problem.answer + rng.randint(1, 99)}}}"
            expr = problem.expression
            if rng.random() < self.mistake_rate:
                expr = expr.replace("-", "+", 1) if "-" in expr else expr.replace("*", "+", 1)
            return code_call(f"print({expr})")
        result = outputs[-1].strip().splitlines()[-1] if outputs[-1].strip() else "?"
        return f"The program printed {result}, so the answer is \\boxed{{{result}}}"


def tool_config() -> dict[str, Any]:
    return {"tools": [{"class_name": f"{PythonTool.__module__}.{PythonTool.__qualname__}",
                       "config": {"type": "native", "max_concurrency": 2,
                                  "limits": {"wall_s": 10, "cpu_s": 5, "memory_mb": 1024}},
                       "tool_schema": DEFAULT_SCHEMA}]}


def task() -> Task:
    problems = generate(64, 0) + generate(32, 1)
    return Task(
        name="math",
        tool_config=tool_config(),
        reward_path="pkg://verl_trace.rewards.math_boxed",
        reward_name="compute_score",
        compute_score=math_boxed.compute_score,
        splits={"train": mini_rows("train"), "val": mini_rows("val")},
        make_teacher=lambda seed=0, mistake_rate=0.0: MathTeacher(problems, seed, mistake_rate),
        rollout=ROLLOUT,
    )
