"""Every knob of the CPU demo in one validated place, with the two presets the CLI offers.

The defaults are sized for the limits in the issue: ``make demo`` (the full preset) within 15
minutes on 2 shared CPU cores, ``--quick`` within 3. The allocators of a comparison share
everything here except ``trace.allocator`` (and the estimator paired with it).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..allocation import ALLOCATORS as REGISTRY
from ..config import TraceConfig
from ..protocol import TREE_ESTIMATORS
from ..tasks import TASKS as TASK_FAMILIES

TASKS = ("search", *TASK_FAMILIES)
"""The demo's tasks: its own search world, and the task families of ``verl_trace.tasks``."""

ALLOCATORS = [name for name, cls in REGISTRY.items()
              if not cls.simulator_only and (not cls.grows_trees or cls.estimator in TREE_ESTIMATORS)]
"""The allocators the demo can run: each with its paired estimator (``Allocator.estimator``), which
main_trace must accept: not ``oracle`` (it needs the true success probability, which only the
simulator has) and not ``entropy``, whose paired flat GRPO would ignore the tree it grows."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSettings(_Strict):
    """The tiny Qwen2 and its locally trained tokenizer (``verl_trace.testing.tiny``)."""

    vocab_size: int = Field(1024, ge=300)  # BPE merges; entity names are added on top, one token each
    name_init_std: float = Field(0.1, gt=0.0)  # scale of the names' random identities (model.share_name_updates)
    hidden: int = Field(128, ge=16)
    layers: int = Field(4, ge=1)
    heads: int = Field(4, ge=1)
    kv_heads: int = Field(2, ge=1)
    max_positions: int = Field(512, ge=128)


class TaskSettings(_Strict):
    """The Search-R1 episode: what the agent loop and the search tool are allowed."""

    topk: int = Field(1, ge=1, le=10)  # passages per search (the gold passage always ranks first here)
    max_turns: int = Field(5, ge=1)  # assistant turns (3 hops + one retry + the answer)
    prompt_length: int = Field(128, ge=32)
    response_length: int = Field(384, ge=64)
    max_tool_response_chars: int = Field(1024, ge=64)


class TeacherSettings(_Strict):
    """How imperfect the generated demonstrations are (docs/demo.md: the teacher's state machine).
    Each probability applies at the decision it names; together they put the teacher at about half
    right, so the warm-started policy starts middling and has room to learn."""

    wrong_first_query: float = Field(0.25, ge=0.0, le=1.0)  # search a wrong entity first
    wrong_entity: float = Field(0.12, ge=0.0, le=1.0)  # follow the wrong passage at a later hop
    premature_answer: float = Field(0.2, ge=0.0, le=1.0)  # answer with an intermediate entity
    recover: float = Field(0.5, ge=0.0, le=1.0)  # after a wrong search, search the right entity
    wrong_answer: float = Field(0.08, ge=0.0, le=1.0)  # all hops done, answer with a distractor


class FamilySettings(_Strict):
    """Settings of the task families (``--task bfcl|math``); the search task ignores them."""

    # The families' teachers (``Task.teacher``) have one knob: how often they err (corrupt a call's
    # argument, end a turn early, a wrong operator, a guess without the tool; verl_trace/tasks/).
    mistake_rate: float = Field(0.3, ge=0.0, le=1.0)
    # Train on the first N training rows only (None: all). A model trained from scratch in a minute
    # cannot generalize to these tasks; memorizing a few rows is what gives a quick run's first RL
    # steps successes and failures to compare.
    train_rows: int | None = Field(None, ge=1)


class SFTSettings(_Strict):
    demonstrations: int = Field(1500, ge=8)  # one per training question (sampled without replacement first)
    steps: int = Field(400, ge=1)
    batch_size: int = Field(24, ge=1)
    lr: float = Field(3e-3, gt=0.0)
    warmup: int = Field(20, ge=0)
    context_weight: float = Field(0.5, ge=0.0)  # loss weight of question/observation tokens (sft.py)
    rename: bool = True  # rename entities at random in every demonstration (sft.Renamer)


class RLSettings(_Strict):
    """The RL phase as verl's trainer runs it (``trainer.overrides`` maps each field to verl's)."""

    steps: int = Field(20, ge=1)  # trainer.total_training_steps
    prompts_per_step: int = Field(16, ge=1)  # data.train_batch_size: tree roots per step (trace: chosen from the pool)
    leaves_per_prompt: int = Field(8, ge=2)  # rollout.n: the step's budget is prompts_per_step * this, in leaves
    temperature: float = Field(0.7, gt=0.0)  # rollout.temperature: sampling (and loss) temperature
    lr: float = Field(5e-4, gt=0.0)  # tuned on GRPO (docs/demo.md)
    lr_warmup_steps: int = Field(3, ge=0)  # RL steps of linear warm-up (verl steps its scheduler once per step)
    weight_decay: float = Field(0.0, ge=0.0)
    clip_ratio: float = Field(0.2, gt=0.0)
    mini_batches: int = Field(2, ge=1)  # optimizer steps per RL step (PPO epochs: 1); must divide prompts_per_step
    micro_batch_size: int = Field(16, ge=1)  # rows per forward/backward pass
    max_grad_norm: float = Field(1.0, gt=0.0)
    save_every: int = Field(1, ge=1)  # trainer.save_freq: Ctrl-C loses at most this many steps
    keep_checkpoints: int = Field(2, ge=1)  # trainer.max_actor_ckpt_to_keep (the predictor's follows it)
    max_batch_size: int = Field(128, ge=1)  # rows the hf rollout server decodes together (128: 1.8x the tokens/s of 32)


class EvalSettings(_Strict):
    """Held-out evaluation: verl's validation (greedy, one chain per question) at the start and
    every ``every`` steps and after the last."""

    every: int = Field(10, ge=1)  # trainer.test_freq
    questions: int = Field(1051, ge=1)  # held-out questions (a fixed sample, the same for every run, if fewer than all)


class DemoSettings(_Strict):
    # search: the mini multi-hop world (recipes/search_r1); bfcl, math: verl_trace.tasks.get_task(name)
    task_name: str = "search"
    seed: int = 0
    # torch threads for training and decoding. One: with two, OpenMP's barriers stall whenever
    # another process holds a core, and steps got ~10x slower on the shared 2-core machine.
    threads: int = Field(1, ge=1)
    model: ModelSettings = ModelSettings()
    task: TaskSettings = TaskSettings()
    teacher: TeacherSettings = TeacherSettings()
    family: FamilySettings = FamilySettings()
    sft: SFTSettings = SFTSettings()
    rl: RLSettings = RLSettings()
    eval: EvalSettings = EvalSettings()
    trace: TraceConfig = Field(default_factory=lambda: TraceConfig(allocator="trace"))

    @model_validator(mode="after")
    def _runnable_allocator(self) -> DemoSettings:
        if self.task_name not in TASKS:
            raise ValueError(f"task_name {self.task_name!r} is not a demo task; choose one of {list(TASKS)}")
        if self.trace.allocator not in ALLOCATORS:
            raise ValueError(f"trace.allocator {self.trace.allocator!r} cannot run in the demo; "
                             f"choose one of {ALLOCATORS}")
        return self

    @property
    def allocator(self) -> str:
        return self.trace.allocator

    @property
    def estimator(self) -> str:
        """The advantage estimator paired with the allocator; GRPO (``uniform``) uses verl's own
        ``grpo``, as the recipe's ``method=grpo`` does (the same numbers as ``trace`` on chains)."""
        return "grpo" if self.trace.allocator == "uniform" else REGISTRY[self.trace.allocator].estimator

    @property
    def leaves_per_step(self) -> int:
        return self.rl.prompts_per_step * self.rl.leaves_per_prompt


# Per-allocator defaults, as in recipes/search_r1/config/method/: TRACE chooses its roots from a
# candidate pool twice the batch (prompts it does not choose cost no rollouts).
METHODS: dict[str, dict[str, Any]] = {"trace": {"allocation": {"pool_factor": 2.0}}}

QUICK: dict[str, Any] = {
    "sft": {"demonstrations": 256, "steps": 40, "batch_size": 16},
    "rl": {"steps": 3, "prompts_per_step": 4, "leaves_per_prompt": 4},
    "eval": {"every": 3, "questions": 16},
}


# The task families' sequences (measured on their teachers' demonstrations, docs/demo.md): BFCL mini
# prompts 186-326 tokens and responses up to ~460 (several user turns, calls and observations);
# math prompts under 80 tokens, responses under 60. Their training sets are small (BFCL 8 entries,
# math 64 problems), so a step takes 4 roots. The turn limit is the task's own (``Task.rollout``).
TASK_PRESETS: dict[str, dict[str, Any]] = {
    "bfcl": {"task": {"prompt_length": 512, "response_length": 640}, "model": {"max_positions": 1152},
             "rl": {"prompts_per_step": 4}, "eval": {"every": 5}},
    "math": {"task": {"prompt_length": 128, "response_length": 192}, "rl": {"prompts_per_step": 8}, "eval": {"every": 5}},
}
# --quick for a task family: the smallest model of the CPU assets (verl_trace/cpu/prepare.py), two RL
# steps, and a supervised phase long enough to memorize a few training rows, which is what gives the
# first RL steps both successes and failures (measured: docs/demo.md). BFCL samples at temperature 1,
# as the model learned the teacher's mixture of right and wrong calls (0.7 picked the likelier one in
# every leaf of a tree); math at 1 garbled most calls' JSON, at the default 0.7 it does not.
# Learning is not the point here.
_SMALL = {"hidden": 64, "layers": 2, "heads": 2, "kv_heads": 1}
TASK_QUICK: dict[str, dict[str, Any]] = {
    "bfcl": {"model": _SMALL, "family": {"train_rows": 2}, "sft": {"demonstrations": 128, "steps": 250, "batch_size": 8},
             "rl": {"steps": 2, "prompts_per_step": 2, "leaves_per_prompt": 8, "temperature": 1.0}, "eval": {"every": 2}},
    "math": {"model": _SMALL, "family": {"train_rows": 8}, "sft": {"steps": 300},
             "rl": {"steps": 2, "prompts_per_step": 4}, "eval": {"every": 2}},
}


def make_settings(*, task: str = "search", quick: bool = False, allocator: str = "trace", seed: int = 0,
                  overrides: dict[str, Any] | None = None) -> DemoSettings:
    """The full or quick preset of ``task`` for ``allocator`` and ``seed``, with optional nested
    overrides (e.g. ``{"rl": {"steps": 10}}``). Bad values fail naming the field."""
    if task not in TASKS:
        raise ValueError(f"task {task!r}; choose one of {list(TASKS)}")
    trace = _merge({"allocator": allocator, "seed": seed, "predictor": {"seed": seed}}, METHODS.get(allocator, {}))
    raw: dict[str, Any] = {"seed": seed, "trace": trace}
    layers = [QUICK] if quick else []
    if task != "search":
        from ..tasks import get_task

        turns = get_task(task).rollout["multi_turn"]["max_assistant_turns"]
        layers = [{"task_name": task, "task": {"max_turns": turns}}, TASK_PRESETS[task], *layers,
                  *([TASK_QUICK[task]] if quick else [])]
    for layer in layers + ([overrides] if overrides else []):
        raw = _merge(raw, layer)
    return DemoSettings.model_validate(raw)


RESUMABLE_CHANGES = frozenset({"rl.steps"})  # e.g. --resume --steps 40 continues a 24-step run to 40


def first_difference(saved: Any, current: Any, where: str = "",
                     ignore: frozenset[str] = RESUMABLE_CHANGES) -> str | None:
    """Dotted path of the first differing field of two nested settings dicts (fields in ``ignore``
    aside), or None: what stops ``--resume`` from continuing a run under other settings."""
    if where in ignore:
        return None
    if isinstance(saved, dict) and isinstance(current, dict):
        for key in sorted(set(saved) | set(current)):
            diff = first_difference(saved.get(key), current.get(key), f"{where}.{key}" if where else key, ignore)
            if diff:
                return diff
        return None
    return None if saved == current else where or "<root>"


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def verl_config(task: TaskSettings, multi_turn: dict[str, Any] | None = None):
    """The slice of verl's trainer config that the agent loop and the tree runner read;
    ``multi_turn``: a task's own agent-loop settings (``Task.rollout``), the demo's turn limit kept."""
    from omegaconf import OmegaConf

    multi_turn = {"format": "hermes", "max_user_turns": task.max_turns, "max_parallel_calls": 1,
                  "max_tool_response_length": task.max_tool_response_chars, "tool_response_truncate_side": "right",
                  **(multi_turn or {}), "max_assistant_turns": task.max_turns}
    rollout = {"prompt_length": task.prompt_length, "response_length": task.response_length,
               "full_determinism": False, "multi_turn": multi_turn}
    return OmegaConf.create({"actor_rollout_ref": {"rollout": rollout}, "data": {"apply_chat_template_kwargs": {}}})
