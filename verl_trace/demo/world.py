"""The shipped mini multi-hop world (recipes/search_r1/data/mini) as the demo uses it.

Questions become verl dataset rows through the recipe's own ``prepare_data.convert_row`` with the
``bare`` template (just the question: a tiny model learns the protocol from demonstrations), so
the demo's rows are exactly what ``prepare_data.py --template bare`` writes for a real run.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

from ..rollout import TreePrompt

RECIPE_DIR = Path(__file__).resolve().parents[2] / "recipes" / "search_r1"
MINI_DIR = RECIPE_DIR / "data" / "mini"


@cache
def prepare_data() -> ModuleType:
    """The recipe's ``prepare_data.py`` (recipes/ is not an installed package)."""
    path = RECIPE_DIR / "prepare_data.py"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the demo runs from a source checkout of verl-trace")
    spec = importlib.util.spec_from_file_location("search_r1_prepare_data", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and pickling look modules up there
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class Question:
    """One QA record: the question, its gold answers and its gold search chain."""

    id: str
    split: str
    question: str
    answers: tuple[str, ...]
    template: str
    chain: tuple[dict[str, str], ...]  # [{"query", "doc_id", "finds"}, ...]
    row: dict[str, Any]  # the verl dataset row

    @property
    def hops(self) -> int:
        return len(self.chain)

    @property
    def topic(self) -> str:
        return self.chain[0]["query"]

    def prompt(self, uid: str | None = None) -> TreePrompt:
        """The row as the tree runner takes it (``raw_prompt`` = the chat messages)."""
        row = self.row
        loop_row = {"raw_prompt": row["prompt"], "tools_kwargs": row["extra_info"]["tools_kwargs"],
                    "extra_info": row["extra_info"], "data_source": row["data_source"],
                    "reward_model": row["reward_model"], "index": row["extra_info"]["index"]}
        return TreePrompt(uid or self.id, loop_row, key=self.id)


def load_split(split: str, data_dir: Path = MINI_DIR) -> list[Question]:
    """``train`` or ``test`` of the mini world (a JSONL line that cannot be used names itself)."""
    prep = prepare_data()
    path = Path(data_dir) / f"{split}.jsonl"
    out = []
    for i, rec in enumerate(prep.read_rows(path)):
        where = f"{path}:{i + 1}"
        chain = (rec.get("metadata") or {}).get("chain")
        if not chain:
            raise ValueError(f"{where}: field 'metadata.chain' (the gold search chain) is missing")
        row = prep.convert_row(rec, where, i, split, "mini", "trace_agent", "bare")
        out.append(Question(id=str(rec.get("id", f"{split}-{i}")), split=split, question=row["extra_info"]["question"],
                            answers=tuple(row["reward_model"]["ground_truth"]["target"]),
                            template=rec["metadata"].get("template", ""), chain=tuple(chain), row=row))
    return out


def corpus_texts(data_dir: Path = MINI_DIR) -> list[str]:
    """Passage contents, for training the tokenizer."""
    with open(Path(data_dir) / "corpus.jsonl") as fh:
        return [json.loads(line)["contents"] for line in fh if line.strip()]
