"""Held-out evaluation: one chain per test question (greedy by default) through the same agent
loop, tool and reward as training. Test questions are about persons and companies that never
appear in a training question, so this measures the search behaviour, not memorized answers."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np

from .agent import SearchAgent
from .world import Question

_QUERY = re.compile(r'"query_list": \["(.*?)"\]')
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.S)
OUTCOMES = ("correct", "off_chain_query", "premature_answer", "wrong_answer", "no_answer")


def outcome(question: Question, response_text: str, reward: float) -> str:
    """Where a trajectory left the gold chain: ``off_chain_query`` (a query other than the chain's
    next entity), ``premature_answer`` (answered before the last hop), ``wrong_answer`` (all hops
    searched, wrong answer), ``no_answer``; or ``correct``."""
    if reward > 0:
        return "correct"
    queries = [q.strip() for q in _QUERY.findall(response_text)]
    gold = [hop["query"] for hop in question.chain]
    if queries != gold[: len(queries)]:
        return "off_chain_query"
    if not _ANSWER.search(response_text):
        return "no_answer"
    return "premature_answer" if len(queries) < len(gold) else "wrong_answer"


def evaluate(agent: SearchAgent, questions: Sequence[Question], temperature: float = 0.0) -> dict[str, float]:
    """Accuracy (EM), by number of hops, plus format rate, searches, generated tokens and where
    the failures left the gold chain (fractions of all questions, ``outcome/*``)."""
    result = agent.chains(questions, temperature)
    by_uid = {f"eval-{i}": q for i, q in enumerate(questions)}
    scores, hops, outcomes = defaultdict(list), defaultdict(list), Counter()
    for leaf in result.leaves:
        out = leaf.output
        info = out.extra_fields.get("reward_extra_info") or {}
        q = by_uid[leaf.uid]
        scores["accuracy"].append(float(out.reward_score))
        scores["format_ok"].append(float(info.get("format_ok", 0.0)))
        scores["searches"].append(float(out.extra_fields.get("search_calls", 0)))
        scores["failed"].append(float(leaf.status.value == "failed"))
        hops[q.hops].append(float(out.reward_score))
        outcomes[outcome(q, agent.tokenizer.decode(out.response_ids), float(out.reward_score))] += 1
    metrics = {k: float(np.mean(v)) for k, v in scores.items()}
    metrics.update({f"accuracy_{h}hop": float(np.mean(v)) for h, v in sorted(hops.items())})
    metrics.update({f"outcome/{k}": outcomes[k] / max(1, len(result.leaves)) for k in OUTCOMES})
    metrics["questions"] = float(len(result.leaves))
    metrics["generated_tokens"] = float(result.metrics.get("trace/tokens_generated", 0.0))
    return metrics
