"""The one place where ``verl_trace.cpu`` uses a name verl does not publish.

verl 0.9.1 has no API for adding a worker-side rollout class: ``get_rollout_class`` reads the
module-level dict ``verl.workers.rollout.base._ROLLOUT_REGISTRY`` (keys ``(name, mode)``, values
dotted class paths). This is why ``pyproject.toml`` pins ``verl==0.9.1``: a verl release that
renames the dict breaks ``rollout.name=hf`` (``tests/trainer/test_cpu_platform.py`` notices).
"""

from __future__ import annotations


def register_rollout_adapter(name: str, class_path: str, mode: str = "async") -> None:
    """``get_rollout_class(name, mode)`` returns the class at ``class_path`` (imported lazily by verl)."""
    from verl.workers.rollout import base

    registry = getattr(base, "_ROLLOUT_REGISTRY", None)
    if not isinstance(registry, dict):
        raise RuntimeError(
            "verl.workers.rollout.base._ROLLOUT_REGISTRY is gone: this verl is not 0.9.1, which verl-trace's "
            "CPU support (VERL_TRACE_CPU) is written against"
        )
    registry[(name, mode)] = class_path
