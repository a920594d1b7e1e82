"""Local copies of DAPO-Math-17k, GSM8K and MATH -> verl's RL parquet for the Python-tool math task.

    # your own downloaded files (nothing is fetched here); one --input per file, as KIND=PATH
    python recipes/math_tool/prepare_data.py --split train --out-dir ~/data/math_tool \\
        --input dapo=~/raw/dapo-math-17k/train.parquet --input gsm8k=~/raw/gsm8k/train.jsonl
    python recipes/math_tool/prepare_data.py --split test --out-dir ~/data/math_tool \\
        --input math=~/raw/math500/test.jsonl --input gsm8k=~/raw/gsm8k/test.jsonl --sample 500 --seed 0
    # the CPU mini set: generated arithmetic word problems that need the tool
    python recipes/math_tool/prepare_data.py --mini --out-dir ~/data/math_tool_mini

Offline path: fetch the sets once on a machine with network (e.g. ``huggingface-cli download
--repo-type dataset BytedTsinghua-SIA/DAPO-Math-17k``, ``openai/gsm8k``, ``HuggingFaceH4/MATH-500``)
and point ``--input`` at the files. Input kinds (JSONL or parquet):

- ``gsm8k``: ``question``, ``answer`` (the number after ``####``; thousands separators dropped);
- ``math``: ``problem`` and ``answer``, or ``solution`` (its last ``\\boxed{}``);
- ``dapo``: verl-layout rows: ``prompt`` (chat messages; DAPO's "Answer:" instructions are
  stripped, ours ask for ``\\boxed{}``) and ``reward_model.ground_truth``.

Output columns: ``prompt`` (system instruction + the problem), ``data_source`` (``math_tool_<kind>``),
``ability``, ``reward_model: {style: rule, ground_truth}``, ``extra_info`` (``split``, ``index``).
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

from verl_trace.rewards.math_boxed import last_boxed
from verl_trace.tasks import math_tool

KINDS = ("gsm8k", "math", "dapo")
_DAPO_PREFIX = "Solve the following math problem step by step. The last line of your response should be of the form Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n"
_DAPO_SUFFIX = '\n\nRemember to put your answer on its own line after "Answer:".'


def read_rows(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def problem_and_answer(kind: str, r: dict[str, Any], where: str) -> tuple[str, str]:
    try:
        if kind == "gsm8k":
            return r["question"], r["answer"].split("####")[-1].strip().replace(",", "")
        if kind == "math":
            answer = r.get("answer") or last_boxed(r["solution"])
            if not answer:
                raise KeyError("answer (or a \\boxed{} in solution)")
            return r["problem"], str(answer)
        text = next(m["content"] for m in r["prompt"] if m["role"] == "user")
        return text.removeprefix(_DAPO_PREFIX).removesuffix(_DAPO_SUFFIX).strip(), str(r["reward_model"]["ground_truth"])
    except (KeyError, StopIteration, AttributeError, TypeError) as e:
        raise ValueError(f"{where}: not a {kind} row (missing {e})") from e


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out-dir", type=Path, required=True)
    ap.add_argument("--split", default="train")
    ap.add_argument("--input", action="append", default=[], metavar="KIND=PATH")
    ap.add_argument("--sample", type=int, default=None, help="keep this many rows (seeded)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mini", action="store_true", help="write the generated CPU mini set (train + test)")
    args = ap.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if args.mini:
        for split, name in (("train", "train"), ("val", "test")):
            rows = math_tool.mini_rows(split)
            pq.write_table(pa.Table.from_pylist(rows), args.out_dir / f"{name}.parquet")
            print(f"{name}: {len(rows)} rows")
        return 0
    if not args.input:
        ap.error("give --input KIND=PATH (one or more) or --mini")
    rows: list[dict[str, Any]] = []
    for spec in args.input:
        kind, _, path = spec.partition("=")
        if kind not in KINDS or not path:
            ap.error(f"--input {spec!r}: expected KIND=PATH with KIND one of {list(KINDS)}")
        for i, r in enumerate(read_rows(Path(path).expanduser())):
            question, answer = problem_and_answer(kind, r, f"{path} row {i}")
            rows.append(math_tool.row(question, answer, args.split, 0, f"math_tool_{kind}"))
    if args.sample is not None and args.sample < len(rows):
        rows = random.Random(args.seed).sample(rows, args.sample)
    for i, r in enumerate(rows):
        r["extra_info"]["index"] = i
    out = args.out_dir / f"{args.split}.parquet"
    pq.write_table(pa.Table.from_pylist(rows), out)
    print(f"{args.split}: {len(rows)} rows -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
