"""Convert local QA files (Search-R1 / FlashRAG / the shipped mini set) into verl's RL parquet.

    # the shipped mini set -> DIR/train.parquet, DIR/test.parquet
    python recipes/search_r1/prepare_data.py --mini --out-dir ~/data/search_r1_mini

    # files you downloaded yourself (nothing is fetched here), one split per call
    python recipes/search_r1/prepare_data.py --split train --out-dir ~/data/search_r1 \\
        --input ~/raw/nq/train.jsonl --input ~/raw/hotpotqa/train.jsonl
    python recipes/search_r1/prepare_data.py --split test --out-dir ~/data/search_r1 \\
        --input ~/raw/nq_hotpotqa_train/test.parquet --sample 500 --seed 0

Input rows (JSONL or parquet) need a question and gold answers:
- ``question`` (str);
- answers from ``golden_answers`` (FlashRAG, Search-R1 parquet), else
  ``reward_model.ground_truth.target`` (Search-R1 / verl parquet), else ``answers`` / ``answer``;
- optional ``id``, ``data_source`` (else ``--data-source``, else the file's folder/stem name),
  and ``metadata.chain`` (the mini set's gold search chain, kept as ``extra_info.gold_chain``).

Output columns (what verl's RLHFDataset and agent loops read): ``prompt`` (chat messages with the
Search-R1 instruction), ``agent_name`` (default ``trace_agent``, the TRACE agent loop; use
``tool_agent`` for verl's plain ToolAgentLoop, e.g. GRPO baselines), ``data_source``,
``ability``, ``reward_model: {style: rule, ground_truth: {target: [...]}}``, and ``extra_info``
with ``index``, ``id``, ``split``, ``question``, ``need_tools_kwargs`` and ``tools_kwargs``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

MINI_DIR = Path(__file__).resolve().parent / "data" / "mini"

SYSTEM = "You are a helpful and harmless assistant."
INSTRUCTION = (
    "Answer the given question. Think step by step inside <think> and </think> whenever you get new "
    "information. If you lack knowledge, call the search tool with one or more queries; it returns "
    "the most relevant passages. You may search as many times as you need. When you know the answer, "
    "give it inside <answer> and </answer> without explanation, for example <answer> Beijing </answer>."
    "\n\nQuestion: {question}"
)
TEMPLATES = {
    # Search-R1's protocol with verl's tool calls (the schema reaches the model through the chat template).
    "search_r1": lambda q: [{"role": "system", "content": SYSTEM},
                            {"role": "user", "content": INSTRUCTION.format(question=q)}],
    # Just the question: for tiny models trained from scratch, which learn the protocol from data.
    "bare": lambda q: [{"role": "user", "content": f"Question: {q}"}],
}
_SPLIT_STEMS = {"train", "dev", "test", "val", "valid", "validation"}


class InputError(ValueError):
    """A row that cannot be converted; the message names file, row and field."""


def read_rows(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    if path.suffix in (".jsonl", ".json"):
        rows = []
        with open(path) as fh:
            for lineno, line in enumerate(fh, start=1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise InputError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
        return rows
    raise InputError(f"{path}: expected a .jsonl or .parquet file")


def _answers(row: dict) -> Any:
    if row.get("golden_answers") is not None:
        return row["golden_answers"]
    reward_model = row.get("reward_model")
    truth = reward_model.get("ground_truth") if isinstance(reward_model, dict) else None
    if isinstance(truth, dict) and truth.get("target") is not None:
        return truth["target"]
    return row.get("answers", row.get("answer"))


def default_source(path: Path) -> str:
    return path.parent.name if path.stem.lower() in _SPLIT_STEMS else path.stem


def convert_row(row: dict, where: str, index: int, split: str, data_source: str, agent_name: str,
                template: str) -> dict:
    question = row.get("question")
    if not isinstance(question, str) or not question.strip():
        raise InputError(f"{where}: field 'question' must be a non-empty string")
    answers = _answers(row)
    answers = [answers] if isinstance(answers, str | int | float) else answers
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str | int | float) for a in answers):
        raise InputError(f"{where}: no gold answers (looked for 'golden_answers', "
                         "'reward_model.ground_truth.target', 'answers', 'answer')")
    question = question.strip()
    if not question.endswith("?"):
        question += "?"
    extra = {"index": index, "id": str(row.get("id", index)), "split": split, "question": question,
             "need_tools_kwargs": True, "tools_kwargs": {"search": {"create_kwargs": {"question": question}}}}
    chain = (row.get("metadata") or {}).get("chain") if isinstance(row.get("metadata"), dict) else None
    if chain:
        extra["gold_chain"] = chain
    return {
        "data_source": str(row.get("data_source") or data_source),
        "agent_name": agent_name,
        "prompt": TEMPLATES[template](question),
        "ability": "fact-reasoning",
        "reward_model": {"style": "rule", "ground_truth": {"target": [str(a) for a in answers]}},
        "extra_info": extra,
    }


def convert(inputs: list[Path], split: str, data_source: str | None = None, agent_name: str = "trace_agent",
            template: str = "search_r1", sample: int | None = None, seed: int = 0,
            progress: bool = True) -> list[dict]:
    """Rows of all ``inputs`` in verl's format (optionally a seeded sample of ``sample`` rows)."""
    tagged = []
    for path in inputs:
        rows = read_rows(path)
        source = data_source or default_source(path)
        tagged += [(f"{path}:row {i}", row, source) for i, row in enumerate(rows)]
    if sample is not None and sample < len(tagged):
        tagged = random.Random(seed).sample(tagged, sample)
    return [convert_row(row, where, i, split, source, agent_name, template)
            for i, (where, row, source) in enumerate(tqdm(tagged, desc=f"convert {split}", disable=not progress))]


def write_parquet(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--mini", action="store_true", help=f"convert the shipped mini set ({MINI_DIR})")
    p.add_argument("--input", type=Path, action="append", default=[], help="JSONL or parquet file (repeatable)")
    p.add_argument("--split", default="train", help="name of the output file (<split>.parquet)")
    p.add_argument("--data-source", help="data_source for rows that carry none")
    p.add_argument("--agent-name", default="trace_agent", help="trace_agent (TRACE) or tool_agent (verl's loop)")
    p.add_argument("--template", choices=sorted(TEMPLATES), default="search_r1")
    p.add_argument("--sample", type=int, help="keep a seeded random sample of this many rows")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.mini == bool(args.input):
        p.error("give either --mini or at least one --input")
    jobs = ([(split, [MINI_DIR / f"{split}.jsonl"], args.data_source) for split in ("train", "test")] if args.mini
            else [(args.split, args.input, args.data_source)])
    try:
        for split, inputs, source in jobs:
            rows = convert(inputs, split, source, args.agent_name, args.template, args.sample, args.seed)
            write_parquet(rows, args.out_dir / f"{split}.parquet")
            print(f"wrote {len(rows)} rows to {args.out_dir / f'{split}.parquet'}")
    except (InputError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
