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
    from verl_trace.testing.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny"), TINY_TEXTS, vocab_size=400, hidden=32, heads=1, kv_heads=1)


@pytest.fixture(scope="session")
def trace_config(tiny_model_dir):
    """``make(*overrides)``: the config ``main_trace`` runs with (verl's composed ``ppo_trainer`` plus
    ``trace:``, TRACE's start-up checks, TransferQueue enabled and resolved as ``TaskRunnerV1.run``
    does), on the tiny model, with 2 TransferQueue storage units (verl's 8 do not fit 4 CPUs)."""
    from omegaconf import OmegaConf, open_dict

    from verl_trace.trainer.config_check import prepare_trace_config
    from verl_trace.trainer.hydra_config import compose_config

    def make(*overrides: str):
        cfg = compose_config(overrides=[
            f"actor_rollout_ref.model.path={tiny_model_dir}",
            "actor_rollout_ref.rollout.name=vllm",
            "transfer_queue.backend.SimpleStorage.num_data_storage_units=2",
            *overrides,
        ])  # fmt: skip
        prepare_trace_config(cfg)
        with open_dict(cfg):
            cfg.transfer_queue.enable = True
        OmegaConf.resolve(cfg)
        return cfg

    return make


@pytest.fixture(scope="module")
def ray_tq(repo_root):
    """Ray and TransferQueue for one test module, as ``TaskRunnerV1`` starts them: ``num_cpus=4``
    (the TransferQueue controller and each storage unit hold a CPU), 2 storage units, actors import
    this checkout."""
    ray = pytest.importorskip("ray")
    import transfer_queue as tq
    from omegaconf import open_dict

    from verl_trace.trainer.hydra_config import compose_config

    tq_config = compose_config(overrides=["transfer_queue.backend.SimpleStorage.num_data_storage_units=2"]).transfer_queue
    with open_dict(tq_config):
        tq_config.enable = True  # as TaskRunnerV1.run
    ray.init(num_cpus=4, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": str(repo_root)}})
    try:
        tq.init(tq_config)
        yield tq
    finally:
        tq.close()
        ray.shutdown()


@pytest.fixture(scope="session")
def expected_trace_advantage():
    """``f(tree, leaf, cfg, length)``: the ``trace`` advantage of one leaf's response tokens computed
    directly on its tree (``tree_turn_advantages``, GRPO-normalized), zero on observation tokens,
    zero-padded to ``length``."""
    import torch

    from verl_trace.advantage import tree_turn_advantages

    def expected(tree, leaf: int, cfg, length: int | None = None) -> torch.Tensor:
        traj = tree.render(leaf)
        per_turn = tree_turn_advantages(tree, cfg, norm_by_std=True)[leaf]
        out = torch.zeros(len(traj.response_ids) if length is None else length)
        for (s, e), a in zip(traj.turn_spans, per_turn):
            out[s:e] = float(a)
        mask = torch.zeros_like(out)
        mask[: len(traj.response_mask)] = torch.tensor(traj.response_mask, dtype=torch.float32)[: len(out)]
        return out * mask

    return expected
