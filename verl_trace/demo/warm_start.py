"""The warm start: tokenizer and tiny model built here, imperfect demonstrations generated through
the real agent loop and the task's tools (``family.DemoTask``), and the short supervised phase. Saved to a directory that
the RL phase (and every allocator of a benchmark seed) starts from; reused when it already holds
a warm start made with the same settings.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import model as model_io
from . import shared_names
from .demonstrations import demonstration_stats, dump_examples
from .family import DemoTask, demo_task
from .progress import DemoProgress
from .settings import DemoSettings
from .sft import train_sft

INFO = "warm_start.json"
FORMAT = 2  # 2: the model directory holds shared_names' model class (older warm starts are rebuilt)


@dataclass
class WarmStart:
    path: Path
    info: dict[str, Any]

    def load(self):
        """(tokenizer, model) as saved after the supervised phase."""
        return model_io.load(self.path)


def fingerprint(settings: DemoSettings, task: DemoTask | None = None) -> dict[str, Any]:
    """What a warm start depends on (not the allocator or the RL settings); the task adds its own
    (``DemoTask.fingerprint``)."""
    task = task or demo_task(settings)
    return {"format": FORMAT, "seed": settings.seed, **task.fingerprint(),
            **settings.model_dump(include={"model", "task", "teacher", "sft"})}


def find(path: Path, settings: DemoSettings, task: DemoTask | None = None) -> WarmStart | None:
    info_path = Path(path) / INFO
    if not info_path.is_file():
        return None
    info = json.loads(info_path.read_text())
    return WarmStart(Path(path), info) if info.get("fingerprint") == fingerprint(settings, task) else None


def prepare(settings: DemoSettings, path: Path, retrieve_url: str | None, progress: DemoProgress,
            task: DemoTask | None = None) -> WarmStart:
    """Build and save the warm start at ``path`` (or reuse the one already there). ``task``: the
    demo's task (default: ``settings.task_name``'s; the search task's tools call the server at ``retrieve_url``)."""
    path = Path(path)
    task = task or demo_task(settings, retrieve_url)
    if (found := find(path, settings, task)) is not None:
        progress.log(f"warm start: reusing {path} (start accuracy measured in the RL phase)")
        return found
    t0 = time.perf_counter()
    torch.manual_seed(settings.seed)
    tokenizer, model = task.build_model()
    progress.log(f"model: Qwen2, {model_io.parameter_count(model) / 1e6:.2f}M parameters, vocabulary {len(tokenizer)}")
    t_demo = time.perf_counter()
    demos = task.demonstrations(tokenizer)
    stats = demonstration_stats(demos)
    progress.log(f"demonstrations: {len(demos)} through the agent loop and the {task.name} task's tools, teacher "
                 f"accuracy {stats['teacher_accuracy']:.2f} ({time.perf_counter() - t_demo:.0f}s)")
    progress.phase("supervised", settings.sft.steps)

    def on_step(step: int, loss: float) -> None:
        progress.update("supervised", info=f"loss {loss:.3f}")

    t_sft = time.perf_counter()
    name_ids = getattr(model.config, shared_names.CONFIG_KEY)
    losses = train_sft(model, demos, settings.sft, tokenizer.pad_token_id, name_ids=name_ids, seed=settings.seed,
                       on_step=on_step)
    model_io.save(tokenizer, model, path)
    info = {
        "fingerprint": fingerprint(settings),
        "parameters": model_io.parameter_count(model),
        "vocab_size": len(tokenizer),
        **stats,
        "sft_steps": len(losses),
        "sft_loss_first": losses[0],
        "sft_loss_last": float(np.mean(losses[-10:])),
        "sft_loss_curve": losses[:: max(1, len(losses) // 100)],
        "seconds_demonstrations": t_sft - t_demo,
        "seconds_sft": time.perf_counter() - t_sft,
        "seconds_total": time.perf_counter() - t0,
        "examples": json.loads(dump_examples(demos, tokenizer, 4)),
    }
    (path / INFO).write_text(json.dumps(info, indent=1))
    return WarmStart(path, info)
