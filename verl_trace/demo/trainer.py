"""The RL phase: verl's own trainer, ``python -m verl_trace.main_trace``, as a child process.

What it runs is the product path at toy scale (``recipes/search_r1/config/cpu_tiny.yaml`` on the
``cpu`` platform, ``verl_trace.cpu``): verl's PPO trainer with the FSDP2 actor, TransferQueue,
the ``hf`` rollout server serving the policy, TRACE's tree rollout, planner, shared predictor and
estimator, verl's policy loss, verl's validation as the held-out evaluation and verl's
checkpoints. This module turns the demo's settings into Hydra overrides (:func:`overrides`),
writes the job's inputs (:func:`write_inputs`: train and held-out parquet, the tool config),
starts the job (``verl_trace.cpu.job.run_main_trace``) and follows it by reading verl's metrics
file while it runs (:class:`Follower`).

Files of a run, in the demo's output folder ``OUT``:

* ``checkpoints/global_step_N/``: verl's checkpoint (``actor/``, ``data.pt``) and TRACE's
  ``trace_predictor.pt``; ``latest_checkpointed_iteration.txt``. A resumed job continues from the
  latest one (``trainer.resume_mode=auto``); a fresh job starts with ``resume_mode=disable``.
* ``metrics.<attempt>.jsonl``: verl's file logger, one line per step with verl's metrics
  (``actor/grad_norm``, ``training/rollout_probs_diff_max``, ``timing_s/*``, ``val-*``) and
  TRACE's (``trace/*``, ``plan/*``, ``predictor/*``); one file per start of the job, because
  verl's logger truncates its file.
* ``validation/<step>.jsonl``: verl's dump of every held-out generation (``trainer.validation_data_dir``).
* ``trees/step_<N>-*.json``: every training step's rollout trees (``trace.tree_dump_dir``).
* ``main_trace.log``: the job's whole output, Ray workers included.
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..config import TraceConfig
from ..cpu.job import TrainerRun, read_step_metrics, run_main_trace
from ..cpu.prepare import Assets
from .family import DemoTask, SearchTask
from .settings import DemoSettings
from .world import prepare_data

METHOD = {"trace": "trace", "tree_grpo": "tree_grpo"}  # estimator -> the recipe's method=; else grpo


def write_inputs(root: Path, train: Sequence[dict[str, Any]], held_out: Sequence[dict[str, Any]],
                 tool_config: dict[str, Any], tool_file: str = "search_tool.yaml") -> Assets:
    """The job's inputs in ``root``: train and held-out rows (verl's parquet layout, as the
    recipes' ``prepare_data.py`` write them) and verl's tool YAML (``tool_file``). The model comes
    from the warm start (an override). Nothing here is specific to a task."""
    assets = Assets(Path(root).resolve(), tool_file)
    write = prepare_data().write_parquet
    write(list(train), assets.train_file)
    write(list(held_out), assets.val_file)
    assets.tool_config.write_text(yaml.safe_dump(tool_config, sort_keys=False))
    return assets


def method(settings: DemoSettings) -> str:
    """The recipe's ``method=`` for the allocator's estimator (``trace:`` and the estimator are
    overridden to the allocator's own pairing anyway)."""
    return METHOD.get(settings.estimator, "grpo")


def overrides(settings: DemoSettings, assets: Assets, model_dir: Path, out: Path, *, resume: bool,
              task: DemoTask | None = None) -> list[str]:
    """Hydra overrides of ``cpu_tiny.yaml`` that make main_trace run the demo's settings on its
    task (default: the search task), the task's own (``DemoTask.overrides``: reward, agent loop) last."""
    s, rl, ep, ev = settings, settings.rl, settings.task, settings.eval
    if rl.prompts_per_step % rl.mini_batches:
        raise ValueError(f"rl.mini_batches ({rl.mini_batches}) must divide rl.prompts_per_step ({rl.prompts_per_step})")
    trace = s.trace
    out = Path(out).resolve()
    # verl splits a mini-batch (and the step's rows, for log-probs) into equal micro-batches
    rows = rl.prompts_per_step * rl.leaves_per_prompt
    micro = math.gcd(rl.micro_batch_size, rows // rl.mini_batches)
    return [
        # what to train, on what
        f"algorithm.adv_estimator={s.estimator}",
        *trace_overrides(trace.model_copy(update={"tree_dump_dir": str(out / "trees")})),
        f"actor_rollout_ref.model.path={Path(model_dir).resolve()}",
        "actor_rollout_ref.model.trust_remote_code=true",  # the shared name updates (shared_names.py)
        f"data.train_files={assets.train_file}",
        f"data.val_files={assets.val_file}",
        "data.val_max_samples=-1",
        f"data.seed={s.seed}",
        f"data.train_batch_size={rl.prompts_per_step}",
        f"data.max_prompt_length={ep.prompt_length}",
        f"data.max_response_length={ep.response_length}",
        # the episode
        f"actor_rollout_ref.rollout.n={rl.leaves_per_prompt}",
        f"actor_rollout_ref.rollout.temperature={rl.temperature}",
        f"actor_rollout_ref.rollout.max_model_len={ep.prompt_length + ep.response_length}",
        f"actor_rollout_ref.rollout.multi_turn.max_assistant_turns={ep.max_turns}",
        f"actor_rollout_ref.rollout.multi_turn.max_tool_response_length={ep.max_tool_response_chars}",
        f"actor_rollout_ref.rollout.multi_turn.tool_config_path={assets.tool_config}",
        f"actor_rollout_ref.rollout.engine_kwargs.hf.max_batch_size={rl.max_batch_size}",
        f"+actor_rollout_ref.rollout.engine_kwargs.hf.seed={s.seed}",
        f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={micro}",
        # the update
        f"actor_rollout_ref.actor.optim.lr={rl.lr}",
        f"actor_rollout_ref.actor.optim.lr_warmup_steps={rl.lr_warmup_steps}",
        f"actor_rollout_ref.actor.optim.weight_decay={rl.weight_decay}",
        f"actor_rollout_ref.actor.optim.clip_grad={rl.max_grad_norm}",
        f"actor_rollout_ref.actor.clip_ratio={rl.clip_ratio}",
        f"actor_rollout_ref.actor.clip_ratio_low={rl.clip_ratio}",
        f"actor_rollout_ref.actor.clip_ratio_high={rl.clip_ratio}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={rl.prompts_per_step // rl.mini_batches}",
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={micro}",
        f"actor_rollout_ref.actor.fsdp_config.seed={s.seed}",
        # the run
        f"trainer.experiment_name=demo_{s.task_name + '_' if s.task_name != 'search' else ''}{trace.allocator}_seed{s.seed}",
        f"trainer.total_training_steps={rl.steps}",
        "trainer.total_epochs=1000",  # the step count ends the run
        f"trainer.save_freq={rl.save_every}",
        f"trainer.max_actor_ckpt_to_keep={rl.keep_checkpoints}",
        f"trainer.test_freq={ev.every}",
        f"trainer.val_before_train={str(not resume).lower()}",  # a resumed run has its start evaluation
        f"trainer.validation_data_dir={out / 'validation'}",
        f"trainer.resume_mode={'auto' if resume else 'disable'}",
        *(task or SearchTask(settings)).overrides(),
    ]


def trace_overrides(trace: TraceConfig) -> list[str]:
    """``trace.allocator`` and ``trace.<field>=<value>`` for every other field that differs from the
    schema's default."""
    def walk(value: Any, default: Any, where: str) -> list[str]:
        if isinstance(value, dict):
            return [o for k in value for o in walk(value[k], default.get(k), f"{where}.{k}")]
        return [] if value == default else [f"{where}={'null' if value is None else json.dumps(value)}"]

    diff = walk(trace.model_dump(mode="json"), TraceConfig().model_dump(mode="json"), "trace")
    return [f"trace.allocator={trace.allocator}", *(o for o in diff if not o.startswith("trace.allocator="))]


def metrics_files(out: Path) -> list[Path]:
    """``metrics.<attempt>.jsonl`` in the order the job wrote them."""
    found = [(int(m[1]), p) for p in Path(out).glob("metrics.*.jsonl") if (m := re.fullmatch(r"metrics\.(\d+)\.jsonl", p.name))]
    return [p for _, p in sorted(found)]


def read_metrics(out: Path) -> list[dict[str, Any]]:
    """One dict per logged step over every attempt (a resumed attempt's rows replace the rows of
    the steps it redid); the start evaluation is step 0. Rows of the same step (verl logs the
    start evaluation on its own line) are merged."""
    by_step: dict[int, dict[str, Any]] = {}
    for path in metrics_files(out):
        seen: set[int] = set()
        for row in read_step_metrics(path):
            step = int(row["step"])
            if step not in seen:
                by_step[step] = {}
                seen.add(step)
            by_step[step].update(row)
    return [by_step[k] for k in sorted(by_step)]


@dataclass
class RLJob:
    """One start of the job: ``run()`` blocks until main_trace exits (KeyboardInterrupt kills its
    process tree and propagates)."""

    settings: DemoSettings
    out: Path
    assets: Assets
    model_dir: Path
    task: DemoTask
    resume: bool = False
    on_metrics: Callable[[list[dict[str, Any]]], None] | None = None
    ray_tmp: Path | None = None

    def attempt(self) -> int:
        files = metrics_files(self.out)
        return int(re.fullmatch(r"metrics\.(\d+)\.jsonl", files[-1].name)[1]) + 1 if files else 1

    def run(self) -> TrainerRun:
        metrics_file = Path(self.out).resolve() / f"metrics.{self.attempt()}.jsonl"
        follower = Follower(self.out, self.on_metrics) if self.on_metrics else None
        if follower:
            follower.start()
        try:
            return run_main_trace(
                self.assets, self.out, retrieve_url=self.task.retrieve_url, method=method(self.settings),
                overrides=overrides(self.settings, self.assets, self.model_dir, self.out, resume=self.resume,
                                    task=self.task),
                ray_tmp=self.ray_tmp, env={"VERL_FILE_LOGGER_PATH": str(metrics_file)},
            )  # fmt: skip
        finally:
            if follower:
                follower.stop()


class Follower(threading.Thread):
    """Calls ``on_metrics(rows)`` whenever verl's metrics files grow (every ``every_s`` seconds)."""

    def __init__(self, out: Path, on_metrics: Callable[[list[dict[str, Any]]], None], every_s: float = 2.0):
        super().__init__(daemon=True, name="demo-metrics-follower")
        self.out, self.on_metrics, self.every_s = Path(out), on_metrics, every_s
        self._stop_event = threading.Event()
        self._size = -1

    def run(self) -> None:
        while not self._stop_event.wait(self.every_s):
            self.poll()

    def poll(self) -> None:
        size = sum(p.stat().st_size for p in metrics_files(self.out))
        if size != self._size:
            self._size = size
            try:
                rows = read_metrics(self.out)
            except ValueError:  # a line being written: next time
                self._size = -1
                return
            if rows:
                self.on_metrics(rows)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)
        self.poll()
