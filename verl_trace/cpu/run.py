"""``python -m verl_trace.cpu.run``: the Search-R1 recipe trained by verl's trainer on this CPU.

    python -m verl_trace.cpu.run --out outputs/cpu_tiny --method trace [HYDRA_OVERRIDE ...]

Builds the assets once (``OUT/assets``, ``verl_trace.cpu.prepare``), starts the BM25 retrieval
server as a child process, runs ``python -m verl_trace.main_trace`` with
``recipes/search_r1/config/cpu_tiny.yaml`` (``VERL_TRACE_CPU=1``; overrides after the options go
to Hydra, e.g. ``trainer.total_training_steps=10``) and stops the server afterwards, errors and
Ctrl-C included. Output: ``OUT/<method>/main_trace.log``, verl's per-step metrics in
``OUT/<method>/metrics.jsonl``, checkpoints in ``OUT/<method>/checkpoints``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .job import METHODS, retrieval_server, run_main_trace
from .prepare import prepare

SUMMARY = ("actor/grad_norm", "training/rollout_probs_diff_max", "critic/score/mean", "trace/branch_points",
           "timing_s/step")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m verl_trace.cpu.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("outputs/cpu_tiny"))
    p.add_argument("--method", choices=METHODS, default="trace")
    p.add_argument("--timeout", type=float, default=None, help="seconds before the job is killed")
    p.add_argument("overrides", nargs="*", help="Hydra overrides for main_trace")
    args = p.parse_args(argv)
    out = args.out.resolve()
    assets = prepare(out / "assets")
    workdir = out / args.method
    with retrieval_server(assets, out) as url:
        run = run_main_trace(assets, workdir, retrieve_url=url, method=args.method, overrides=args.overrides,
                             timeout=args.timeout, ray_tmp=Path("/tmp") / f"vt-ray-{out.name}", echo=True)
    for row in run.step_metrics():
        print(f"step {row['step']}: " + "  ".join(f"{k}={row[k]:.4g}" for k in SUMMARY
                                                   if isinstance(row.get(k), int | float)))
    print(f"main_trace exited with {run.returncode} after {run.seconds:.0f}s; log {run.log}, metrics "
          f"{run.metrics_file}, checkpoints {run.checkpoints}", file=sys.stderr)
    return run.returncode


if __name__ == "__main__":
    sys.exit(main())
