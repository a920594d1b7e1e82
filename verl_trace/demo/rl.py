"""The RL phase: every step samples a candidate pool of training questions, spends the step's leaf
budget through ``TreeRolloutRunner`` (the allocator under test), computes the paired advantage
from the leaves' ``extra_fields["trace"]``, updates the policy (verl's PPO loss, AdamW) and the
engine's weights, and updates the shared predictor from ``StepResult.training_batch()``.
Held-out accuracy is measured at step 0 and every ``eval_every`` steps; a checkpoint is written
after every step, so Ctrl-C or a crash loses at most the step in progress.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..allocation import pool_size
from ..metrics import forest_metrics
from ..predictor import build_featurizer, build_predictor
from ..tree import RolloutTree
from . import checkpoint
from . import model as model_io
from .agent import SearchAgent
from .evaluate import evaluate
from .learner import LeafBatch, Learner, compute_advantages
from .progress import DemoProgress
from .settings import DemoSettings
from .warm_start import WarmStart
from .world import Question, load_split


class Sampler:
    """Training questions in seeded epochs; its state is a position, so it checkpoints as an int."""

    def __init__(self, questions: list[Question], seed: int, position: int = 0):
        self.questions, self.seed, self.position = questions, seed, position

    def take(self, n: int) -> list[Question]:
        out = []
        for _ in range(n):
            epoch, i = divmod(self.position, len(self.questions))
            order = random.Random(f"{self.seed}:{epoch}").sample(range(len(self.questions)), len(self.questions))
            out.append(self.questions[order[i]])
            self.position += 1
        return out


def eval_questions(settings: DemoSettings) -> list[Question]:
    """A fixed sample of the held-out questions (the same for every allocator and seed)."""
    test = load_split("test")
    n = min(settings.rl.eval_questions, len(test))
    return random.Random(0).sample(test, n) if n < len(test) else test


@dataclass
class History:
    evals: list[dict[str, float]] = field(default_factory=list)  # step, tokens, accuracy, ...
    steps: list[dict[str, float]] = field(default_factory=list)  # one record per RL step
    tokens: int = 0  # generated tokens of RL rollouts so far (the sampling cost)
    seconds: float = 0.0  # RL wall time so far (resumed runs add up)

    @property
    def step(self) -> int:
        return len(self.steps)


class RLRun:
    """One RL run from a warm start (see the module docstring). ``last_trees`` keeps the latest
    step's trees for the report's rendering."""

    def __init__(self, settings: DemoSettings, warm: WarmStart, out: Path, retrieve_url: str, progress: DemoProgress,
                 resume: bool = False):
        self.settings, self.out, self.progress = settings, Path(out), progress
        self.ckpt = self.out / "checkpoint"
        tc = settings.trace
        self.trace_cfg = tc.model_copy(update={"max_turns": settings.task.max_turns})
        self.history = History()
        state = None
        if resume and checkpoint.exists(self.ckpt):
            state = checkpoint.load_state(self.ckpt)
            diff = checkpoint.first_difference(state["settings"], settings.model_dump())
            if diff is not None:
                raise ValueError(f"--resume: the checkpoint in {self.ckpt} was trained with a different "
                                 f"setting: {diff} (delete it or use another --out)")
            self.tokenizer, self.model = model_io.load(self.ckpt)
        else:
            self.tokenizer, self.model = warm.load()
        self.model.eval()
        self.agent = SearchAgent(settings, self.tokenizer, self.model, retrieve_url)
        self.learner = Learner(self.model, settings.rl, self.tokenizer.pad_token_id, seed=settings.seed)
        self.predictor = build_predictor(tc.predictor)
        self.featurizer = build_featurizer(tc.predictor, settings.task.max_turns)
        self.sampler = Sampler(load_split("train"), settings.seed)
        self.eval_set = eval_questions(settings)
        self.last_trees: dict[str, RolloutTree] = {}
        if state is not None:
            self.learner.load_state_dict(state["learner"])
            self.predictor.load_state_dict(state["predictor"])
            self.sampler.position = state["sampler"]
            self.history = History(**state["history"])
            checkpoint.set_rng_state(state["rng"])

    # ------------------------------------------------------------------ one step
    def rl_step(self) -> dict[str, float]:
        s, step = self.settings, self.history.step + 1
        pool = self.sampler.take(pool_size(self.trace_cfg.allocation.pool_factor, s.rl.prompts_per_step))
        t0 = time.perf_counter()
        result = self.agent.rollout(pool, self.trace_cfg, n_roots=s.rl.prompts_per_step, leaves=s.leaves_per_step,
                                    temperature=s.rl.temperature, predictor=self.predictor, featurizer=self.featurizer,
                                    rng=np.random.default_rng([s.seed, step]), uid_prefix=f"s{step}-")
        t_roll = time.perf_counter()
        batch = LeafBatch.from_leaves(result.leaves)
        advantages = compute_advantages(batch, s.estimator, self.trace_cfg.advantage)
        learn = self.learner.update(batch, advantages, after_step=self.agent.update_weights)
        t_learn = time.perf_counter()
        anchors, outcomes = result.training_batch()
        pred = self.predictor.update(anchors, outcomes) if len(anchors) else {}
        tree_m = forest_metrics(result.trees.values(), s.estimator, self.trace_cfg.advantage,
                                self.trace_cfg.success_threshold, prefix="")
        tokens = int(tree_m["tokens_generated"])
        self.history.tokens += tokens
        self.last_trees = result.trees
        rewards = [float(leaf.output.reward_score) for leaf in result.leaves]
        record = {
            "step": step,
            "tokens": tokens,
            "cumulative_tokens": self.history.tokens,
            "leaves": len(result.leaves),
            "reward_mean": float(np.mean(rewards)),
            "effective_sample_ratio": tree_m["effective_sample_ratio"],
            "nonzero_advantage_tokens": float((advantages != 0).sum() / batch.response_mask.sum().clamp(min=1)),
            "mixed_root_ratio": tree_m["mixed_root_ratio"],
            "branch_points": tree_m["branch_points"],
            "tokens_saved": tree_m["tokens_saved"],
            "informative_comparisons": tree_m["informative_comparisons"],
            "leaves_failed": tree_m["leaves_failed"],
            "rollout_seconds": t_roll - t0,
            "update_seconds": t_learn - t_roll,
            "seconds": time.perf_counter() - t0,
            **{k: float(v) for k, v in learn.items()},
            **{k: float(v) for k, v in pred.items()},
            **{k: float(v) for k, v in result.metrics.items() if k.startswith("plan/")},
        }
        self.history.steps.append(record)
        self.history.seconds += record["seconds"]
        return record

    def evaluate(self) -> dict[str, float]:
        t0 = time.perf_counter()
        m = evaluate(self.agent, self.eval_set, self.settings.rl.eval_temperature)
        rec = {"step": self.history.step, "cumulative_tokens": self.history.tokens, **m,
               "seconds": time.perf_counter() - t0}
        self.history.evals.append(rec)
        return rec

    def save(self) -> None:
        state: dict[str, Any] = {
            "settings": self.settings.model_dump(),
            "learner": self.learner.state_dict(),
            "predictor": self.predictor.state_dict(),
            "sampler": self.sampler.position,
            "history": vars(self.history),
        }
        checkpoint.save(self.ckpt, self.model, self.tokenizer, state)

    # ------------------------------------------------------------------ the loop
    def run(self) -> History:
        """Train until ``rl.steps`` (continuing a resumed run); KeyboardInterrupt propagates after
        the completed steps are checkpointed."""
        s, h = self.settings, self.history
        if not h.evals:
            self._show_eval(self.evaluate(), "start")
        self.progress.phase("RL", s.rl.steps, completed=h.step)
        while h.step < s.rl.steps:
            rec = self.rl_step()
            last_eval = h.evals[-1]
            if h.step % s.rl.eval_every == 0 or h.step == s.rl.steps:
                last_eval = self.evaluate()
            self.save()
            self.progress.update("RL", info=f"reward {rec['reward_mean']:.2f}  ESR {rec['effective_sample_ratio']:.2f}  "
                                            f"held-out {last_eval['accuracy']:.3f} @ {last_eval['step']}  "
                                            f"tokens {h.tokens / 1e3:.0f}k")
        return h

    def _show_eval(self, rec: dict[str, float], name: str) -> None:
        self.progress.log(f"held-out accuracy ({name}, {int(rec['questions'])} test questions): {rec['accuracy']:.3f}")

    def close(self) -> None:
        self.agent.close()
