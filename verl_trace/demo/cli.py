"""``python -m verl_trace.demo [--task search|bfcl|math] [--quick] [--out DIR] [--allocator NAME] [--seed N] [--resume]``.

Starts what the task's tools need (``search``, the default: the retrieval server on 127.0.0.1 at
a free port over the shipped mini corpus; ``bfcl`` and ``math`` need nothing), builds or reuses
the warm start in ``OUT/warm_start``, runs the RL phase through verl's trainer
(``python -m verl_trace.main_trace``, see ``trainer``) with the chosen allocator and writes the
report into ``OUT``. The server is stopped on every exit path. Ctrl-C (or SIGTERM) stops the
trainer and writes a partial report (exit code 130); ``--resume`` continues from verl's latest
checkpoint in ``OUT/checkpoints``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import signal
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from . import report as report_io
from . import trainer, warm_start
from .family import DemoTask, demo_task
from .progress import DemoProgress
from .settings import ALLOCATORS, TASKS, DemoSettings, first_difference, make_settings

SETTINGS_FILE = "settings.json"
# What a fresh run replaces in OUT (the warm start is kept and reused when its settings match).
RUN_FILES = ("checkpoints", "validation", "trees", "assets", "metrics.*.jsonl", "main_trace.log", "report.json",
             "accuracy.png", "training.png", "rollout_tree.*", SETTINGS_FILE)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m verl_trace.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="search", choices=TASKS,
                   help="search (default: the mini multi-hop world), bfcl (BFCL multi-turn function calling) or "
                        "math (arithmetic with a Python tool); docs/demo.md")
    p.add_argument("--quick", action="store_true", help="a ~3 minute run (what the tests run)")
    p.add_argument("--out", type=Path, default=Path("outputs/demo"), help="report directory (default outputs/demo)")
    p.add_argument("--allocator", default="trace", choices=ALLOCATORS, help="rollout allocator (default trace)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from verl's latest checkpoint in OUT/checkpoints")
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


class ResumeError(ValueError):
    """``--resume`` under settings other than the run's."""


def prepare_out(out: Path, settings: DemoSettings, resume: bool) -> bool:
    """Check a resumed run's settings against the saved ones (only ``rl.steps`` may change) or
    clear a previous run's files; returns whether verl has a checkpoint to resume from."""
    saved = out / SETTINGS_FILE
    if resume and saved.is_file():
        # a settings file written before a top-level field existed (task_name, family) ran with its default
        before = {**DemoSettings().model_dump(mode="json"), **json.loads(saved.read_text())}
        diff = first_difference(before, settings.model_dump(mode="json"))
        if diff is not None:
            raise ResumeError(f"--resume: the run in {out} was started with a different setting: {diff} "
                             "(use the same settings, or another --out)")
    elif not resume:
        for pattern in RUN_FILES:
            for path in out.glob(pattern):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    saved.write_text(json.dumps(settings.model_dump(mode="json"), indent=1))
    return (out / "checkpoints" / "latest_checkpointed_iteration.txt").is_file()


class Monitor:
    """Turns verl's metrics, as the job writes them, into progress: the RL bar, the start
    accuracy, when the trainer's first step ended."""

    def __init__(self, progress: DemoProgress, steps: int, done: int, task: DemoTask):
        self.progress, self.steps, self.task = progress, steps, task
        self.progress.phase("RL (verl)", steps, completed=done)
        self.logged_start = False
        self.first_step_at: float | None = None

    def __call__(self, rows: list[dict[str, Any]]) -> None:
        evals = [(r["step"], acc) for r in rows if (acc := self.task.accuracy(r)) is not None]
        if evals and not self.logged_start:
            self.logged_start = True
            self.progress.log(f"held-out accuracy at step {evals[0][0]} (verl's validation): {evals[0][1]:.3f}")
        train = [r for r in rows if r["step"] >= 1]
        if not train:
            return
        self.first_step_at = self.first_step_at or time.perf_counter()
        last = train[-1]
        info = f"reward {last.get('critic/score/mean', float('nan')):.2f}"
        if "trace/effective_sample_ratio" in last:
            info += f"  ESR {last['trace/effective_sample_ratio']:.2f}"
        if evals:
            info += f"  held-out {evals[-1][1]:.3f} @ {evals[-1][0]}"
        info += f"  {last.get('timing_s/step', float('nan')):.0f}s/step"
        self.progress.update("RL (verl)", completed=last["step"], info=info)


def run(settings: DemoSettings, out: Path, *, quick: bool = False, resume: bool = False,
        progress: DemoProgress, warm_dir: Path | None = None, retrieve_url: str | None = None) -> dict[str, Any]:
    """The whole job; returns the report (written to ``out`` on every exit path: a run stopped by
    Ctrl-C or an error gets ``status`` "interrupted" or "failed" and the completed steps' curves).
    ``warm_dir`` and ``retrieve_url`` let a caller (the benchmark) share one warm start and one
    search server between runs; otherwise both belong to ``out``. The task is ``settings.task_name``."""
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(settings.threads)
    t0 = time.perf_counter()
    has_checkpoint = prepare_out(out, settings, resume)
    task = demo_task(settings, retrieve_url)
    warm_info, t_rl, monitor = {}, None, None
    ray_tmp = Path("/tmp") / f"vt-demo-{zlib.crc32(str(out).encode()):08x}"  # Ray's socket paths must stay short
    status = "failed"
    try:
        task.start(out, progress)
        warm = warm_start.prepare(settings, warm_dir or out / "warm_start", task.retrieve_url, progress, task)
        warm_info = warm.info
        assets = trainer.write_inputs(out / "assets", task.train_rows(), task.held_out_rows(), task.tool_config(),
                                      f"{task.name}_tool.yaml")
        done = len([r for r in trainer.read_metrics(out) if r["step"] >= 1]) if has_checkpoint else 0
        progress.log(f"RL: python -m {report_io.TRAINER} (verl's trainer on CPU: FSDP2 actor, hf rollout server, "
                     f"TRACE rollout and estimator; log {out / 'main_trace.log'})"
                     + (" resuming from verl's latest checkpoint" if has_checkpoint else ""))
        monitor = Monitor(progress, settings.rl.steps, done, task)
        t_rl = time.perf_counter()
        job = trainer.RLJob(settings, out, assets, warm.path, task, resume=has_checkpoint, on_metrics=monitor,
                            ray_tmp=ray_tmp)
        result = job.run()
        if result.returncode != 0:
            raise RuntimeError(f"main_trace exited with {result.returncode} after {result.seconds:.0f}s; the end of "
                               f"{result.log}:\n{result.log_tail(3000)}")
        status = "completed"
    except KeyboardInterrupt:
        status = "interrupted"
        progress.log("interrupted: writing the partial report")
        raise
    finally:
        task.stop()
        shutil.rmtree(ray_tmp, ignore_errors=True)
        now = time.perf_counter()
        seconds = {"total": now - t0, "warm_start": (t_rl or now) - t0, "rl": now - t_rl if t_rl else 0.0,
                   "rl_until_first_step": (monitor.first_step_at - t_rl) if monitor and monitor.first_step_at else None}
        rep = None
        try:
            rows = trainer.read_metrics(out)
            rep = report_io.build_report(settings, rows, out, task, warm_info, quick=quick, status=status,
                                         seconds=seconds)
            rep = report_io.write(out, rep)
        except Exception as exc:  # never mask the run's own error with a reporting one
            if status == "completed":
                raise
            progress.log(f"could not write the full report ({type(exc).__name__}: {exc})")
    return rep


def _sigterm(signum, frame) -> None:  # SIGTERM takes Ctrl-C's path: partial report, trainer and server stopped
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
        settings = make_settings(task=args.task, quick=args.quick, allocator=args.allocator, seed=args.seed,
                                 overrides=overrides(args.set, args.steps))
    except (ValidationError, ValueError) as exc:
        print(f"error: invalid settings: {exc}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _sigterm)
    with DemoProgress(enabled=not args.no_progress) as progress:
        progress.log(f"verl-trace CPU demo: task {settings.task_name}, allocator {settings.allocator} (advantage {settings.estimator}), "
                     f"{settings.rl.steps} RL steps x {settings.leaves_per_step} leaves, seed {settings.seed}, "
                     f"out {args.out}")
        try:
            rep = run(settings, args.out, quick=args.quick, resume=args.resume, progress=progress,
                      warm_dir=args.warm_start)
        except KeyboardInterrupt:
            progress.log(f"stopped; partial report in {args.out / 'report.json'}; continue with --resume")
            return 130
        except ResumeError as exc:
            progress.log(f"error: {exc}")
            return 2
    print(f"start accuracy {rep['start_accuracy']:.3f} -> final {rep['final_accuracy']:.3f} after {rep['steps']} "
          f"steps, {rep['generated_tokens']:,} generated tokens; report: {args.out / 'report.json'}")
    return 0
