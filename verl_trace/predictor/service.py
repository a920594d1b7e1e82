"""The job-wide shared predictor: one named Ray actor for all TRACE rollout workers.

Layer 2, beside the predictors it serves: it needs only them, the config schema and Ray (imported
in the functions that use it), so the rollout workers (layer 5) and the trainer (layer 6) both
import it from below.

The predictor must generalize across prompts and prefixes, so every worker of a job queries and
trains the same one. ``PredictorService`` wraps ``build_predictor(trace.predictor)`` and keeps
calibration of its predictions (Brier, ECE, AUC of the predictions made *before* each update) for
the trainer to log. It is a plain class, so it is tested without Ray; ``create_predictor_actor``
runs it as a named actor that workers find with ``get_predictor_actor``, and ``RemotePredictor``
lets a ``TreePlanner`` use that actor as if it were a local ``Predictor``.

Checkpoints: ``save_predictor`` / ``load_predictor`` move the state through the *calling* process
(the trainer), so the file lands in the trainer's ``global_step_N`` folder wherever the actor runs.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..config import PredictorConfig, TraceConfig
from . import build_predictor
from .base import AnchorBatch, Prediction, Predictor
from .calibration import calibration_report

PREDICTOR_ACTOR_NAME = "verl_trace_predictor"
STATE_FILE = "trace_predictor.pt"
STATE_FORMAT = 1
# Settings that change what a saved state means; a restore with different values is refused.
_STATE_DEFINING = ("kind", "featurizer", "feature_dim", "model_path", "members", "hidden")


class PredictorService:
    """A predictor plus the bookkeeping the trainer logs. Every method is one actor call."""

    def __init__(self, predictor_config: PredictorConfig | Mapping[str, Any]):
        self.cfg = PredictorConfig.model_validate(predictor_config)
        self.predictor: Predictor = build_predictor(self.cfg)
        self.updates = 0
        self.anchors_seen = 0
        self._window_p: list[np.ndarray] = []
        self._window_y: list[np.ndarray] = []
        self._window_metrics: list[dict[str, float]] = []

    def predict(self, anchors: AnchorBatch) -> Prediction:
        return self.predictor.predict(anchors)

    def update(self, anchors: AnchorBatch, outcomes: np.ndarray) -> dict[str, float]:
        """Train on (anchor, outcome) pairs, e.g. ``TreePlanner.training_batch()`` of a finished step."""
        if len(anchors) == 0:
            return {}
        y = np.asarray(outcomes, dtype=np.float64)
        p_before = self.predictor.predict(anchors).p
        metrics = self.predictor.update(anchors, y)
        self.updates += 1
        self.anchors_seen += len(anchors)
        self._window_p.append(np.asarray(p_before, np.float64))
        self._window_y.append(y)
        self._window_metrics.append(metrics)
        return metrics

    def pop_metrics(self) -> dict[str, float]:
        """Calibration of every prediction scored since the last call (then the window restarts),
        the mean of the predictor's own update metrics, and lifetime counters."""
        out = {"predictor/updates_total": float(self.updates), "predictor/anchors_total": float(self.anchors_seen)}
        if self._window_y:
            p, y = np.concatenate(self._window_p), np.concatenate(self._window_y)
            out.update(calibration_report(p, y, prefix="predictor/"))
            out["predictor/anchors"] = float(y.size)
            out["predictor/success_rate"] = float(y.mean())
            keys = {k for m in self._window_metrics for k in m}
            for k in sorted(keys):
                vals = [m[k] for m in self._window_metrics if k in m and np.isfinite(m[k])]
                if vals:
                    out.setdefault(k, float(np.mean(vals)))
        self._window_p, self._window_y, self._window_metrics = [], [], []
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "config": self.cfg.model_dump(),
            "predictor": self.predictor.state_dict(),
            "updates": self.updates,
            "anchors_seen": self.anchors_seen,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"predictor state has format {state.get('format')!r}, expected {STATE_FORMAT}")
        saved = PredictorConfig.model_validate(state["config"])
        for name in _STATE_DEFINING:
            if getattr(saved, name) != getattr(self.cfg, name):
                raise ValueError(
                    f"trace.predictor.{name}: the checkpoint was written with {getattr(saved, name)!r}, "
                    f"the config says {getattr(self.cfg, name)!r}; restore with the same predictor settings"
                )
        self.predictor.load_state_dict(state["predictor"])
        self.updates = int(state["updates"])
        self.anchors_seen = int(state["anchors_seen"])

    def ready(self) -> bool:
        return True


class RemotePredictor(Predictor):
    """A ``Predictor`` whose calls go to the shared actor; what a rollout worker hands its planner.

    ``loop``: the event loop of the async Ray actor that owns this object (a rollout worker). Ray
    wants async actors to ``await`` object refs rather than block in ``ray.get``, and the planner
    calls ``predict`` synchronously; so the worker runs its planner in a thread
    (``TreeRolloutRunner(plan_in_thread=True)``) and each call awaits the actor's reply on
    ``loop`` while only that thread waits. Calling from ``loop``'s own thread would deadlock and
    raises instead. Without ``loop``, calls block in ``ray.get`` (driver code, plain processes).
    """

    def __init__(self, handle: Any, loop: asyncio.AbstractEventLoop | None = None):
        self.handle = handle
        self.loop = loop
        self.name = "remote"

    def _call(self, method: str, *args: Any) -> Any:
        import ray

        ref = getattr(self.handle, method).remote(*args)
        if self.loop is None:
            return ray.get(ref)
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            raise RuntimeError(
                "RemotePredictor called on its own event loop, which would block it; run the planner "
                "off the loop (TreeRolloutRunner(plan_in_thread=True))"
            )
        return asyncio.run_coroutine_threadsafe(_resolve(ref), self.loop).result()

    def predict(self, anchors: AnchorBatch) -> Prediction:
        return self._call("predict", anchors)

    def update(self, anchors: AnchorBatch, outcomes: np.ndarray) -> dict[str, float]:
        return self._call("update", anchors, np.asarray(outcomes, np.float64))

    def state_dict(self) -> dict[str, Any]:
        return self._call("state_dict")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._call("load_state_dict", state)


async def _resolve(ref: Any) -> Any:
    return await ref


def create_predictor_actor(trace_config: TraceConfig, name: str = PREDICTOR_ACTOR_NAME, num_cpus: float = 1) -> Any:
    """Start the named predictor actor in the current job's namespace (it dies with its creator).
    Waits until it is constructed, so a bad predictor config fails here, at start-up."""
    import ray

    try:
        ray.get_actor(name)
    except ValueError:
        pass
    else:
        raise RuntimeError(f"a Ray actor named {name!r} already exists in this job; one predictor per job")
    handle = ray.remote(PredictorService).options(name=name, num_cpus=num_cpus).remote(trace_config.predictor.model_dump())
    ray.get(handle.ready.remote())
    return handle


def get_predictor_actor(name: str = PREDICTOR_ACTOR_NAME) -> Any:
    """The shared predictor of this job, for rollout workers."""
    import ray

    try:
        return ray.get_actor(name)
    except ValueError:
        raise RuntimeError(
            f"no predictor actor {name!r} in this Ray job: the TRACE trainer creates it at start-up for "
            "allocators that need a predictor (trace.allocator=trace|prompt)"
        ) from None


def save_predictor(handle: Any, folder: str | os.PathLike) -> Path:
    """Write the actor's state to ``folder/trace_predictor.pt`` (atomically: temp file + rename)."""
    import ray
    import torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / STATE_FILE
    tmp = path.with_suffix(".tmp")
    torch.save(ray.get(handle.state_dict.remote()), tmp)
    os.replace(tmp, path)
    return path


def load_predictor(handle: Any, folder: str | os.PathLike) -> Path | None:
    """Restore the actor from ``folder/trace_predictor.pt``; ``None`` if the folder has none."""
    import ray
    import torch

    path = Path(folder) / STATE_FILE
    if not path.is_file():
        return None
    # Our own checkpoint file (numpy arrays, optimizer and RNG state): the same trust as verl's data.pt.
    state = torch.load(path, weights_only=False)
    ray.get(handle.load_state_dict.remote(state))
    return path
