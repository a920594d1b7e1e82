"""TRACE's variant of verl's V1 ``PPOTrainer``: five small overrides, everything else is verl.

``TraceTrainerMixin`` goes in front of whichever trainer class verl registered for
``trainer.v1.trainer_mode`` (``trace_trainer_class``); ``install_trace_trainer`` makes verl's
trainer registry hand that class out in the current process, which is how ``TraceTaskRunner``
runs verl's unchanged ``TaskRunnerV1.run``. The overrides:

* ``_compute_advantage``: for ``trace`` / ``tree_grpo``, the estimator also receives each row's
  tree metadata from TransferQueue (see ``tree_advantage``); verl computes the rest.
* ``_next_train_batch``: submits the candidate pool (``trace.allocation.pool_factor`` times the
  batch) and tells the TRACE rollout how many of its prompts become roots (``protocol.ROOTS_KEY``).
* ``step``: adds the TRACE rollout's metrics (``pop_rollout_metrics``) and the shared predictor's
  calibration metrics to the step's metrics.
* ``_save_checkpoint`` / ``_load_checkpoint``: the predictor's state goes into the same
  ``global_step_N`` folder as verl's checkpoint (written before verl marks the folder as the latest),
  follows ``trainer.max_actor_ckpt_to_keep`` and ``trainer.default_hdfs_dir`` like the actor's
  (``predictor_checkpoint``) and comes back on resume.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ..allocation import allocator_class, pool_size
from ..config import TraceConfig, load_trace_config
from ..metrics import merge_step_metrics
from ..predictor.service import create_predictor_actor, load_predictor, save_predictor
from ..protocol import METRICS_PARTITION, ROOTS_KEY
from .config_check import TREE_ESTIMATORS, uses_trace_rollout
from .predictor_checkpoint import PredictorFileRetention, copy_to_hdfs, max_to_keep
from .tree_advantage import bound_estimator, fetch_tree_columns, tree_batch_metrics

logger = logging.getLogger(__name__)
logger.setLevel(os.getenv("VERL_LOGGING_LEVEL", "INFO"))  # as verl's trainer modules: checkpoint lines show


def checkpoint_dir(config: DictConfig, global_steps: int) -> str:
    """The ``global_step_N`` folder verl's ``_save_checkpoint`` writes for this step."""
    return os.path.join(config.trainer.default_local_dir, f"global_step_{global_steps}")


def resumed_checkpoint_dir(config: DictConfig, global_steps: int) -> str | None:
    """The folder verl's ``_load_checkpoint`` resumed from (``None`` when it started fresh)."""
    if global_steps <= 0 or config.trainer.resume_mode == "disable":
        return None
    if config.trainer.resume_mode == "resume_path":
        folder = config.trainer.resume_from_path
    else:
        folder = checkpoint_dir(config, global_steps)
    return folder if os.path.isabs(folder) else os.path.join(os.getcwd(), folder)


class TraceTrainerMixin:
    """Put before a ``PPOTrainer`` subclass in the bases (``trace_trainer_class`` does)."""

    config: DictConfig
    global_steps: int

    def __init__(self, config: DictConfig):
        super().__init__(config)
        self.trace_config: TraceConfig = load_trace_config(config.get("trace"))
        self.trace_rollout = uses_trace_rollout(config)
        # Whole dataloader fetches (data.gen_batch_size, by default the train batch).
        batch_size = config.data.train_batch_size
        self.trace_pool_size = pool_size(
            self.trace_config.allocation.pool_factor, batch_size, fetch=config.data.get("gen_batch_size", None) or batch_size
        )
        self.predictor = None
        self.predictor_files = PredictorFileRetention()
        if self.trace_rollout and allocator_class(self.trace_config.allocator).needs_predictor:
            # Before any worker exists: rollout workers look it up by name.
            self.predictor = create_predictor_actor(self.trace_config)

    # ------------------------------------------------------------------ rollout input
    def _next_train_batch(self, num_prompts: int | None = None):
        if not self.trace_rollout:
            return super()._next_train_batch(num_prompts)
        from verl.utils import tensordict_utils as tu

        # A step's regular fetch submits the candidate pool; refills (DAPO, failed groups) ask for
        # an exact number of prompts, which all become roots.
        n_roots = num_prompts if num_prompts is not None else self.config.data.train_batch_size
        batch = super()._next_train_batch(num_prompts if num_prompts is not None else self.trace_pool_size)
        tu.assign_non_tensor_data(batch, ROOTS_KEY, n_roots)
        return batch

    # ------------------------------------------------------------------ advantage
    def _compute_advantage(self, batch: Any, metrics: dict) -> Any:
        estimator = self.config.algorithm.adv_estimator
        if estimator not in TREE_ESTIMATORS:
            return super()._compute_advantage(batch, metrics)
        columns = fetch_tree_columns(batch)
        tree_metrics: dict[str, float] = {}

        def record(kwargs: dict[str, Any], advantages: Any) -> None:
            tree_metrics.update(
                tree_batch_metrics(
                    columns, kwargs["index"], kwargs["token_level_rewards"], kwargs["response_mask"], advantages
                )
            )

        extra = {**columns.estimator_kwargs(), "trace_config": self.trace_config.advantage}
        with bound_estimator(estimator, extra, on_result=record):
            batch = super()._compute_advantage(batch, metrics)
        metrics.update(tree_metrics)
        return batch

    # ------------------------------------------------------------------ metrics
    def step(self, metrics: dict, timing_raw: dict) -> Any:
        batch = super().step(metrics, timing_raw)
        if self.trace_rollout:
            metrics.update(pop_rollout_metrics())
        if self.predictor is not None:
            import ray

            metrics.update(ray.get(self.predictor.pop_metrics.remote()))
        return batch

    # ------------------------------------------------------------------ checkpoints
    def _save_checkpoint(self) -> None:
        saved = self._save_trace_state()
        super()._save_checkpoint()
        if saved is not None:  # verl's save succeeded: older files go as verl's actor checkpoints go
            self.predictor_files.register_checkpoint(str(saved), max_to_keep(self.config))

    def _load_checkpoint(self) -> None:
        super()._load_checkpoint()
        self._restore_trace_state()

    def _save_trace_state(self) -> Path | None:
        if self.predictor is None:
            return None
        path = save_predictor(self.predictor, checkpoint_dir(self.config, self.global_steps))
        logger.info("saved TRACE predictor state to %s", path)
        remote = copy_to_hdfs(path, self.config, self.global_steps)
        if remote is not None:
            logger.info("copied TRACE predictor state to %s", remote)
        return path

    def _restore_trace_state(self) -> None:
        folder = resumed_checkpoint_dir(self.config, self.global_steps)
        if self.predictor is None or folder is None:
            return
        path = load_predictor(self.predictor, folder)
        if path is None:
            logger.warning(
                "resumed from %s, which has no TRACE predictor state (a checkpoint of a non-TRACE run?); "
                "the predictor starts fresh",
                folder,
            )
        else:
            logger.info("restored TRACE predictor state from %s", path)


def pop_rollout_metrics() -> dict[str, float]:
    """The TRACE rollout workers' ``trace/*`` and ``plan/*`` metrics put since the last call, merged
    into one step's (``merge_step_metrics``). In the sync trainer a step's sample returns only once
    every root is finished, and workers put their metrics before finishing any root."""
    import transfer_queue as tq

    items = (tq.kv_list(METRICS_PARTITION) or {}).get(METRICS_PARTITION, {})
    if not items:
        return {}
    tq.kv_clear(keys=list(items), partition_id=METRICS_PARTITION)
    return merge_step_metrics(list(items.values()))


def trace_trainer_class(base: type) -> type:
    """``base`` (a verl ``PPOTrainer`` subclass) with ``TraceTrainerMixin`` in front."""
    if issubclass(base, TraceTrainerMixin):
        return base
    return type(f"Trace{base.__name__}", (TraceTrainerMixin, base), {"__module__": __name__, "__doc__": base.__doc__})


def install_trace_trainer(trainer_mode: str) -> type:
    """Make verl's trainer registry return the TRACE variant of ``trainer_mode`` in this process
    (the TaskRunner actor), so verl's ``TaskRunnerV1.run`` builds it unchanged."""
    from verl.trainer.ppo.v1 import get_trainer_cls
    from verl.trainer.ppo.v1.trainer_base import TRAINER_REGISTRY

    cls = trace_trainer_class(get_trainer_cls(trainer_mode))
    TRAINER_REGISTRY[trainer_mode] = cls
    return cls
