"""Named regimes of the learning simulator: overrides of the default settings (``Settings``)."""

from __future__ import annotations

from typing import Any

REGIMES: dict[str, dict[str, Any]] = {
    # A third hard, two fifths in between, a quarter easy (the allocation simulator's default mix).
    "default": {},
    # Mostly hard prompts: most GRPO groups are all failures.
    "hard": {"task": {"difficulty": [{"weight": 0.6, "mean": -4.5, "std": 1.5}, {"weight": 0.3, "mean": -1.0, "std": 1.5},
                                     {"weight": 0.1, "mean": 2.0, "std": 1.5}]}},
    # Mostly easy prompts: most GRPO groups are all successes.
    "easy": {"task": {"difficulty": [{"weight": 0.15, "mean": -3.0, "std": 1.5}, {"weight": 0.35, "mean": 0.5, "std": 1.5},
                                     {"weight": 0.5, "mean": 4.0, "std": 1.5}]}},
    # Difficulty follows the type: some kinds of question are harder, and what the policy must learn
    # for them is learnt mostly from them.
    "typed": {"task": {"type_difficulty": 2.5}},
}


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
