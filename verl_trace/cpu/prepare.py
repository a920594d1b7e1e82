"""Assets of the CPU Search-R1 run (``recipes/search_r1/config/cpu_tiny.yaml``), built locally.

    python -m verl_trace.cpu.prepare --out outputs/cpu_tiny          # ~1 min on 2 cores

writes into ``OUT``:

* ``model/``: the demo's tiny Qwen2 and its tokenizer (``verl_trace.demo.model``: a BPE trained
  on the mini world, one token per entity name, ChatML with hermes tool calls), after a short
  supervised warm start on the demo's scripted demonstrations (``verl_trace.demo.warm_start``),
  so that it calls the search tool and answers: a random model emits neither, and its rollouts
  would be single-turn trees with nothing to branch;
* ``data/train.parquet``, ``data/test.parquet``: the shipped mini world
  (``recipes/search_r1/data/mini``) as verl rows, exactly what ``prepare_data.py --template bare``
  writes (``agent_name`` ``trace_agent``);
* ``search_tool.yaml``: verl's tool config of the search tool (top-1 passage, the URL from
  ``$RETRIEVAL_URL``);
* ``assets.json``: the settings it was built with. A directory built with the same settings is
  reused as it is.

Building the warm start needs the BM25 retrieval server (the demonstrations are played through the
real agent loop and search tool): pass ``retrieve_url`` or let this start one as a child process.
This module is layer 8 (it uses the demo's world, model and warm start); the platform and the
rollout backend of ``verl_trace.cpu`` do not import it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..demo.demonstrations import SEARCH_SCHEMA
from ..demo.world import MINI_DIR, load_split

INFO = "assets.json"
ASSETS_ENV = "VERL_TRACE_CPU_ASSETS"  # what cpu_tiny.yaml reads the directory from

# The smallest model that still learns the tool protocol in a few dozen supervised steps.
MODEL = {"hidden": 64, "layers": 2, "heads": 2, "kv_heads": 1, "max_positions": 512}
SFT = {"demonstrations": 192, "steps": 150, "batch_size": 16}


@dataclass(frozen=True)
class Assets:
    """A prepared directory: what ``cpu_tiny.yaml`` reads through ``VERL_TRACE_CPU_ASSETS``."""

    root: Path
    tool_file: str = "search_tool.yaml"  # the demo's other tasks name their own (``<task>_tool.yaml``)

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def train_file(self) -> Path:
        return self.root / "data" / "train.parquet"

    @property
    def val_file(self) -> Path:
        return self.root / "data" / "test.parquet"

    @property
    def tool_config(self) -> Path:
        return self.root / self.tool_file

    @property
    def corpus(self) -> Path:
        return MINI_DIR / "corpus.jsonl"

    @property
    def info(self) -> dict[str, Any]:
        return json.loads((self.root / INFO).read_text())

    def exists(self) -> bool:
        return all(p.exists() for p in (self.model / "config.json", self.train_file, self.val_file, self.tool_config,
                                        self.root / INFO))


def settings_fingerprint(seed: int, sft_steps: int) -> dict[str, Any]:
    return {"seed": seed, "model": MODEL, "sft": {**SFT, "steps": sft_steps}}


def tool_config(topk: int = 1) -> dict[str, Any]:
    """verl's tool YAML for the search tool; the server URL is read from ``$RETRIEVAL_URL`` when
    verl builds the tool in the agent-loop worker."""
    return {"tools": [{
        "class_name": "verl_trace.tools.search_tool.SearchTool",
        "config": {"type": "native", "retrieval_service_url": "${oc.env:RETRIEVAL_URL,http://127.0.0.1:8000/retrieve}",
                   "topk": topk, "timeout": 30, "max_retries": 2, "max_doc_chars": 400},
        "tool_schema": SEARCH_SCHEMA,
    }]}


def write_data(root: Path) -> None:
    from ..demo.world import prepare_data

    write = prepare_data().write_parquet
    for split in ("train", "test"):
        write([q.row for q in load_split(split)], root / "data" / f"{split}.parquet")


def build_model(root: Path, retrieve_url: str, seed: int, sft_steps: int) -> dict[str, Any]:
    """The demo's warm start with the settings above, saved to ``root/model``; returns its info."""
    import torch

    from ..demo.progress import DemoProgress
    from ..demo.settings import make_settings
    from ..demo.warm_start import prepare as warm_start

    settings = make_settings(quick=True, seed=seed, overrides={"model": MODEL, "sft": {**SFT, "steps": sft_steps}})
    threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)  # one, as the demo: OpenMP's barriers stall on a busy small machine
    try:
        with DemoProgress(enabled=False) as progress:
            return warm_start(settings, root / "model", retrieve_url, progress).info
    finally:
        torch.set_num_threads(threads)


def prepare(out: str | Path, *, seed: int = 0, sft_steps: int = SFT["steps"], retrieve_url: str | None = None,
            log_dir: Path | None = None) -> Assets:
    """Build (or reuse) the assets in ``out``. ``retrieve_url``: a running BM25 server over the mini
    corpus (``.../retrieve``); without it one is started for the warm start and stopped after."""
    assets = Assets(Path(out).resolve())
    fingerprint = settings_fingerprint(seed, sft_steps)
    if assets.exists() and assets.info.get("fingerprint") == fingerprint:
        return assets
    root = assets.root
    if (root / INFO).exists():  # built with other settings: start over, keep nothing stale
        for child in ("model", "data", INFO):
            path = root / child
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    write_data(root)
    assets.tool_config.write_text(yaml.safe_dump(tool_config(), sort_keys=False))
    if retrieve_url is None:
        from ..tools.retrieval_server.process import RetrievalServerProcess

        with RetrievalServerProcess(assets.corpus, (log_dir or root) / "retrieval_server.log") as server:
            warm = build_model(root, server.retrieve_url, seed, sft_steps)
    else:
        warm = build_model(root, retrieve_url, seed, sft_steps)
    info = {"fingerprint": fingerprint, "warm_start": {k: warm[k] for k in
            ("parameters", "vocab_size", "teacher_accuracy", "sft_steps", "sft_loss_first", "sft_loss_last",
             "seconds_total") if k in warm}}
    (root / INFO).write_text(json.dumps(info, indent=1))
    return assets


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m verl_trace.cpu.prepare", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="directory to build the assets in")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sft-steps", type=int, default=SFT["steps"], help="supervised warm-start steps")
    p.add_argument("--retrieve-url", help="a running retrieval server's /retrieve URL (default: start one)")
    args = p.parse_args(argv)
    assets = prepare(args.out, seed=args.seed, sft_steps=args.sft_steps, retrieve_url=args.retrieve_url)
    print(json.dumps(assets.info, indent=1))
    print(f"\nexport {ASSETS_ENV}={assets.root}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
