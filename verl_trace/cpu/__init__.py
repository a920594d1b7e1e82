"""verl's own trainer on a machine without GPUs, switched on by one setting: ``VERL_TRACE_CPU=1``.

verl 0.9.1 runs its whole PPO trainer (FSDP2 actor and reference, TransferQueue, agent loops, the
V1 sync trainer) on CPU once three things exist that it lacks, all added here through verl's own
extension points and without editing verl:

* a ``cpu`` platform in verl's ``PlatformRegistry`` (``platform.py``): gloo, a stand-in for
  ``torch.cuda``, device ``"cpu"``; verl's FSDP engines registered for it; torch's
  ``init_process_group`` tolerating the ``cpu:gloo,cpu:gloo`` backend string verl builds;
* an ``hf`` rollout backend (``hf_rollout.py``): verl's rollout replica, a server actor around
  our batching transformers engine (``verl_trace.rollout.hf_client.HFLLMClient``) and the
  worker-side adapter that receives the actor's weights after every step;
* configuration only verl already has: FSDP2, sdpa attention, one TransferQueue storage unit, a
  logical GPU for Ray (``recipes/search_r1/config/cpu_tiny.yaml``).

The switch is read when ``verl_trace.plugin`` is imported, i.e. on ``import verl`` in every
process, Ray actors included, through the ``verl.plugins`` entry point. ``main_trace`` forwards it
to Ray's ``runtime_env`` so it reaches workers on an existing cluster too. With it unset nothing
here is imported and verl behaves exactly as without this package.

The platform and the rollout backend are independent: another rollout backend (e.g. vLLM's CPU
build with ``rollout.name=vllm``) can run on the ``cpu`` platform (``register_platform``).
"""

from __future__ import annotations

import os

ENV_VAR = "VERL_TRACE_CPU"
_TRUE = ("1", "true", "yes", "on")


def enabled() -> bool:
    """Whether ``VERL_TRACE_CPU`` asks for the CPU platform in this process."""
    return os.environ.get(ENV_VAR, "").strip().lower() in _TRUE


def activate() -> None:
    """Register the ``cpu`` platform (and make it verl's platform in this process) and the ``hf``
    rollout backend. Idempotent; must run before verl first asks for its platform, which
    ``verl_trace.plugin`` guarantees."""
    from .hf_rollout import register_hf_rollout
    from .platform import register_platform

    register_platform()
    register_hf_rollout()


__all__ = ["ENV_VAR", "activate", "enabled"]
