"""Math reward: the last ``\\boxed{...}`` of the response, checked against the gold answer with
HuggingFace's ``math-verify`` (symbolic equivalence through sympy: ``1/2`` = ``0.5`` = ``\\frac{1}{2}``).

Use it through verl's reward-function hook::

    reward:
      custom_reward_function:
        path: pkg://verl_trace.rewards.math_boxed
        name: compute_score

The decoded response includes tool observations; only a ``\\boxed{}`` counts as the answer, the
last one wins. ``score`` is 1.0 or 0.0; ``has_answer`` (1.0 if a box was found) becomes reward extra info.
math-verify bounds its own parsing time with ``SIGALRM``, which only the main thread may use; in a
worker thread (verl's reward loop runs ``compute_score`` in an executor) it runs without that bound.
"""

from __future__ import annotations

import threading
from typing import Any

from ..extras import require_extra

require_extra("math", "the math reward (verl_trace.rewards.math_boxed)", ("math_verify",))

BOXED = "\\boxed"


def last_boxed(text: str) -> str | None:
    """The contents of the last ``\\boxed{...}`` (nested braces allowed), or None."""
    start = text.rfind(BOXED + "{")
    if start < 0:
        return None
    i, depth = start + len(BOXED), 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j].strip()
    return None


def is_equivalent(pred: str, gold: str) -> bool:
    from math_verify import parse, verify

    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    gold_parsed = parse(f"${gold}$", parsing_timeout=timeout)
    pred_parsed = parse(f"${pred}$", parsing_timeout=timeout)
    if not gold_parsed or not pred_parsed:
        return pred.strip() == gold.strip()
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout))


def compute_score(data_source: Any, solution_str: str, ground_truth: Any, extra_info: dict | None = None, **_: Any) -> dict:
    pred = last_boxed(solution_str or "")
    golds = [ground_truth] if isinstance(ground_truth, str | int | float) else list(ground_truth)
    ok = pred is not None and any(is_equivalent(pred, str(g)) for g in golds)
    return {"score": float(ok), "has_answer": float(pred is not None)}
