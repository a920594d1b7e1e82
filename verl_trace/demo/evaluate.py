"""Held-out evaluation: one chain per test question (greedy by default) through the same agent
loop, tool and reward as training. Test questions are about persons and companies that never
appear in a training question, so this measures the search behaviour, not memorized answers."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from .agent import SearchAgent
from .world import Question


def evaluate(agent: SearchAgent, questions: Sequence[Question], temperature: float = 0.0) -> dict[str, float]:
    """Accuracy (EM), by number of hops, plus format rate, searches and generated tokens per question."""
    result = agent.chains(questions, temperature)
    by_uid = {f"eval-{i}": q for i, q in enumerate(questions)}
    scores, hops = defaultdict(list), defaultdict(list)
    for leaf in result.leaves:
        out = leaf.output
        info = out.extra_fields.get("reward_extra_info") or {}
        q = by_uid[leaf.uid]
        scores["accuracy"].append(float(out.reward_score))
        scores["format_ok"].append(float(info.get("format_ok", 0.0)))
        scores["searches"].append(float(out.extra_fields.get("search_calls", 0)))
        scores["failed"].append(float(leaf.status.value == "failed"))
        hops[q.hops].append(float(out.reward_score))
    metrics = {k: float(np.mean(v)) for k, v in scores.items()}
    metrics.update({f"accuracy_{h}hop": float(np.mean(v)) for h, v in sorted(hops.items())})
    metrics["questions"] = float(len(result.leaves))
    metrics["generated_tokens"] = float(result.metrics.get("trace/tokens_generated", 0.0))
    return metrics
