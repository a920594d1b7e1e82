"""verl plugin entry point (group ``verl.plugins``): ``import verl`` in any process, the Ray
actor that computes advantages included, imports this module, which registers TRACE's
advantage estimators. verl swallows plugin errors at DEBUG level; ``python -m verl_trace doctor``
shows them."""

from __future__ import annotations

from .advantage import register

REGISTERED = register()
