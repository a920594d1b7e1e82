"""Invalid TRACE settings fail at start-up, naming the field, before Ray or any worker starts."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from verl_trace.config import TraceConfigError
from verl_trace.trainer.config_check import TRACE_MANAGER, prepare_trace_config
from verl_trace.trainer.hydra_config import compose_config

# A valid TRACE setup on top of main_trace's default config (trace_trainer.yaml).
VALID = [
    "actor_rollout_ref.rollout.n=4",
    "actor_rollout_ref.rollout.multi_turn.max_assistant_turns=3",
]


def _check(*overrides: str):
    cfg = compose_config(overrides=[*VALID, *overrides])
    return cfg, prepare_trace_config(cfg)


def test_valid_config_resolves_defaults_from_verl():
    cfg, trace = _check()
    assert trace.allocator == "trace" and cfg.algorithm.adv_estimator == "trace"
    assert trace.budget.leaves_per_prompt == 4  # actor_rollout_ref.rollout.n
    assert trace.max_turns == 3  # multi_turn.max_assistant_turns
    # Written back, so the trainer and the rollout workers read the same complete section.
    assert cfg.trace.budget.leaves_per_prompt == 4 and cfg.trace.max_turns == 3
    assert cfg.actor_rollout_ref.rollout.agent.agent_loop_manager_class == TRACE_MANAGER


def test_explicit_trace_values_win():
    _, trace = _check("trace.max_turns=2", "trace.budget.leaves_per_prompt=6", "trace.allocation.rounds=3")
    assert (trace.max_turns, trace.budget.leaves_per_prompt, trace.allocation.rounds) == (2, 6, 3)


def test_grpo_through_main_trace_needs_no_trace_rollout():
    cfg, trace = _check(
        "algorithm.adv_estimator=grpo", "trace.allocator=uniform",
        "actor_rollout_ref.rollout.agent.agent_loop_manager_class=null",
        "actor_rollout_ref.rollout.agent.default_agent_loop=tool_agent",
    )
    assert trace.allocator == "uniform"


@pytest.mark.parametrize(
    "overrides, field",
    [
        (["trace.allocation.rounds=-1"], "trace.allocation.rounds"),
        (["trace.predictor.kind=mlp"], "trace.predictor.kind"),
        (["+trace.budget.leaves=4"], "trace.budget.leaves"),  # unknown key
        # The schema's cross-field check (verl_trace/config.py) names it in its message.
        (["trace.budget.leaves_per_prompt=1"], "budget.leaves_per_prompt (1) is smaller"),
        (["actor_rollout_ref.rollout.n=1"], "trace.budget.leaves_per_prompt"),  # the default from rollout.n
        (["algorithm.adv_estimator=grpo"], "algorithm.adv_estimator"),
        (["trace.allocator=oracle"], "trace.allocator"),
        (["trainer.use_v1=false"], "trainer.use_v1"),
        (["trainer.v1.trainer_mode=colocate_async"], "trainer.v1.trainer_mode"),
        (["actor_rollout_ref.rollout.agent.default_agent_loop=tool_agent"], "actor_rollout_ref.rollout.agent.default_agent_loop"),
        (["actor_rollout_ref.rollout.agent.agent_loop_manager_class=null"], "actor_rollout_ref.rollout.agent.agent_loop_manager_class"),
        (["reward.reward_model.enable=true"], "reward.reward_model.enable"),  # no streaming rewards
        (["trace.max_turns=5"], "trace.max_turns"),  # deeper than max_assistant_turns=3
        (["actor_rollout_ref.rollout.multi_turn.max_assistant_turns=null"], "trace.max_turns"),
        (["trace.allocator=tree_random", "trace.allocation.pool_factor=2"], "trace.allocation.pool_factor"),
        # a token budget below one worst-case chain per root would leave roots without leaves
        (["trace.budget.tokens=100", "actor_rollout_ref.rollout.response_length=64", "data.train_batch_size=4"],
         "trace.budget.tokens"),
    ],
)
def test_invalid_setting_names_the_field(overrides, field):
    with pytest.raises(TraceConfigError) as err:
        _check(*overrides)
    message = str(err.value)
    assert (f"\n  {field}:" if " " not in field else field) in message, message


def test_all_problems_are_reported_at_once():
    with pytest.raises(TraceConfigError) as err:
        _check("algorithm.adv_estimator=grpo", "trainer.use_v1=false", "trace.max_turns=9")
    lines = str(err.value).splitlines()[1:]
    assert [line.split(":")[0].strip() for line in lines] == ["trainer.use_v1", "algorithm.adv_estimator", "trace.max_turns"]


def test_main_trace_stops_before_ray_starts(repo_root):
    override, field = "trace.allocator=oracle", "trace.allocator"
    env = {**os.environ, "PYTHONPATH": str(repo_root), "HYDRA_FULL_ERROR": "0"}
    out = subprocess.run(
        [sys.executable, "-m", "verl_trace.main_trace", *VALID, override],
        cwd=repo_root, env=env, capture_output=True, text=True, timeout=300,
    )
    log = out.stdout + out.stderr
    assert out.returncode != 0
    assert "TraceConfigError" in log and f"{field}:" in log
    assert "ray init kwargs" not in log  # run_ppo prints this right before ray.init()
