"""main_trace's pre-flight checks: a config this machine cannot run stops in seconds, before Ray
starts, naming what to change (instead of Ray waiting forever for GPUs or CPUs)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from verl_trace.trainer.hydra_config import compose_config
from verl_trace.trainer.preflight import Machine, PreflightError, check, cpu_reservations, gpu_pools

CPU_BOX = Machine(gpus=0, cpus=2, cpu_platform=False, platform="cuda")  # verl's fallback without the switch
CPU_BOX_ON = Machine(gpus=0, cpus=2, cpu_platform=True, platform="cpu")
GPU_NODE = Machine(gpus=8, cpus=96, cpu_platform=False, platform="cuda")


@pytest.fixture
def assets(tmp_path, monkeypatch):
    """Files where cpu_tiny.yaml looks for them (the checks only look at paths)."""
    for p in ("model/config.json", "data/train.parquet", "data/test.parquet", "search_tool.yaml"):
        (tmp_path / p).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / p).write_text("")
    monkeypatch.setenv("VERL_TRACE_CPU_ASSETS", str(tmp_path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return tmp_path


def _config(recipe_config_dir, name: str, *overrides: str, data=None):
    extra = [f"data.train_files={data}", f"data.val_files={data}"] if data else []
    return compose_config(name, recipe_config_dir, ["method=trace", *extra, *overrides])


def _errors(cfg, machine) -> list[str]:
    try:
        check(cfg, machine)
    except PreflightError as e:
        return [line.strip() for line in str(e).splitlines()[1:]]
    return []


def test_gpu_recipe_on_a_cpu_machine_says_what_to_change(recipe_config_dir, assets):
    errors = _errors(_config(recipe_config_dir, "qwen3_8b", data=assets / "data" / "train.parquet"), CPU_BOX)
    fields = [e.split(":")[0] for e in errors]
    assert fields == ["trainer.n_gpus_per_node", "ray_kwargs.ray_init.num_cpus"]
    assert "asks for 8 GPUs" in errors[0] and "VERL_TRACE_CPU=1" in errors[0] and "cpu_tiny.yaml" in errors[0]
    assert "reserves 34" in errors[1]  # 1 controller + 8 storage units + 3 x 8 GPU bundles + 1 predictor


def test_gpu_recipe_on_a_gpu_node_passes(recipe_config_dir, assets):
    cfg = _config(recipe_config_dir, "qwen3_8b", "ray_kwargs.ray_init.num_cpus=64", data=assets / "data" / "train.parquet")
    assert _errors(cfg, GPU_NODE) == []
    assert gpu_pools(cfg) == {"trainer.n_gpus_per_node * trainer.nnodes": 8}
    assert sum(cpu_reservations(cfg).values()) == 34


def test_several_nodes_need_a_cluster(recipe_config_dir, assets, monkeypatch):
    cfg = _config(recipe_config_dir, "qwen3_14b", data=assets / "data" / "train.parquet")
    assert [e.split(":")[0] for e in _errors(cfg, GPU_NODE)][0] == "trainer.nnodes"
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")  # joining a cluster: its resources are unknown here
    assert _errors(cfg, GPU_NODE) == []


def test_cpu_config_passes_with_the_switch(recipe_config_dir, assets):
    cfg = _config(recipe_config_dir, "cpu_tiny")
    assert _errors(cfg, CPU_BOX_ON) == []
    assert sum(cpu_reservations(cfg).values()) == 6 <= cfg.ray_kwargs.ray_init.num_cpus


def test_cpu_config_without_the_switch(recipe_config_dir, assets):
    errors = _errors(_config(recipe_config_dir, "cpu_tiny"), CPU_BOX)
    assert [e.split(":")[0] for e in errors] == ["actor_rollout_ref.rollout.name", "trainer.device",
                                                 "trainer.n_gpus_per_node"]
    assert all("VERL_TRACE_CPU=1" in e for e in errors)


@pytest.mark.parametrize(
    "override, field",
    [
        ("actor_rollout_ref.actor.strategy=fsdp", "actor_rollout_ref.actor.strategy"),
        ("actor_rollout_ref.model.use_remove_padding=true", "actor_rollout_ref.model.use_remove_padding"),
        ("actor_rollout_ref.model.override_config.attn_implementation=flash_attention_2",
         "actor_rollout_ref.model.override_config.attn_implementation"),
        ("actor_rollout_ref.actor.use_kl_loss=true", "actor_rollout_ref.actor.use_kl_loss / algorithm.use_kl_in_reward"),
        ("actor_rollout_ref.rollout.name=sglang", "actor_rollout_ref.rollout.name"),
        ("ray_kwargs.ray_init.num_gpus=null", "ray_kwargs.ray_init.num_gpus"),
        ("ray_kwargs.ray_init.num_cpus=null", "ray_kwargs.ray_init.num_cpus"),
        ("transfer_queue.backend.SimpleStorage.num_data_storage_units=8", "ray_kwargs.ray_init.num_cpus"),
    ],
)
def test_cpu_switch_vs_config(recipe_config_dir, assets, override, field):
    errors = _errors(_config(recipe_config_dir, "cpu_tiny", override), CPU_BOX_ON)
    assert field in [e.split(":")[0] for e in errors], errors


def test_switch_on_but_verl_on_another_platform(recipe_config_dir, assets):
    errors = _errors(_config(recipe_config_dir, "cpu_tiny"), Machine(gpus=0, cpus=2, cpu_platform=True, platform="cuda"))
    assert errors[0].startswith("VERL_TRACE_CPU: set, but verl's platform")


def test_missing_assets_say_how_to_build_them(recipe_config_dir, assets, monkeypatch):
    monkeypatch.delenv("VERL_TRACE_CPU_ASSETS")
    errors = _errors(_config(recipe_config_dir, "cpu_tiny"), CPU_BOX_ON)
    assert errors[0].startswith("actor_rollout_ref.model.path: cannot be resolved")
    assert "python -m verl_trace.cpu.prepare" in errors[-1]
    monkeypatch.setenv("VERL_TRACE_CPU_ASSETS", str(assets / "nowhere"))
    assert any(e.startswith("data.train_files:") and "does not exist" in e
               for e in _errors(_config(recipe_config_dir, "cpu_tiny"), CPU_BOX_ON))


def _main_trace(repo_root, recipe_config_dir, *args, **env):
    clean = {k: v for k, v in os.environ.items() if k not in ("VERL_TRACE_CPU", "RAY_ADDRESS")}
    t0 = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "verl_trace.main_trace", f"--config-path={recipe_config_dir}", *args],
        cwd=repo_root, capture_output=True, text=True, timeout=300,
        env={**clean, "PYTHONPATH": str(repo_root), "HYDRA_FULL_ERROR": "0", **env},
    )  # fmt: skip
    return out.returncode, out.stdout + out.stderr, time.monotonic() - t0


def test_main_trace_stops_before_ray_on_a_machine_without_gpus(repo_root, recipe_config_dir, assets):
    data = assets / "data" / "train.parquet"
    rc, log, seconds = _main_trace(repo_root, recipe_config_dir, "--config-name=qwen3_8b", "method=trace",
                                   f"data.train_files={data}", f"data.val_files={data}")
    assert rc != 0 and "PreflightError" in log
    assert "trainer.n_gpus_per_node: the job asks for 8 GPUs" in log
    assert "ray init kwargs" not in log  # run_ppo prints this right before ray.init()
    assert seconds < 120  # imports only: before these checks the job waited for GPUs forever


def test_main_trace_with_the_switch_checks_the_config(repo_root, recipe_config_dir, assets):
    rc, log, _ = _main_trace(repo_root, recipe_config_dir, "--config-name=cpu_tiny", "method=grpo",
                             "actor_rollout_ref.model.use_remove_padding=true", VERL_TRACE_CPU="1",
                             VERL_TRACE_CPU_ASSETS=str(assets))
    assert rc != 0 and "use_remove_padding: true needs flash-attn" in log and "ray init kwargs" not in log
