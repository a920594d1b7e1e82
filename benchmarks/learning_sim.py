"""Learning efficiency of each allocator on a synthetic multi-turn task, many seeds in minutes.

    python benchmarks/learning_sim.py --out results.json [--seeds 50] [--budget leaves|tokens] [--quick]

``--merge A.json B.json ... --out F`` combines runs on disjoint seeds (``--first-seed``) into one result.

A small softmax policy shared across prompts is trained by each allocator (through the product's
planner) with its paired advantage estimator (from verl's registry) and verl's policy loss; the
held-out return is computed exactly after every few steps and set against generated tokens.
docs/benchmarks.md ("Learning simulator") describes the task, every design choice and the results.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from pydantic import ValidationError  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import Progress  # noqa: E402

from benchmarks.learnsim.regimes import REGIMES, merge  # noqa: E402
from benchmarks.learnsim.report import diagnostics, markdown, plot  # noqa: E402
from benchmarks.learnsim.run import ESTIMATOR, RunSpec, Settings, reference, run, trace_config  # noqa: E402
from benchmarks.learnsim.stats import merge as merge_parts  # noqa: E402
from benchmarks.learnsim.stats import summarize  # noqa: E402
from verl_trace.gcfreeze import freeze_startup_objects  # noqa: E402

ALLOCATORS = ("uniform", "prompt", "tree_random", "entropy", "trace", "oracle")
QUICK = {"train": {"roots": 8, "steps": 16}, "task": {"train_prompts": 96, "eval_prompts": 256}}


def parse_value(text: str) -> Any:
    return yaml.safe_load(text)


def dotted(pairs: list[str], what: str) -> dict[str, Any]:
    """``a.b=1`` pairs into a nested dict."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"{what}: expected KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = parse_value(value)
    return out


def parse_run(text: str) -> RunSpec:
    """``LABEL=ALLOCATOR[:trace.key=value,...]`` or just ``ALLOCATOR``."""
    label, _, rest = text.partition("=")
    if not rest:
        label, rest = text.split(":", 1)[0], text
    allocator, _, over = rest.partition(":")
    if allocator not in ESTIMATOR:
        raise ValueError(f"--runs {text!r}: unknown allocator {allocator!r}; choose one of {sorted(ESTIMATOR)}")
    overrides = dotted([x for x in over.split(",") if x], f"--runs {text!r}") if over else {}
    return RunSpec(label, allocator, overrides)


def _seed_job(args: tuple[list[RunSpec], Settings, int]) -> tuple[int, dict[str, dict], dict[str, float]]:
    import torch

    torch.set_num_threads(1)
    specs, settings, seed = args
    out, cpu = {}, {}
    ref = None
    for spec in specs:  # uniform first: the others run until they reach its final return (and in
        t0 = time.process_time()  # budget "tokens" match its tokens per step)
        out[spec.label] = run(spec, settings, seed, ref)
        cpu[spec.label] = time.process_time() - t0
        if spec.label == "uniform":
            ref = reference(out["uniform"])
    return seed, out, cpu


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="where to write the JSON results")
    ap.add_argument("--seeds", type=int, default=None, help="seeds (default 50; 4 with --quick)")
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--budget", choices=("leaves", "tokens"), default=None, help="equal leaves (default) or equal generated tokens per step")
    ap.add_argument("--regime", choices=sorted(REGIMES), default="default")
    ap.add_argument("--runs", nargs="+", default=list(ALLOCATORS),
                    help="LABEL=ALLOCATOR[:section.key=value,...] (or just ALLOCATOR): trace.* sections, or train.* "
                         "for this run's own simulator settings; must include uniform")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="simulator settings, e.g. train.lr=0.1 task.gain=0.5")
    ap.add_argument("--quick", action="store_true", help="small sizes, for smoke tests (< 90 s)")
    ap.add_argument("--workers", type=int, default=1, help="processes (seeds run in parallel)")
    ap.add_argument("--plot", default=None, help="PNG of the curves and the paired token ratios")
    ap.add_argument("--markdown", default=None, help="write the result table here")
    ap.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                    help="instead of running: merge results of the same runs on disjoint seeds (--first-seed) into --out")
    args = ap.parse_args(argv)
    console = Console(stderr=True)
    if args.merge:
        result = merge_parts([json.loads(Path(f).read_text()) for f in args.merge])
        result["regime"] = json.loads(Path(args.merge[0]).read_text())["regime"]
        Path(args.out).write_text(json.dumps(result, indent=1, allow_nan=False))
        console.print(markdown(result))
        if args.markdown:
            Path(args.markdown).write_text(markdown(result))
        return 0
    try:
        raw = merge(REGIMES[args.regime], QUICK) if args.quick else dict(REGIMES[args.regime])
        raw = merge(raw, dotted(args.set, "--set"))
        if args.budget:
            raw = merge(raw, {"train": {"budget": args.budget}})
        settings = Settings.model_validate(raw)
        if settings.train.steps % settings.train.eval_every:
            raise ValueError(f"train.steps ({settings.train.steps}) must be a multiple of train.eval_every ({settings.train.eval_every})")
        specs = [parse_run(x) for x in args.runs]
        labels = [s.label for s in specs]
        if len(set(labels)) != len(labels):
            raise ValueError(f"--runs: duplicate labels in {labels}")
        if "uniform" not in labels or next(s for s in specs if s.label == "uniform").allocator != "uniform":
            raise ValueError("--runs must include 'uniform' (the reference every run is paired with)")
        specs.sort(key=lambda s: s.label != "uniform")
        for s in specs:  # fail on a bad override before anything runs
            trace_config(s, settings, settings.task.hops_max, 0)
            if "train" in s.overrides and (s.label == "uniform" or set(s.overrides["train"]) & {"steps", "eval_every", "budget"}):
                raise ValueError(f"--runs {s.label}: train overrides may not change the reference run or the horizon")
    except (ValueError, ValidationError) as e:
        console.print(f"[red]error:[/red] {e}")
        return 2
    n_seeds = args.seeds if args.seeds is not None else (4 if args.quick else 50)
    seeds = list(range(args.first_seed, args.first_seed + n_seeds))
    t_start, c_start = time.perf_counter(), time.process_time()
    results: dict[str, list[dict]] = {s.label: [None] * n_seeds for s in specs}
    cpu: dict[str, float] = dict.fromkeys(labels, 0.0)
    jobs = [(specs, settings, s) for s in seeds]
    # The imports leave ~500k objects (torch, verl) that every full collection would rescan while the
    # runs build millions of tree nodes: ~10 % of the CPU before (docs/benchmarks.md). Changes no result.
    freeze_startup_objects()
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task(f"{n_seeds} seeds × {len(specs)} runs", total=n_seeds)
        if args.workers > 1:
            with ProcessPoolExecutor(args.workers, initializer=freeze_startup_objects) as ex:
                done = ex.map(_seed_job, jobs)
                for seed, out, c in done:
                    for k, v in out.items():
                        results[k][seed - args.first_seed] = v
                    for k, v in c.items():
                        cpu[k] += v
                    bar.advance(task)
        else:
            for job in jobs:
                seed, out, c = _seed_job(job)
                for k, v in out.items():
                    results[k][seed - args.first_seed] = v
                for k, v in c.items():
                    cpu[k] += v
                bar.advance(task)
    st = settings.train
    body = summarize(results, st.steps, st.eval_every)
    result = {
        "seeds": n_seeds,
        "budget": st.budget,
        "regime": args.regime,
        "target_return": body["allocators"]["uniform"]["final_return"]["mean"],
        **body,
        "diagnostics": {k: diagnostics(v, st.steps) for k, v in results.items()},
        "runs": {s.label: {"allocator": s.allocator, "estimator": s.estimator, "overrides": s.overrides} for s in specs},
        "settings": settings.model_dump(),
        "command": " ".join(["python", "benchmarks/learning_sim.py", *(argv if argv is not None else sys.argv[1:])]),
        "timing": {
            "wall_s": time.perf_counter() - t_start,
            "cpu_s_main_process": time.process_time() - c_start,
            "cpu_s_per_run_label": cpu,
            "cpu_s_total_runs": sum(cpu.values()),
            "workers": args.workers,
            "load_average_1m": os.getloadavg()[0],
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1, allow_nan=False))
    table = markdown(result)
    console.print(table)
    console.print(f"CPU {result['timing']['cpu_s_total_runs']:.0f} s for the runs, wall {result['timing']['wall_s']:.0f} s")
    if args.markdown:
        Path(args.markdown).write_text(table)
    if args.plot:
        plot(result, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
