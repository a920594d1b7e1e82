"""The TaskRunner of ``main_trace``: verl's ``TaskRunnerV1`` with TRACE's trainer installed.

``TaskRunnerV1`` is a Ray actor class, which cannot be subclassed directly; its plain class is
``__ray_actor_class__`` (verl's own ``single_controller`` reads it the same way).
"""

from __future__ import annotations

import ray
from omegaconf import DictConfig
from verl.trainer.main_ppo import TaskRunnerV1

from .trainer import install_trace_trainer


class TraceTaskRunner(TaskRunnerV1.__ray_actor_class__):
    def run(self, config: DictConfig):
        # The estimators must be registered where advantages are computed: this process. The
        # verl.plugins entry point normally did it already on `import verl`; importing the plugin
        # module makes it independent of how verl_trace was installed.
        from .. import plugin  # noqa: F401

        install_trace_trainer(config.trainer.v1.trainer_mode)
        return super().run(config)


TraceTaskRunnerActor = ray.remote(TraceTaskRunner)
