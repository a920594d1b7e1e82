"""Regime files: every parameter of the simulated agent environment and of the run, validated.

A regime is a YAML or JSON mapping; unknown keys and bad values fail with the dotted path of the
field (``regime default: turns.walk_std: ...``). docs/benchmarks.md explains each parameter.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from verl_trace.allocation import pool_size


class StrictModel(BaseModel):
    """Unknown keys are errors: a misspelt setting must not silently keep its default."""

    model_config = ConfigDict(extra="forbid")


class Component(StrictModel):
    """One normal component of the initial success-logit mixture."""

    weight: float = Field(gt=0.0)
    mean: float
    std: float = Field(ge=0.0)


class Difficulty(StrictModel):
    """Latent difficulty: each prompt's initial success logit is drawn from this mixture."""

    components: list[Component] = Field(min_length=1)


class Learning(StrictModel):
    """The policy improves between steps: each prompt's logit moves by its own drift per step."""

    drift_mean: float = 0.05
    drift_std: float = Field(default=0.05, ge=0.0)


class Lognormal(StrictModel):
    median: float = Field(gt=0.0)
    sigma: float = Field(default=0.5, ge=0.0)


class Turns(StrictModel):
    """How each turn moves the conditional success probability, and when the agent answers."""

    max_turns: int = Field(default=6, ge=2)  # assistant turns, the answer turn included
    hops_min: int = Field(default=1, ge=1)
    hops_max: int = Field(default=3, ge=1)
    answer_without_search: float = Field(default=0.05, ge=0.0, le=1.0)
    answer_hazard: float = Field(default=0.1, ge=0.0, le=1.0)  # before the question's hops are done
    answer_hazard_after_hops: float = Field(default=0.5, ge=0.0, le=1.0)
    answer_hazard_found: float = Field(default=0.85, ge=0.0, le=1.0)  # after a turn that found the answer
    walk_std: float = Field(default=0.5, ge=0.0)  # logit random walk of a non-decisive turn
    decisive_mean: float = Field(default=0.2, gt=0.0, lt=1.0)  # P(next turn decisive), mean over prefixes
    decisive_concentration: float = Field(default=4.0, gt=0.0)  # Beta concentration of that probability
    found_p: float = Field(default=0.97, gt=0.5, lt=1.0)  # success probability after "found the answer"
    lost_p: float = Field(default=0.02, gt=0.0, lt=0.5)  # ... after a wrong search / bad tool call

    @model_validator(mode="after")
    def _hops(self) -> Turns:
        if self.hops_max < self.hops_min:
            raise ValueError(f"hops_max ({self.hops_max}) < hops_min ({self.hops_min})")
        return self


class Tokens(StrictModel):
    """Tokens per turn (lognormal: heavy right tail), scaled by a per-prompt verbosity factor."""

    prompt: Lognormal = Lognormal(median=150, sigma=0.3)
    action: Lognormal = Lognormal(median=120, sigma=0.7)
    answer: Lognormal = Lognormal(median=60, sigma=0.6)
    observation: Lognormal = Lognormal(median=350, sigma=0.4)
    verbosity_sigma: float = Field(default=0.3, ge=0.0)


class Latency(StrictModel):
    """Virtual time: slots decode at a fixed rate; tool calls run outside the slots."""

    decode_tokens_per_s: float = Field(default=40.0, gt=0.0)  # per generation slot
    prefill_tokens_per_s: float = Field(default=4000.0, gt=0.0)
    tool_s: Lognormal = Lognormal(median=0.8, sigma=1.0)
    slots_per_leaf: float = Field(default=0.25, gt=0.0)  # concurrent slots / leaves of the step


class Flag(StrictModel):
    hit: float = Field(ge=0.0, le=1.0)  # P(flag shows | event happened)
    false_alarm: float = Field(ge=0.0, le=1.0)  # P(flag shows | it did not)


class Observables(StrictModel):
    """What the predictor sees: noisy cues, never the probability itself."""

    prompt_signal_std: float = Field(default=3.0, gt=0.0)  # noise (logit units) on the difficulty cue
    prompt_dims: int = Field(default=8, ge=3)  # prompt-block width (cue, hops cue, length, topic noise)
    evidence_std: float = Field(default=0.8, gt=0.0)  # noise on each turn's evidence (logit units)
    found_flag: Flag = Flag(hit=0.7, false_alarm=0.05)
    lost_flag: Flag = Flag(hit=0.5, false_alarm=0.05)
    entropy_base: float = Field(default=0.6, ge=0.0)
    entropy_gain: float = Field(default=2.0, ge=0.0)  # x (decisiveness * 4 p (1 - p)) of the prefix
    entropy_noise_std: float = Field(default=0.3, ge=0.0)


class Run(StrictModel):
    """The training-like run every allocator gets (same prompts, same pools, same budget)."""

    train_prompts: int = Field(default=320, ge=1)
    eval_prompts: int = Field(default=200, ge=1)
    batch_prompts: int = Field(default=64, ge=1)
    leaves_per_prompt: int = Field(default=8, ge=2)
    pool_factor: float = Field(default=2.0, ge=1.0)
    steps: int = Field(default=12, ge=1)


class Regime(StrictModel):
    name: str
    description: str = ""
    difficulty: Difficulty
    learning: Learning = Learning()
    turns: Turns = Turns()
    tokens: Tokens = Tokens()
    latency: Latency = Latency()
    observables: Observables = Observables()
    run: Run = Run()

    @model_validator(mode="after")
    def _pool(self) -> Regime:
        pool = pool_size(self.run.pool_factor, self.run.batch_prompts)
        if pool > self.run.train_prompts:
            raise ValueError(
                f"run.pool_factor * run.batch_prompts ({pool}) exceeds run.train_prompts ({self.run.train_prompts})"
            )
        return self


class RegimeError(ValueError):
    """A regime file that cannot be used, naming the file and the field."""


def parse_regime(raw: Any, source: str = "<dict>") -> Regime:
    if not isinstance(raw, dict):
        raise RegimeError(f"{source}: a regime must be a mapping, got {type(raw).__name__}")
    try:
        return Regime.model_validate(raw)
    except ValidationError as e:
        lines = [f"{'.'.join(str(x) for x in err['loc']) or '<root>'}: {err['msg']}" for err in e.errors()]
        raise RegimeError(f"{source}: invalid regime:\n  " + "\n  ".join(lines)) from None


def load_regime_file(path: Path) -> Regime:
    text = path.read_text()
    try:
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise RegimeError(f"{path}: cannot parse: {e}") from None
    return parse_regime(raw, str(path))


def load_regimes(path: str | Path) -> dict[str, Regime]:
    """One regime file, or every ``*.yaml|*.yml|*.json`` in a directory (sorted, ``default`` first)."""
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix in (".yaml", ".yml", ".json"))
        if not files:
            raise RegimeError(f"{p}: no regime files (*.yaml, *.yml, *.json)")
    elif p.is_file():
        files = [p]
    else:
        raise RegimeError(f"{p}: no such file or directory")
    out: dict[str, Regime] = {}
    for f in files:
        r = load_regime_file(f)
        if r.name in out:
            raise RegimeError(f"{f}: regime name {r.name!r} is used twice")
        out[r.name] = r
    return dict(sorted(out.items(), key=lambda kv: (kv[0] != "default", kv[0])))
