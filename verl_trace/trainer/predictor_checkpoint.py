"""The predictor's checkpoint file follows the rest of verl's checkpoint.

``global_step_N/trace_predictor.pt`` is written next to verl's ``actor/`` and ``data.pt``
(``TraceTrainerMixin._save_checkpoint``). Two of verl's checkpoint settings apply to it as they
apply to the actor's checkpoint:

* ``trainer.max_actor_ckpt_to_keep`` (1 under the deprecated ``remove_previous_ckpt_in_save``):
  once a newer save has succeeded, the files of older saves beyond that number are deleted, by
  verl's own rule (``BaseCheckpointManager.register_checkpoint``: only saves made by this process
  count, as for the actor);
* ``trainer.default_hdfs_dir``: the file is copied to ``DIR/global_step_N/trace_predictor.pt``
  with verl's ``hdfs_io`` (``hdfs://`` through the ``hdfs`` command, any other path as a local copy),
  the layout verl uses for the actor (``DIR/global_step_N/actor``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from omegaconf import DictConfig
from verl.utils import hdfs_io
from verl.utils.checkpoint.checkpoint_manager import BaseCheckpointManager

logger = logging.getLogger(__name__)


def max_to_keep(config: DictConfig) -> int | None:
    """How many actor checkpoints verl keeps (``PPOTrainer._save_checkpoint``'s rule)."""
    trainer = config.trainer
    if trainer.get("remove_previous_ckpt_in_save", False):
        return 1
    return trainer.get("max_actor_ckpt_to_keep", None)


class PredictorFileRetention(BaseCheckpointManager):
    """verl's retention rule for checkpoints, applied to the predictor's files.

    Only the bookkeeping of verl's checkpoint manager is used (``previous_saved_paths``,
    ``register_checkpoint``), so ``BaseCheckpointManager.__init__`` is not called: it wants a model,
    an optimizer and an initialized process group, none of which a file has. What is removed is a
    file, not verl's folder: the folder stays with whatever verl keeps in it."""

    def __init__(self) -> None:
        self.previous_saved_paths: list[str] = []

    def remove_previous_save_local_path(self, path: str | list[str]) -> None:
        for p in [path] if isinstance(path, str) else path:
            Path(p).unlink(missing_ok=True)
            logger.info("removed TRACE predictor state %s (trainer.max_actor_ckpt_to_keep)", p)


def copy_to_hdfs(local_file: str | os.PathLike, config: DictConfig, global_steps: int) -> str | None:
    """Copy ``local_file`` to ``default_hdfs_dir/global_step_N/`` (``None`` if no such dir is set)."""
    root = config.trainer.get("default_hdfs_dir", None)
    if not root:
        return None
    folder = os.path.join(root, f"global_step_{global_steps}")
    hdfs_io.makedirs(folder, exist_ok=True)
    target = os.path.join(folder, Path(local_file).name)
    hdfs_io.copy(src=str(local_file), dst=target)
    return target
