"""``python -m verl_trace.main_trace``: verl's ``main_ppo`` with TRACE wired in.

Same Hydra command line as ``python -m verl.trainer.main_ppo`` (so verl's run and cluster scripts
work with the module name changed); the default config is ``trace_trainer.yaml``, verl's
``ppo_trainer`` plus a validated ``trace:`` section. Invalid TRACE settings stop here, before Ray
or any worker starts, with the offending field named.
"""

from __future__ import annotations

import hydra
from verl.trainer.main_ppo import run_ppo
from verl.trainer.ppo.utils import need_critic, need_reference_policy
from verl.utils.config import validate_config
from verl.utils.device import auto_set_device

from .trainer.config_check import prepare_trace_config
from .trainer.hydra_config import register_trace_defaults

register_trace_defaults()


@hydra.main(config_path="trainer/config", config_name="trace_trainer", version_base=None)
def main(config) -> None:
    auto_set_device(config)
    prepare_trace_config(config)
    validate_config(config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    from .trainer.task_runner import TraceTaskRunnerActor

    run_ppo(config, task_runner_class=TraceTaskRunnerActor)


if __name__ == "__main__":
    main()
