"""verl plugin entry point (group ``verl.plugins``): ``import verl`` in any process, the Ray
actor that computes advantages included, imports this module, which registers TRACE's
advantage estimators and, when ``VERL_TRACE_CPU=1``, verl's CPU platform and the ``hf`` rollout
backend (``verl_trace.cpu``; first, before anything asks verl for its platform). verl swallows
plugin errors at DEBUG level; ``python -m verl_trace doctor`` shows them."""

from __future__ import annotations

from . import cpu

if cpu.enabled():
    cpu.activate()

from .advantage import register  # noqa: E402

REGISTERED = register()
