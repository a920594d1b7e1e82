"""``python -m verl_trace.main_trace``: verl's ``main_ppo`` with TRACE wired in.

Same Hydra command line as ``python -m verl.trainer.main_ppo`` (so verl's run and cluster scripts
work with the module name changed); the default config is ``trace_trainer.yaml``, verl's
``ppo_trainer`` plus a validated ``trace:`` section. Before Ray or any worker starts, invalid TRACE
settings stop here with the offending field named, and so does a config this machine cannot run
(``trainer.preflight``: GPUs and CPUs asked vs present, the CPU switch vs the config), which would
otherwise leave Ray waiting for resources forever.

``VERL_TRACE_CPU=1`` (``verl_trace.cpu``) runs verl's trainer on CPU; it is passed on to every Ray
worker through the job's ``runtime_env``, so it also reaches workers of an existing cluster.
"""

from __future__ import annotations

import os
import sys

import hydra
from omegaconf import DictConfig, open_dict
from verl.trainer.main_ppo import run_ppo
from verl.trainer.ppo.utils import need_critic, need_reference_policy
from verl.utils.config import validate_config
from verl.utils.device import auto_set_device

from . import cpu
from .trainer.config_check import prepare_trace_config
from .trainer.hydra_config import register_trace_defaults
from .trainer.preflight import check as preflight_check

register_trace_defaults()


def forward_cpu_switch(config: DictConfig) -> None:
    """Put ``VERL_TRACE_CPU`` into the Ray job's ``runtime_env`` when it is set here."""
    if not cpu.enabled():
        return
    with open_dict(config):
        runtime_env = config.ray_kwargs.ray_init.runtime_env
        if runtime_env.get("env_vars") is None:
            runtime_env.env_vars = {}
        runtime_env.env_vars[cpu.ENV_VAR] = "1"


@hydra.main(config_path="trainer/config", config_name="trace_trainer", version_base=None)
def main(config) -> None:
    auto_set_device(config)
    prepare_trace_config(config)
    validate_config(config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    preflight_check(config)
    forward_cpu_switch(config)
    from .trainer.task_runner import TraceTaskRunnerActor

    run_ppo(config, task_runner_class=TraceTaskRunnerActor)


def absolute_config_path(argv: list[str]) -> list[str]:
    """Hydra resolves a relative ``--config-path`` against this module's folder; a user typing
    ``--config-path recipes/bfcl/config`` in the repository means the folder below the current
    directory, so such a path that exists there is made absolute (any other is left to Hydra)."""
    out = list(argv)
    for i, arg in enumerate(out):
        for flag in ("--config-path", "-cp"):
            if arg == flag and i + 1 < len(out):
                j, value, prefix = i + 1, out[i + 1], ""
            elif arg.startswith(flag + "="):
                j, value, prefix = i, arg.split("=", 1)[1], flag + "="
            else:
                continue
            if value and not os.path.isabs(value) and os.path.isdir(value):
                out[j] = prefix + os.path.abspath(value)
    return out


if __name__ == "__main__":
    sys.argv = absolute_config_path(sys.argv)
    main()
