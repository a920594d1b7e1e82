"""BFCL v4 multi-turn entries from the installed ``bfcl-eval`` package -> verl's RL parquet.

    # the supported categories, split by conversation -> DIR/train.parquet, DIR/val.parquet
    python recipes/bfcl/prepare_data.py --out-dir ~/data/bfcl
    python recipes/bfcl/prepare_data.py --out-dir ~/data/bfcl --categories multi_turn_base --val-fraction 0.2
    # the CPU mini subset (verl_trace.tasks.bfcl.MINI_TRAIN / MINI_VAL)
    python recipes/bfcl/prepare_data.py --mini --out-dir ~/data/bfcl_mini

Offline: the package carries the data (``pip install --no-deps bfcl-eval==2026.3.23``); nothing is
downloaded. Supported categories: multi_turn_base, multi_turn_miss_param, multi_turn_long_context
(200 entries each); miss_func is not (docs/tasks.md).

Split: BFCL's categories are variants of the same 200 conversations (``multi_turn_base_45``,
``multi_turn_miss_param_45`` and ``multi_turn_long_context_45`` share the user's requests), so
the split is by conversation number, never by entry: all variants of a conversation land on the
same side. The validation share is a seeded random choice of conversation numbers.

Row layout (``verl_trace.tasks.bfcl.row``): ``prompt`` = system prompt + the first user turn,
``extra_info.user_turns`` = the later user turns (trace_agent delivers them),
``extra_info.tool_selection`` = the entry's functions, ``extra_info.tools_kwargs.bfcl_scenario``
= the entry's id, ``initial_config`` (JSON) and classes, ``reward_model.ground_truth`` = BFCL's
per-turn ground-truth calls (JSON), ``data_source`` = ``bfcl_<category>``.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from verl_trace.tasks import bfcl
from verl_trace.tools.bfcl import package


def conversation(entry_id: str) -> int:
    return int(entry_id.rsplit("_", 1)[1])


def build(categories: list[str], val_fraction: float, seed: int) -> dict[str, list[dict]]:
    numbers = sorted({conversation(e["id"]) for c in categories for e in package.load_entries(c)})
    rng = random.Random(seed)
    val = set(rng.sample(numbers, round(len(numbers) * val_fraction)))
    splits: dict[str, list[dict]] = {"train": [], "val": []}
    for category in categories:
        truth = package.load_ground_truth(category)
        for entry in package.load_entries(category):
            split = "val" if conversation(entry["id"]) in val else "train"
            splits[split].append(bfcl.row(entry, truth[entry["id"]], split, len(splits[split])))
    return splits


def write(splits: dict[str, list[dict]], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        pq.write_table(pa.Table.from_pylist(rows), out_dir / f"{split}.parquet")
        print(f"{split}: {len(rows)} rows -> {out_dir / f'{split}.parquet'}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out-dir", type=Path, required=True)
    ap.add_argument("--categories", nargs="+", default=list(package.CATEGORIES), choices=list(package.CATEGORIES))
    ap.add_argument("--val-fraction", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mini", action="store_true", help="the fixed CPU subset instead of whole categories")
    args = ap.parse_args(argv)
    if not 0.0 <= args.val_fraction < 1.0:
        ap.error(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    try:
        splits = {"train": bfcl.mini_rows("train"), "val": bfcl.mini_rows("val")} if args.mini else \
            build(args.categories, args.val_fraction, args.seed)
    except package.BfclNotInstalled as e:
        print(e, file=sys.stderr)
        return 2
    write(splits, args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
