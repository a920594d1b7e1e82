"""Hydra composition of TRACE configs, shared by ``main_trace`` and the tests.

``trace_trainer.yaml`` composes verl's ``ppo_trainer`` with a ``trace:`` section whose defaults
are the pydantic schema itself (``TraceConfig``), registered in Hydra's ConfigStore here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from ..config import TraceConfig

CONFIG_DIR = Path(__file__).parent / "config"
CONFIG_NAME = "trace_trainer"
TRACE_DEFAULTS = "trace_defaults"


def register_trace_defaults() -> None:
    """Make ``trace_defaults`` (every ``trace.*`` field with its schema default) composable."""
    ConfigStore.instance().store(name=TRACE_DEFAULTS, node={"trace": TraceConfig().model_dump(mode="json")})


def compose_config(
    config_name: str = CONFIG_NAME, config_dir: str | Path = CONFIG_DIR, overrides: Sequence[str] = ()
) -> DictConfig:
    """The config ``python -m verl_trace.main_trace --config-path=DIR --config-name=NAME OVERRIDES``
    hands to its main function (same primary config, search path and ConfigStore)."""
    register_trace_defaults()
    with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base=None):
        return compose(config_name=config_name, overrides=list(overrides))
