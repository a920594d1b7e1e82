"""Start-up checks of the ``trace:`` section against the rest of verl's config.

``prepare_trace_config`` runs in the driver before Ray starts. It validates ``trace:``
(``load_trace_config`` names the bad ``trace.*`` field), cross-checks it with verl's settings,
fills the defaults that come from verl (leaves per prompt = ``rollout.n``, max turns =
``multi_turn.max_assistant_turns``) and writes the resolved section back into the config, so every
process of the job (trainer, rollout workers) reads the same complete ``trace:`` section.
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig, OmegaConf, open_dict

from ..allocation import allocator_class, leaves_per_prompt, root_selecting_allocators
from ..config import TraceConfig, TraceConfigError, load_trace_config
from ..protocol import TREE_ESTIMATORS

logger = logging.getLogger(__name__)

TRACE_MANAGER = "verl_trace.rollout.worker.TraceAgentLoopManager"
TRACE_AGENT_LOOP = "trace_agent"


def uses_trace_rollout(config: DictConfig) -> bool:
    """Whether the job's rollout is TRACE's agent-loop manager."""
    return OmegaConf.select(config, "actor_rollout_ref.rollout.agent.agent_loop_manager_class") == TRACE_MANAGER


def prepare_trace_config(config: DictConfig) -> TraceConfig:
    """Validate and resolve ``config.trace`` in place; raise ``TraceConfigError`` listing every
    problem (each line names the offending config field)."""
    raw = config.get("trace")
    trace = load_trace_config(raw)  # names the bad trace.* field itself
    errors: list[str] = []

    def sel(key: str):
        return OmegaConf.select(config, key)

    estimator = sel("algorithm.adv_estimator")
    manager = sel("actor_rollout_ref.rollout.agent.agent_loop_manager_class")
    trace_rollout = manager == TRACE_MANAGER

    if not sel("trainer.use_v1"):
        errors.append(
            "trainer.use_v1: TRACE targets verl's V1 trainer (the default); the deprecated legacy trainer "
            "needs exactly rollout.n rows per prompt in a fixed order and is not supported"
        )
    allocator = allocator_class(trace.allocator)
    if allocator.simulator_only:
        errors.append(
            f"trace.allocator: {trace.allocator!r} reads the true success probability, which only the simulator has"
        )
    if allocator.grows_trees and estimator not in TREE_ESTIMATORS:
        errors.append(
            f"algorithm.adv_estimator: {estimator!r} ignores the tree that trace.allocator={trace.allocator!r} "
            f"builds; use one of {list(TREE_ESTIMATORS)}"
        )
    if (trace.allocator != "uniform" or estimator in TREE_ESTIMATORS) and not trace_rollout:
        errors.append(
            f"actor_rollout_ref.rollout.agent.agent_loop_manager_class: is {manager!r}; trace.allocator="
            f"{trace.allocator!r} with algorithm.adv_estimator={estimator!r} needs the TRACE rollout, "
            f"{TRACE_MANAGER} (on the command line: +actor_rollout_ref.rollout.agent.agent_loop_manager_class=...)"
        )
    if trace_rollout:
        mode = sel("trainer.v1.trainer_mode")
        if mode != "sync":
            errors.append(
                f"trainer.v1.trainer_mode: TRACE plans each step's trees on-policy and runs in the 'sync' trainer "
                f"only, got {mode!r}"
            )
        if sel("reward.reward_model.enable") and not sel("reward.reward_model.enable_resource_pool"):
            errors.append(
                "reward.reward_model.enable: a colocated reward model scores trajectories only after the step's "
                "rollout, but TRACE allocates from each leaf's reward during the rollout; give the reward model "
                "its own pool (reward.reward_model.enable_resource_pool=true) or use a rule-based reward"
            )
        loop = sel("actor_rollout_ref.rollout.agent.default_agent_loop")
        if loop != TRACE_AGENT_LOOP:
            errors.append(
                f"actor_rollout_ref.rollout.agent.default_agent_loop: the TRACE rollout branches at turn "
                f"boundaries with the {TRACE_AGENT_LOOP!r} agent loop, got {loop!r}"
            )
    if trace.allocation.pool_factor > 1.0 and not allocator.selects_roots:
        errors.append(
            f"trace.allocation.pool_factor: {trace.allocation.pool_factor} > 1 only helps allocators that select "
            f"roots from the pool ({root_selecting_allocators()}); {trace.allocator!r} takes the first prompts "
            "and would discard the rest"
        )

    # Defaults that come from verl's config.
    assistant_turns = sel("actor_rollout_ref.rollout.multi_turn.max_assistant_turns")
    max_turns = trace.max_turns if trace.max_turns is not None else assistant_turns
    if max_turns is None:
        errors.append(
            "trace.max_turns: unset, and actor_rollout_ref.rollout.multi_turn.max_assistant_turns is null too; "
            "set either (the tree's depth limit)"
        )
    elif assistant_turns is not None and max_turns > assistant_turns:
        errors.append(
            f"trace.max_turns: {max_turns} exceeds actor_rollout_ref.rollout.multi_turn.max_assistant_turns="
            f"{assistant_turns}, where the agent loop stops; turns past it never exist"
        )
    n = sel("actor_rollout_ref.rollout.n")
    leaves = leaves_per_prompt(trace, n)
    if leaves is None or leaves < trace.budget.min_leaves_per_root:
        errors.append(
            f"trace.budget.leaves_per_prompt: {leaves} (defaults to actor_rollout_ref.rollout.n) is smaller than "
            f"trace.budget.min_leaves_per_root={trace.budget.min_leaves_per_root}"
        )
    elif leaves != n:
        logger.warning(
            "trace.budget.leaves_per_prompt=%s differs from actor_rollout_ref.rollout.n=%s: verl sizes PPO "
            "mini-batches as ppo_mini_batch_size * rollout.n trajectories, so the batch gets padded or split "
            "differently than with GRPO at the same cost",
            leaves,
            n,
        )

    roots, length = sel("data.train_batch_size"), sel("actor_rollout_ref.rollout.response_length")
    tokens = trace.budget.tokens
    if tokens is not None and roots and length and tokens < roots * length:
        errors.append(
            f"trace.budget.tokens: {tokens} cannot give each of data.train_batch_size={roots} roots one chain at "
            f"the worst case of actor_rollout_ref.rollout.response_length={length} tokens (needs >= {roots * length}); "
            "a root without leaves fails verl's training step"
        )

    if errors:
        raise TraceConfigError("invalid TRACE config:\n  " + "\n  ".join(errors))

    data = trace.model_dump(mode="json")
    data["max_turns"] = max_turns
    data["budget"]["leaves_per_prompt"] = leaves
    resolved = TraceConfig.model_validate(data)
    with open_dict(config):
        config.trace = OmegaConf.create(data)
    return resolved
