"""`import verl` alone registers TRACE's estimators (the verl.plugins entry point), in a fresh
process as in every Ray actor; VERL_USE_EXTERNAL_MODULES is the documented fallback."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

PROBE = (
    "import verl\n"
    "from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY\n"
    "print({n: getattr(ADV_ESTIMATOR_REGISTRY.get(n), '__module__', None) for n in ('trace', 'tree_grpo')})\n"
)


def _probe(repo_root, **env) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VERL_USE_EXTERNAL")}
    out = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=repo_root, capture_output=True, text=True, timeout=300,
        env={**clean, "PYTHONPATH": str(repo_root), **env},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return ast.literal_eval(out.stdout.strip().splitlines()[-1])


def test_import_verl_registers_the_estimators(repo_root):
    assert _probe(repo_root) == {"trace": "verl_trace.advantage", "tree_grpo": "verl_trace.advantage"}


def test_external_modules_fallback(repo_root):
    # Entry points off: nothing registers them...
    assert _probe(repo_root, VERL_USE_EXTERNAL_PLUGINS="none") == {"trace": None, "tree_grpo": None}
    # ...unless verl is told to import the plugin module.
    assert _probe(repo_root, VERL_USE_EXTERNAL_PLUGINS="none", VERL_USE_EXTERNAL_MODULES="verl_trace.plugin") == {
        "trace": "verl_trace.advantage",
        "tree_grpo": "verl_trace.advantage",
    }
