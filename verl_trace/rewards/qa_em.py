"""Exact-match reward for open-domain / multi-hop QA (the Search-R1 setting), plus F1 and a format check.

Use it through verl's reward-function hook::

    reward:
      custom_reward_function:
        path: pkg://verl_trace.rewards.qa_em
        name: compute_score
        reward_kwargs: {format_score: 0.0, strict_format: false}   # optional

verl's reward loop decodes the whole response (tool observations included) and calls
``compute_score(data_source=, solution_str=, ground_truth=, extra_info=)``. The answer is the
*last* ``<answer>...</answer>`` block; it is compared with each gold answer after SQuAD
normalization (lowercase, drop punctuation and the articles a/an/the, collapse whitespace).
The returned dict's ``score`` is the reward; ``em``, ``f1``, ``format_ok`` and ``has_answer``
become ``reward_extra_info`` (verl logs them per sample, and averages them in validation).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Any

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_TAG = re.compile(r"</?(answer|think)>")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalization: lowercase, strip punctuation, drop articles, collapse whitespace."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split())


def extract_answer(solution_str: str) -> str | None:
    """The text of the last complete ``<answer>...</answer>`` block, or None."""
    matches = _ANSWER.findall(solution_str)
    return matches[-1].strip() if matches else None


def format_ok(solution_str: str) -> bool:
    """Well-formed: ``<think>``/``<answer>`` tags open and close in order without nesting, exactly
    one answer block, non-empty, and nothing but whitespace after its ``</answer>``."""
    open_tag = None
    for m in _TAG.finditer(solution_str):
        closing, name = m.group(0).startswith("</"), m.group(1)
        if closing != (open_tag == name) or (not closing and open_tag is not None):
            return False
        open_tag = None if closing else name
    if open_tag is not None:
        return False
    answers = _ANSWER.findall(solution_str)
    return len(answers) == 1 and bool(answers[0].strip()) and solution_str.rstrip().endswith("</answer>")


def em_score(prediction: str, targets: list[str]) -> float:
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(t) for t in targets))


def f1_score(prediction: str, targets: list[str]) -> float:
    """Best token-level F1 over the gold answers (SQuAD): empty vs empty counts as a match."""
    pred = normalize_answer(prediction).split()
    best = 0.0
    for target in targets:
        gold = normalize_answer(target).split()
        if not pred or not gold:
            best = max(best, float(pred == gold))
            continue
        common = sum((Counter(pred) & Counter(gold)).values())
        if common:
            precision, recall = common / len(pred), common / len(gold)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def gold_answers(ground_truth: Any) -> list[str]:
    """Gold answers from ``{"target": [...]}`` (Search-R1 / verl), a list, an array or a string."""
    target = ground_truth.get("target") if isinstance(ground_truth, dict) else ground_truth
    if hasattr(target, "tolist"):  # numpy arrays come back from parquet
        target = target.tolist()
    if isinstance(target, str | int | float):
        target = [target]
    if not isinstance(target, list) or not target or any(t is None for t in target):
        raise ValueError(f"reward_model.ground_truth.target must be a non-empty list of answers, got {ground_truth!r}")
    return [str(t) for t in target]


def compute_score(data_source: str, solution_str: str, ground_truth: Any, extra_info: dict | None = None,
                  format_score: float = 0.0, strict_format: bool = False, **kwargs: Any) -> dict[str, float]:
    """Reward = exact match of the last answer (1/0). A well-formed but wrong response earns
    ``format_score``; with ``strict_format`` a malformed response earns 0 even if it is right."""
    if not isinstance(solution_str, str):
        raise TypeError(f"solution_str must be a string, got {type(solution_str).__name__}")
    targets = gold_answers(ground_truth)
    answer = extract_answer(solution_str)
    well_formed = format_ok(solution_str)
    em = em_score(answer, targets) if answer is not None else 0.0
    f1 = f1_score(answer, targets) if answer is not None else 0.0
    if strict_format and not well_formed:
        score = 0.0
    else:
        score = em if em else (format_score if well_formed else 0.0)
    return {"score": score, "em": em, "f1": f1, "format_ok": float(well_formed), "has_answer": float(answer is not None)}
