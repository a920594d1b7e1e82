"""The Search-R1 recipe configs compose the way ``main_trace`` composes them and pass verl's own
validation (``validate_config`` as verl's main calls it, and the dataclass conversions its
TaskRunner and workers do) with TRACE on; the three methods run at equal sampling cost."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import yaml
from omegaconf import OmegaConf

from verl_trace.trainer.config_check import TRACE_MANAGER, prepare_trace_config
from verl_trace.trainer.hydra_config import compose_config

MODELS = ["qwen3_8b", "qwen3_14b", "qwen3_0.6b_smoke"]
METHODS = {"trace": ("trace", "trace"), "grpo": ("grpo", "uniform"), "tree_grpo": ("tree_grpo", "tree_random")}
# Dataclass-backed sections verl converts at start-up (trainer, agent-loop workers, engine workers).
DATACLASS_SECTIONS = [
    "algorithm",
    "actor_rollout_ref.actor",
    "actor_rollout_ref.rollout",
    "actor_rollout_ref.model",
    "actor_rollout_ref.rollout.checkpoint_engine",
]


def _validated(recipe_config_dir, tiny_model_dir, model: str, method: str):
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import omega_conf_to_dataclass, validate_config

    # The HF model path is the one thing swapped: the Qwen3 weights cannot be downloaded here.
    cfg = compose_config(model, recipe_config_dir, [f"method={method}", f"actor_rollout_ref.model.path={tiny_model_dir}"])
    trace = prepare_trace_config(cfg)
    validate_config(cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))
    resolved = copy.deepcopy(cfg)
    OmegaConf.resolve(resolved)  # what TaskRunnerV1.run does before building anything
    converted = {key: omega_conf_to_dataclass(OmegaConf.select(resolved, key)) for key in DATACLASS_SECTIONS}
    return cfg, trace, converted


@pytest.fixture(scope="module")
def composed(recipe_config_dir, tiny_model_dir):
    return {(m, k): _validated(recipe_config_dir, tiny_model_dir, m, k) for m in MODELS for k in METHODS}


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("method", list(METHODS))
def test_recipe_composes_and_passes_verl_validation(composed, model, method):
    cfg, trace, converted = composed[(model, method)]
    estimator, allocator = METHODS[method]
    assert cfg.algorithm.adv_estimator == estimator and trace.allocator == allocator
    assert type(converted["algorithm"]).__name__ == "AlgoConfig"
    rollout = converted["actor_rollout_ref.rollout"]
    assert rollout.agent.agent_loop_manager_class == TRACE_MANAGER
    assert rollout.agent.default_agent_loop == "trace_agent"
    assert rollout.multi_turn.tool_config_path.endswith("tool_config/search_tool_config.yaml")
    # Resolved from verl's settings and written back for every process of the job.
    assert trace.max_turns == cfg.actor_rollout_ref.rollout.multi_turn.max_assistant_turns == cfg.trace.max_turns
    assert trace.budget.leaves_per_prompt == cfg.actor_rollout_ref.rollout.n == cfg.trace.budget.leaves_per_prompt
    assert cfg.reward.custom_reward_function.path == "pkg://verl_trace.rewards.qa_em"
    assert cfg.trainer.experiment_name == f"{model}_{estimator}"


@pytest.mark.parametrize("model", MODELS)
def test_methods_run_at_equal_sampling_cost(composed, model):
    def cost(method):
        cfg, trace, _ = composed[(model, method)]
        return (
            cfg.data.train_batch_size,  # roots per step
            trace.budget.leaves_per_prompt,  # leaves per root
            trace.budget.tokens,
            cfg.data.max_response_length,
            cfg.actor_rollout_ref.rollout.multi_turn.max_assistant_turns,
            cfg.actor_rollout_ref.actor.ppo_mini_batch_size,
        )

    assert cost("trace") == cost("grpo") == cost("tree_grpo")
    # Everything but the method keys (and the experiment name) is identical across methods.
    def rest(method):
        c = OmegaConf.to_container(composed[(model, method)][0])
        c["algorithm"].pop("adv_estimator"), c["trainer"].pop("experiment_name")
        c["trace"].pop("allocator"), c["trace"]["allocation"].pop("pool_factor")
        return c

    assert rest("trace") == rest("grpo") == rest("tree_grpo")


def test_search_r1_settings(composed):
    cfg, _, _ = composed[("qwen3_8b", "trace")]
    actor, rollout = cfg.actor_rollout_ref.actor, cfg.actor_rollout_ref.rollout
    assert (rollout.n, rollout.temperature, rollout.multi_turn.max_assistant_turns) == (5, 1.0, 4)
    assert (actor.kl_loss_coef, actor.use_kl_loss, actor.clip_ratio) == (0.001, True, 0.2)
    assert (cfg.data.train_batch_size, actor.ppo_mini_batch_size) == (512, 256)
    assert cfg.actor_rollout_ref.model.path != "Qwen/Qwen3-8B"  # swapped by the test, see _validated
    assert composed[("qwen3_14b", "trace")][0].trainer.nnodes == 2
    assert composed[("qwen3_0.6b_smoke", "trace")][0].trainer.n_gpus_per_node == 1


def test_tool_config_names_the_search_tool(recipe_config_dir):
    tools = yaml.safe_load((recipe_config_dir / "tool_config" / "search_tool_config.yaml").read_text())["tools"]
    assert len(tools) == 1
    tool = tools[0]
    assert tool["class_name"] == "verl_trace.tools.search_tool.SearchTool"
    assert tool["config"]["type"] == "native" and tool["config"]["topk"] == 3
    assert set(tool["config"]) >= {
        "type", "retrieval_service_url", "topk", "timeout", "max_retries", "backoff", "max_concurrency"
    }
    from verl_trace.tools.search_tool import SearchToolConfig

    SearchToolConfig.model_validate({k: v for k, v in tool["config"].items() if k != "retrieval_service_url"} | {"retrieval_service_url": "http://127.0.0.1:1/retrieve"})
    from verl.tools.schemas import OpenAIFunctionToolSchema

    schema = OpenAIFunctionToolSchema.model_validate(tool["tool_schema"])
    assert schema.function.name == "search"  # Search-R1's data addresses the tool by this name


def test_main_trace_composes_the_same_config(repo_root, recipe_config_dir):
    """``compose_config`` (used above) gives exactly what ``python -m verl_trace.main_trace`` sees."""
    overrides = ["method=tree_grpo", "data.train_batch_size=64"]
    out = subprocess.run(
        [sys.executable, "-m", "verl_trace.main_trace", f"--config-path={recipe_config_dir}",
         "--config-name=qwen3_8b", *overrides, "--cfg", "job"],
        cwd=repo_root, env={**os.environ, "PYTHONPATH": str(repo_root)}, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    printed = yaml.safe_load(out.stdout)
    expected = OmegaConf.to_container(compose_config("qwen3_8b", recipe_config_dir, overrides))
    assert printed == expected


# ---------------------------------------------------------------------- the BFCL and math-tool recipes
TASK_RECIPES = {
    # recipe: (tool config file, reward module, assistant turns = tree depth)
    "bfcl": ("tool_config/bfcl_tool_config.yaml", "pkg://verl_trace.rewards.bfcl", 16),
    "math_tool": ("tool_config/python_tool_config.yaml", "pkg://verl_trace.rewards.math_boxed", 6),
}
TASK_MODELS = ["qwen3_8b", "qwen3_14b"]


@pytest.fixture(scope="module")
def task_composed(repo_root, tiny_model_dir):
    return {(r, m, k): _validated(repo_root / "recipes" / r / "config", tiny_model_dir, m, k)
            for r in TASK_RECIPES for m in TASK_MODELS for k in METHODS}


@pytest.mark.parametrize("recipe", list(TASK_RECIPES))
def test_task_recipes_compose_and_pass_verl_validation(task_composed, repo_root, recipe):
    tool_file, reward_path, turns = TASK_RECIPES[recipe]
    for model in TASK_MODELS:
        for method, (estimator, allocator) in METHODS.items():
            cfg, trace, converted = task_composed[(recipe, model, method)]
            assert cfg.algorithm.adv_estimator == estimator and trace.allocator == allocator
            rollout = converted["actor_rollout_ref.rollout"]
            assert rollout.agent.agent_loop_manager_class == TRACE_MANAGER
            assert rollout.agent.default_agent_loop == "trace_agent"
            assert rollout.multi_turn.tool_config_path == f"recipes/{recipe}/config/{tool_file}"
            assert (repo_root / rollout.multi_turn.tool_config_path).is_file()
            assert trace.max_turns == rollout.multi_turn.max_assistant_turns == turns
            assert trace.budget.leaves_per_prompt == rollout.n == 8
            assert cfg.reward.custom_reward_function.path == reward_path
            assert cfg.trainer.experiment_name == f"{model}_{estimator}"
        assert task_composed[(recipe, "qwen3_14b", "trace")][0].trainer.nnodes == 2

    def rest(method):  # methods differ only in their keys: equal sampling cost
        c = OmegaConf.to_container(task_composed[(recipe, "qwen3_8b", method)][0])
        c["algorithm"].pop("adv_estimator"), c["trainer"].pop("experiment_name")
        c["trace"].pop("allocator"), c["trace"]["allocation"].pop("pool_factor")
        return c

    assert rest("trace") == rest("grpo") == rest("tree_grpo")


def test_task_recipes_compose_in_main_trace_with_the_trace_estimator(repo_root):
    """The command as a user types it in the repository (a relative --config-path); both recipes at
    once (two processes side by side: each spends most of its time importing verl)."""
    procs = {
        recipe: subprocess.Popen(
            [sys.executable, "-m", "verl_trace.main_trace", "--config-path", f"recipes/{recipe}/config",
             "--config-name", "qwen3_8b", "--cfg", "job"],
            cwd=repo_root, env={**os.environ, "PYTHONPATH": str(repo_root)},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for recipe in TASK_RECIPES
    }
    for recipe, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-3000:]
        printed = yaml.safe_load(stdout)
        assert printed["algorithm"]["adv_estimator"] == "trace" and printed["trace"]["allocator"] == "trace"
        config_dir = repo_root / "recipes" / recipe / "config"
        assert printed == OmegaConf.to_container(compose_config("qwen3_8b", config_dir, []))


def test_relative_config_paths_resolve_against_the_current_directory(repo_root, monkeypatch):
    from verl_trace.main_trace import absolute_config_path

    monkeypatch.chdir(repo_root)
    cfg_dir = str(repo_root / "recipes" / "bfcl" / "config")
    assert absolute_config_path(["m", "--config-path", "recipes/bfcl/config", "x=1"]) == ["m", "--config-path", cfg_dir, "x=1"]
    assert absolute_config_path(["m", "--config-path=recipes/bfcl/config"]) == ["m", f"--config-path={cfg_dir}"]
    assert absolute_config_path(["m", "-cp", "no/such/dir"]) == ["m", "-cp", "no/such/dir"]  # left to Hydra
    assert absolute_config_path(["m", "--config-path=/abs/path"]) == ["m", "--config-path=/abs/path"]
