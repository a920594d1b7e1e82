"""A resumable RL checkpoint: model + tokenizer (``save_pretrained``), optimizer, predictor, RNG
states, step, sampler position and the curves so far, written after every step.

The directory is replaced atomically (written next to it, then renamed), so an interrupted save
leaves the previous checkpoint intact. A checkpoint records the settings it was trained with;
resuming under different settings is refused, naming the first field that differs, except for
``RESUMABLE_CHANGES`` (where a run stops is not part of how it trains).
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

STATE = "state.pt"
RESUMABLE_CHANGES = frozenset({"rl.steps"})  # e.g. --resume --steps 40 continues a 24-step run to 40


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def save(path: Path, model: Any, tokenizer: Any, state: dict[str, Any]) -> Path:
    path = Path(path)
    tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    torch.save({**state, "rng": rng_state()}, tmp / STATE)
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
    return path


def exists(path: Path) -> bool:
    return (Path(path) / STATE).is_file()


def load_state(path: Path) -> dict[str, Any]:
    """The saved state (``weights_only=False``: it holds Python RNG tuples and the curves; only
    load checkpoints you wrote)."""
    return torch.load(Path(path) / STATE, weights_only=False)


def first_difference(saved: Any, current: Any, where: str = "",
                     ignore: frozenset[str] = RESUMABLE_CHANGES) -> str | None:
    """Dotted path of the first differing field of two nested settings dicts (fields in ``ignore``
    aside), or None."""
    if where in ignore:
        return None
    if isinstance(saved, dict) and isinstance(current, dict):
        for key in sorted(set(saved) | set(current)):
            diff = first_difference(saved.get(key), current.get(key), f"{where}.{key}" if where else key, ignore)
            if diff:
                return diff
        return None
    return None if saved == current else where or "<root>"
