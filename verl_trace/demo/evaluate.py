"""Held-out evaluation: one chain per test question, greedy. Test questions are about persons and
companies that never appear in a training question, so this measures the search behaviour, not
memorized answers.

The demo's held-out evaluation is verl's validation inside the RL job; :func:`read_validation`
reads the generations verl dumps (``trainer.validation_data_dir``) and adds what verl's metrics
do not say: accuracy by number of hops and where the failures left the gold chain.
:func:`evaluate` runs the same evaluation in this process, through the same agent loop, tool and
reward (``agent.SearchAgent``): the tests check that both give the same accuracy on the same model
and questions.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from .world import Question

_QUERY = re.compile(r'"query_list": \["(.*?)"\]')
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.S)
_QUESTION = re.compile(r"Question: (.*?)\s*(?:\n|$)")
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


def summarize(results: Iterable[tuple[Question, str, float]]) -> dict[str, float]:
    """Accuracy (exact match), its binomial standard error, accuracy by number of hops, and where
    the failures left the gold chain (fractions of all questions, ``outcome/*``), from
    (question, response text, reward) triples."""
    scores, hops, outcomes, n = [], defaultdict(list), Counter(), 0
    for q, text, reward in results:
        scores.append(float(reward))
        hops[q.hops].append(float(reward))
        outcomes[outcome(q, text, reward)] += 1
        n += 1
    acc = float(np.mean(scores)) if scores else float("nan")
    metrics = {"accuracy": acc, "standard_error": math.sqrt(acc * (1 - acc) / n) if n else float("nan"),
               "questions": float(n)}
    metrics.update({f"accuracy_{h}hop": float(np.mean(v)) for h, v in sorted(hops.items())})
    metrics.update({f"outcome/{k}": outcomes[k] / max(1, n) for k in OUTCOMES})
    return metrics


def chains(agent, questions: Sequence[Question], temperature: float = 0.0) -> list[tuple[Question, str, float]]:
    """(question, response text, reward) of one chain per question, generated in this process by
    ``agent`` (a ``SearchAgent``); the text is decoded as verl's validation dump decodes it."""
    result = agent.chains(questions, temperature)
    by_uid = {f"eval-{i}": q for i, q in enumerate(questions)}
    return [(by_uid[leaf.uid], agent.tokenizer.decode(leaf.output.response_ids, skip_special_tokens=True),
             float(leaf.output.reward_score)) for leaf in result.leaves]


def evaluate(agent, questions: Sequence[Question], temperature: float = 0.0) -> dict[str, float]:
    """The evaluation in this process: :func:`summarize` of :func:`chains`."""
    return summarize(chains(agent, questions, temperature))


def validation_rows(path: Path, questions: Sequence[Question]) -> list[tuple[Question, str, float]]:
    """(question, response text, exact match) of each generation in one verl validation dump
    (``validation/<step>.jsonl``: one line per generation with the decoded ``input`` and
    ``output`` and the reward's ``em``). A line whose question is not among ``questions`` is an
    error: the dump belongs to another held-out set."""
    by_text = {q.question: q for q in questions}
    rows = []
    for i, line in enumerate(Path(path).read_text().splitlines()):
        if not line.strip():
            continue
        row = json.loads(line)
        m = _QUESTION.search(row["input"])
        q = by_text.get(m[1].strip()) if m else None
        if q is None:
            raise ValueError(f"{path}:{i + 1}: no held-out question in the prompt {row['input'][:120]!r}")
        rows.append((q, row["output"], float(row.get("em", row["score"]))))
    return rows


def read_validation(path: Path, questions: Sequence[Question]) -> dict[str, float]:
    """:func:`summarize` of one verl validation dump."""
    return summarize(validation_rows(path, questions))
