"""The ``trace:`` config section: one schema, validated before anything starts.

verl's own sections are dataclass-backed and reject unknown keys, so every TRACE setting lives in a
top-level ``trace:`` section (and ``algorithm.adv_estimator=trace``). Unknown keys and bad values
fail with the dotted path of the field, e.g. ``trace.budget.leaves_per_prompt``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

AllocatorName = Literal["uniform", "prompt", "tree_random", "entropy", "trace", "oracle"]
"""``trace.allocator``'s choices. The allocator classes and what each can do live in
``verl_trace.allocation.ALLOCATORS`` (layer 3); this schema sits below them (the predictor and the
allocators read it), so it names them once more to reject a bad name at load time, with the list
of choices, without importing layer 3. ``tests/test_allocation.py`` checks the two agree."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class BudgetConfig(_Strict):
    """Sampling budget of one training step. Leaves default to ``rollout.n`` per prompt, which is
    exactly GRPO's cost; ``tokens`` optionally caps generated tokens per step as well."""

    leaves_per_prompt: int | None = Field(default=None, ge=1)
    tokens: int | None = Field(default=None, ge=1)
    min_leaves_per_root: int = Field(default=2, ge=1)


class AllocatorConfig(_Strict):
    """Parameters shared by the allocators (each reads the ones it needs; see docs/algorithm.md)."""

    initial_fraction: float = Field(default=0.5, gt=0.0, le=1.0)  # share of a root's leaves spent on first chains
    rounds: int = Field(default=1, ge=0)  # expansion rounds after the first chains
    branch_width: int = Field(default=2, ge=1)  # continuations per chosen prefix (tree_random, entropy)
    pool_factor: float = Field(default=1.0, ge=1.0)  # candidate roots = pool_factor * batch prompts
    thompson: bool = True  # prompt: Thompson-sample success rates before ranking (MoPPS)
    contrast_weight: float = Field(default=0.5, ge=0.0)  # trace: weight of prefix-level contrast gain
    cost_exponent: float = Field(default=0.5, ge=0.0)  # trace: gain / expected_tokens ** cost_exponent
    max_per_anchor: int = Field(default=4, ge=1)  # trace: continuations per prefix per round
    # trace: a tree whose best continuation is expected to add fewer effective leaves than this
    # releases its round share to trees with a higher marginal gain (docs/benchmarks.md measures it)
    release_gain: float = Field(default=1.0, ge=0.0)
    # trace: the objective the greedy maximizes (docs/algorithm.md §4.2): a tree of n leaves is worth
    # P(mixed outcomes) * (mixed_weight + n ** leaf_exponent); (0, 1) = expected effective leaves
    mixed_weight: float = Field(default=0.0, ge=0.0)
    leaf_exponent: float = Field(default=1.0, gt=0.0, le=1.0)
    entropy_weight: float = Field(default=1.0, ge=0.0)  # entropy: weight of the entropy rise (ARPO w)


class PredictorConfig(_Strict):
    kind: Literal["hybrid", "shared", "beta"] = "hybrid"
    featurizer: Literal["hashed", "embedding"] = "hashed"
    feature_dim: int = Field(default=64, ge=8)  # hashed featurizer: dims per text block
    model_path: str | None = None  # embedding featurizer: local sentence-transformers directory
    members: int = Field(default=5, ge=1)
    hidden: int = Field(default=32, ge=1)
    lr: float = Field(default=3e-3, gt=0.0)
    steps_per_update: int = Field(default=40, ge=0)
    buffer_size: int = Field(default=20_000, ge=1)
    replay_discount: float = Field(default=1.0, gt=0.0, le=1.0)  # shared model: a row k steps old weighs this ** k
    alpha0: float = Field(default=1.0, gt=0.0)
    beta0: float = Field(default=1.0, gt=0.0)
    discount: float = Field(default=0.9, ge=0.0, le=1.0)  # per-key evidence weight per elapsed step
    # how per-key evidence ages: by training steps elapsed (default) or once per new observation
    # of the key (MoPPS's original rule; stale when a prompt returns after many steps)
    decay_by: Literal["steps", "visits"] = "steps"
    # how much each (anchor, leaf outcome) row weighs in the shared model's loss: every leaf alike
    # ("leaf"), every anchor alike ("anchor": 1/n per row), or every anchor alike counting only the
    # leaves that were not placed because of outcomes below it ("first"); docs/algorithm.md §3
    example_weight: Literal["leaf", "anchor", "first"] = "leaf"
    kappa_max: float = Field(default=64.0, gt=0.0)  # cap on the Beta concentration of a prediction
    seed: int = 0


class AdvantageConfig(_Strict):
    """The tree advantage (docs/algorithm.md has the formulas)."""

    local_weight: float = Field(default=1.0, ge=0.0)  # weight of prefix-level contrast at branch points
    value: Literal["child_mean", "leaf_mean"] = "child_mean"
    norm_by_std: bool | None = None  # None: follow algorithm.norm_adv_by_std_in_grpo
    epsilon: float = Field(default=1e-6, ge=0.0)
    truncated: Literal["keep", "drop"] = "keep"  # whether length-truncated leaves join the contrast


class TraceConfig(_Strict):
    allocator: AllocatorName = "trace"
    schedule: Literal["pipelined", "rounds"] = "pipelined"
    # A tree is re-planned once this share of its current round's leaves is back (1.0 = wait for all).
    ready_fraction: float = Field(default=0.75, gt=0.0, le=1.0)
    max_turns: int | None = Field(default=None, ge=1)  # None: rollout.multi_turn.max_assistant_turns
    success_threshold: float = 0.5  # reward >= threshold counts as success for allocation
    seed: int = 0
    # Write every training step's rollout trees here as JSON (step_<N>-<id>.json, RolloutTree.to_dict):
    # what the allocator branched, the predictor's estimates, each leaf's reward. None: not written.
    tree_dump_dir: str | None = None
    budget: BudgetConfig = BudgetConfig()
    allocation: AllocatorConfig = AllocatorConfig()
    predictor: PredictorConfig = PredictorConfig()
    advantage: AdvantageConfig = AdvantageConfig()

    @model_validator(mode="after")
    def _consistent(self) -> TraceConfig:
        lp = self.budget.leaves_per_prompt
        if lp is not None and lp < self.budget.min_leaves_per_root:
            raise ValueError(
                f"budget.leaves_per_prompt ({lp}) is smaller than budget.min_leaves_per_root "
                f"({self.budget.min_leaves_per_root})"
            )
        return self


class TraceConfigError(ValueError):
    """A readable error naming the offending ``trace.*`` field(s)."""


def load_trace_config(raw: Any = None) -> TraceConfig:
    """Validate a mapping (dict or OmegaConf node) into a TraceConfig."""
    if raw is None:
        return TraceConfig()
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(raw, DictConfig):
            raw = OmegaConf.to_container(raw, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf ships with verl
        pass
    if not isinstance(raw, dict):
        raise TraceConfigError(f"trace: expected a mapping, got {type(raw).__name__}")
    try:
        return TraceConfig.model_validate(raw)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = ".".join(str(x) for x in ("trace", *err["loc"]))
            lines.append(f"{loc}: {err['msg']}")
        raise TraceConfigError("invalid TRACE config:\n  " + "\n  ".join(lines)) from None
