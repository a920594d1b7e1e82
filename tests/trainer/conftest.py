"""Fixtures of the trainer-side tests (verl installs a top-level ``tests`` package, so helpers are
fixtures, never imports)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RECIPE_CONFIG = ROOT / "recipes" / "search_r1" / "config"
TINY_TEXTS = [
    "who wrote the novel? <tool_call> search </tool_call> the answer is <answer> paris </answer>",
    "Paris is the capital of France. Hamlet was written by William Shakespeare.",
] * 20


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def recipe_config_dir() -> Path:
    return RECIPE_CONFIG


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A random tiny Qwen2 model and a locally trained tokenizer (verl's HFModelConfig loads it)."""
    from verl_trace.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny"), TINY_TEXTS, vocab_size=400, hidden=32, heads=1, kv_heads=1)
