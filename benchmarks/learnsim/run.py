"""One training run: an allocator (with its paired estimator) trains the shared policy for a number
of steps through the product's planner; held-out return is recorded against generated tokens."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from benchmarks.sim.regime import StrictModel
from verl_trace.allocation import ALLOCATORS, Budget, build_allocator, new_planner
from verl_trace.allocation.drive import drive
from verl_trace.config import TraceConfig
from verl_trace.predictor import OraclePredictor, build_predictor

from .learner import Learner
from .policy import SoftmaxPolicy
from .rollout import Sampler
from .task import Task, TaskSettings

# The estimator each allocator trains with, from the allocator registry: trace (on chains exactly
# GRPO) for uniform, prompt, trace and oracle; tree_grpo for tree_random; verl's own grpo (one flat
# group per prompt, as ARPO trains) for entropy.
ESTIMATOR = {name: cls.estimator for name, cls in ALLOCATORS.items()}


class TrainSettings(StrictModel):
    """Shared by every allocator; tuned on ``uniform`` only (docs/benchmarks.md)."""

    roots: int = Field(default=16, ge=1)
    leaves_per_root: int = Field(default=8, ge=2)
    pool_factor: float = Field(default=2.0, ge=1.0)
    steps: int = Field(default=40, ge=1)  # the comparison's horizon: "final" return is after these steps
    # Past the horizon a run goes on until it reaches uniform's final return on its seed or has
    # spent this many times uniform's tokens (then it counts as not reached).
    token_horizon: float = Field(default=1.5, ge=1.0)
    eval_every: int = Field(default=2, ge=1)  # evaluations before the horizon (after it: every step)
    lr: float = Field(default=0.15, gt=0.0)  # tuned on uniform (docs/benchmarks.md)
    init_scale: float = Field(default=0.5, ge=0.0)
    init_alignment: float = Field(default=0.5, ge=-1.0, le=1.0)
    budget: Literal["leaves", "tokens"] = "leaves"


class Settings(StrictModel):
    task: TaskSettings = TaskSettings()
    train: TrainSettings = TrainSettings()


@dataclass(frozen=True)
class RunSpec:
    """A labelled allocator with optional ``trace.*`` overrides (nested dicts, e.g.
    ``{"allocation": {"pool_factor": 1.0}}``); a ``train`` section overrides the simulator's
    training settings for this run only (e.g. ``{"train": {"roots": 32, "leaves_per_root": 4}}``)."""

    label: str
    allocator: str
    overrides: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def estimator(self) -> str:
        return ESTIMATOR[self.allocator]


def run_settings(spec: RunSpec, settings: Settings) -> Settings:
    """The simulator settings of one run: the shared ones with the run's ``train`` overrides."""
    over = spec.overrides.get("train")
    if not over:
        return settings
    return Settings.model_validate({**settings.model_dump(), "train": {**settings.train.model_dump(), **over}})


def trace_config(spec: RunSpec, settings: Settings, turns: int, seed: int) -> TraceConfig:
    t = run_settings(spec, settings).train
    raw: dict[str, Any] = {
        "allocator": spec.allocator,
        "max_turns": turns,
        "seed": seed,
        "budget": {"leaves_per_prompt": t.leaves_per_root},
        "allocation": {"pool_factor": t.pool_factor},
    }
    for section, values in spec.overrides.items():
        if section == "train":
            continue
        if isinstance(values, dict):
            raw.setdefault(section, {}).update(values)
        else:
            raw[section] = values
    return TraceConfig.model_validate(raw)


class PoolStream:
    """Candidate pools from the training prompts in shuffled epochs (no prompt twice in a pool);
    the same sequence for every allocator of a seed."""

    def __init__(self, prompts: np.ndarray, seed: int):
        self.prompts, self.rng = prompts, np.random.default_rng([seed, 303])
        self.stream: list[int] = []

    def next(self, size: int) -> np.ndarray:
        pool: list[int] = []
        while len(pool) < size:
            if not self.stream:
                self.stream = self.rng.permutation(self.prompts).tolist()
            i = self.stream.pop(0)
            if i in pool:
                self.stream.append(i)
            else:
                pool.append(i)
        return np.array(pool)


def _calibration(trees, pool, selected: set[str]) -> dict[str, list[tuple[float, float]]]:
    """(p_hat, true_p) of the anchors the allocator predicted, by whether it favoured them:
    roots it selected or not, prefixes it expanded (>= 2 children) or not."""
    out: dict[str, list[tuple[float, float]]] = {"roots_selected": [], "roots_skipped": [], "prefixes_expanded": [],
                                                 "prefixes_other": []}
    for t in pool:
        if "p_hat" in t.root.meta:
            out["roots_selected" if t.uid in selected else "roots_skipped"].append((t.root.meta["p_hat"], t.root.meta["true_p"]))
    for t in trees:
        for n in t.nodes[1:]:
            if "p_hat" in n.meta and not n.terminal:
                out["prefixes_expanded" if len(n.children) >= 2 else "prefixes_other"].append((n.meta["p_hat"], n.meta["true_p"]))
    return out


@dataclass(frozen=True)
class Reference:
    """What a run needs from uniform's run on the same seed."""

    final_return: float  # the target
    tokens: int  # uniform's tokens over the horizon
    step_tokens: list[int]  # uniform's tokens per step (budget "tokens" matches them)


def reference(result: dict[str, Any]) -> Reference:
    steps = [row["tokens"] for row in result["steps"]]
    return Reference(result["curve"][-1][1], sum(steps), steps)


def run(spec: RunSpec, settings: Settings, seed: int, ref: Reference | None = None) -> dict[str, Any]:
    """Train for ``steps`` steps, then (given uniform's ``ref`` on this seed) on until the run
    reaches uniform's final return or has spent ``token_horizon`` times uniform's tokens. In budget
    ``tokens`` each step's leaf budget is rescaled, from this run's own tokens per leaf so far, so
    that it generates about as many tokens as uniform did in that step."""
    torch.manual_seed(seed)
    settings = run_settings(spec, settings)
    st = settings.train
    task = Task(settings.task, seed)
    policy = SoftmaxPolicy(task, seed, st.init_scale, st.init_alignment)
    cfg = trace_config(spec, settings, task.turns, seed)
    allocator = build_allocator(cfg)
    predictor = None
    if spec.allocator == "oracle":
        predictor = OraclePredictor()
    elif allocator.needs_predictor:
        predictor = build_predictor(cfg.predictor)
    learner = Learner(policy, spec.estimator, st.lr, cfg.advantage)
    salt = zlib.crc32(spec.label.encode())
    sampler = Sampler(task, seed * 7919 + salt)
    stream = PoolStream(task.train, seed)
    pool_size = int(cfg.allocation.pool_factor * st.roots)
    base_leaves = st.roots * st.leaves_per_root
    match_tokens = ref is not None and st.budget == "tokens"
    curve: list[tuple[int, float]] = []
    steps: list[dict[str, Any]] = []
    calib: dict[str, list[tuple[float, float]]] = {}
    tokens = leaves_so_far = 0
    step = 0
    while True:
        if step % st.eval_every == 0 or step > st.steps:
            curve.append((tokens, policy.expected_return(task.held_out)))
            if step >= st.steps and (ref is None or curve[-1][1] >= ref.final_return or tokens >= st.token_horizon * ref.tokens):
                break
        leaves = base_leaves
        if match_tokens:
            want = ref.step_tokens[step] if step < len(ref.step_tokens) else ref.tokens / len(ref.step_tokens)
            per_leaf = tokens / leaves_so_far if leaves_so_far else ref.step_tokens[0] / base_leaves
            leaves = int(np.clip(round(want / per_leaf), st.roots * cfg.budget.min_leaves_per_root, 4 * base_leaves))
        ids = stream.next(pool_size)
        pool = sampler.pool(ids, policy.probs(ids), step)
        planner = new_planner(cfg, allocator, n_roots=st.roots, budget=Budget(leaves), max_turns=task.turns,
                              predictor=predictor, featurize=sampler.featurize, rng=np.random.default_rng([seed, step, salt]))
        drive(planner, pool, sampler.rollout)
        trees = list(planner.ctx.trees.values())
        lm = learner.update(trees)
        row: dict[str, Any] = {
            "leaves": int(lm["leaves"]),
            "effective_leaves": int(lm["effective_leaves"]),
            "skipped": lm["skipped"],
        }
        if predictor is not None and not isinstance(predictor, OraclePredictor):
            batch, y = planner.training_batch()
            pm = predictor.update(batch, y)
            row.update({k.split("/")[-1]: v for k, v in pm.items() if k.startswith("predictor/hybrid_") or k.startswith("predictor/shared_")})
        for k, v in _calibration(trees, pool, set(planner.ctx.trees)).items():
            calib.setdefault(k, []).extend(v)
        step_tokens = sum(t.generated_tokens() for t in trees)
        tokens += step_tokens
        leaves_so_far += row["leaves"]
        rewards = [leaf.reward for t in trees for leaf in t.leaves()]
        root_p = [t.root.meta["true_p"] for t in trees]
        row.update({
            "tokens": step_tokens,
            "train_reward": float(np.mean(rewards)),
            "root_true_p": float(np.mean(root_p)),
            "pool_true_p": float(np.mean([t.root.meta["true_p"] for t in pool])),
            "mixed_roots": float(np.mean([0 < sum(lf.reward for lf in t.leaves()) < len(t.leaves()) for t in trees])),
        })
        steps.append(row)
        step += 1
    calibration = {}
    for k, pairs in calib.items():
        if pairs:
            p_hat, p_true = np.array(pairs).T
            calibration[k] = {"n": len(pairs), "bias": float(np.mean(p_hat - p_true)),
                              "rmse": float(np.sqrt(np.mean((p_hat - p_true) ** 2)))}
    return {"curve": curve, "steps": steps, "calibration": calibration}
