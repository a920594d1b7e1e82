"""``python -m verl_trace.demo [--quick] [--out DIR] [--allocator NAME] [--seed N] [--resume]``.

Starts the retrieval server (127.0.0.1, a free port) over the shipped mini corpus, builds or
reuses the warm start in ``OUT/warm_start``, runs the RL phase with the chosen allocator and
writes the report into ``OUT``. The server is stopped on every exit path. Ctrl-C (or SIGTERM)
stops after writing a partial report (exit code 130); ``--resume`` continues from
``OUT/checkpoint``.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from ..tools.retrieval_server.process import RetrievalServerProcess
from . import report as report_io
from . import warm_start
from .progress import DemoProgress
from .rl import History, RLRun
from .settings import ALLOCATORS, DemoSettings, make_settings
from .world import MINI_DIR


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m verl_trace.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a ~2 minute run (what the tests run)")
    p.add_argument("--out", type=Path, default=Path("outputs/demo"), help="report directory (default outputs/demo)")
    p.add_argument("--allocator", default="trace", choices=ALLOCATORS, help="rollout allocator (default trace)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    p.add_argument("--warm-start", type=Path, metavar="DIR",
                   help="warm start directory to use or create (default OUT/warm_start); reused when its settings match")
    p.add_argument("--steps", type=int, help="RL steps (default: the preset's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                   help="override a setting, e.g. --set rl.lr=1e-3 (repeatable; see verl_trace/demo/settings.py)")
    p.add_argument("--no-progress", action="store_true", help="plain log lines instead of progress bars")
    return p.parse_args(argv)


def overrides(items: list[str], steps: int | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    if steps is not None:
        out.setdefault("rl", {})["steps"] = steps
    return out


def run(settings: DemoSettings, out: Path, *, quick: bool = False, resume: bool = False,
        progress: DemoProgress, warm_dir: Path | None = None, retrieve_url: str | None = None) -> dict[str, Any]:
    """The whole job; returns the report (written to ``out`` on every exit path: a run stopped by
    Ctrl-C or an error gets ``status`` "interrupted" or "failed" and the completed steps' curves).
    ``warm_dir`` and ``retrieve_url`` let a caller (the benchmark) share one warm start and one
    server between runs; otherwise both belong to ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(settings.threads)
    t0 = time.perf_counter()
    server, run_, warm_info, t_rl = None, None, {}, None
    status = "failed"
    try:
        if retrieve_url is None:
            server = RetrievalServerProcess(MINI_DIR / "corpus.jsonl", out / "retrieval_server.log").start()
            retrieve_url = server.retrieve_url
            progress.log(f"retrieval server: {server.url} (BM25 over {MINI_DIR / 'corpus.jsonl'})")
        warm = warm_start.prepare(settings, warm_dir or out / "warm_start", retrieve_url, progress)
        warm_info = warm.info
        t_rl = time.perf_counter()
        run_ = RLRun(settings, warm, out, retrieve_url, progress, resume=resume)
        run_.run()
        status = "completed"
    except KeyboardInterrupt:
        status = "interrupted"
        progress.log("interrupted: writing the partial report")
        raise
    finally:
        if run_ is not None:
            run_.close()
        if server is not None:
            server.stop()
        seconds = {"total": time.perf_counter() - t0, "warm_start": (t_rl or time.perf_counter()) - t0,
                   "rl": run_.history.seconds if run_ else 0.0}
        history = run_.history if run_ is not None else History()
        rep = report_io.build_report(settings, history, warm_info, quick=quick, status=status, seconds=seconds)
        try:
            rep = report_io.write(out, rep, run_.last_trees if run_ is not None else {})
        except Exception as exc:  # never mask the run's own error with a reporting one
            if status == "completed":
                raise
            progress.log(f"could not write the full report ({type(exc).__name__}: {exc})")
    return rep


def _sigterm(signum, frame) -> None:  # SIGTERM takes Ctrl-C's path: partial report, server stopped
    raise KeyboardInterrupt


def quiet_libraries() -> None:
    """The demo shows its own progress: no per-save progress bars from transformers, and verl's
    hermes parser logs every malformed tool call of a half-trained model at ERROR level (the
    runner counts them instead: ``trace/tool_errors/malformed_tool_call``)."""
    from transformers.utils import logging as hf_logging
    from verl.experimental.agent_loop import tool_parser

    hf_logging.disable_progress_bar()
    tool_parser.logger.setLevel(logging.CRITICAL)  # verl names this logger by its file path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_libraries()
    try:
        settings = make_settings(quick=args.quick, allocator=args.allocator, seed=args.seed,
                                 overrides=overrides(args.set, args.steps))
    except (ValidationError, ValueError) as exc:
        print(f"error: invalid settings: {exc}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _sigterm)
    with DemoProgress(enabled=not args.no_progress) as progress:
        progress.log(f"verl-trace CPU demo: allocator {settings.allocator} (advantage {settings.estimator}), "
                     f"{settings.rl.steps} RL steps x {settings.leaves_per_step} leaves, seed {settings.seed}, "
                     f"out {args.out}")
        try:
            rep = run(settings, args.out, quick=args.quick, resume=args.resume, progress=progress,
                      warm_dir=args.warm_start)
        except KeyboardInterrupt:
            progress.log(f"stopped; partial report in {args.out / 'report.json'}; continue with --resume")
            return 130
    print(f"start accuracy {rep['start_accuracy']:.3f} -> final {rep['final_accuracy']:.3f} after {rep['steps']} "
          f"steps, {rep['generated_tokens']:,} generated tokens; report: {args.out / 'report.json'}")
    return 0
