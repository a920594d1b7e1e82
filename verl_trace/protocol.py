"""What travels between the TRACE rollout and the trainer, defined once.

Every leaf the TRACE rollout writes to TransferQueue is an ordinary verl trajectory (key
``{uid}_{session_id}_{index}``, the fields of ``AgentLoopOutput.as_dict()``) whose
``extra_fields[TRACE_FIELD]`` says where the leaf sits in its rollout tree. Leaves of one tree
share the verl ``uid``. The trainer reads this to hand ``tree_paths``, ``turn_spans`` and
``leaf_status`` to the ``trace`` / ``tree_grpo`` estimators.

Pure Python and pydantic: both the rollout layer and the trainer layer import it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .tree import ROOT, LeafStatus

TRACE_FIELD = "trace"
"""Key of the tree metadata inside a trajectory's ``extra_fields``."""

ROOTS_KEY = "trace_n_roots"
"""Non-tensor entry of the prompt batch the trainer hands to ``generate_sequences``: how many of
the batch's prompts become roots this step. The rest of the batch is the candidate pool the
allocator chooses from (``trace.allocation.pool_factor``)."""

TREE_ESTIMATORS = ("trace", "tree_grpo")
"""The advantage estimators (``algorithm.adv_estimator``) that read the tree metadata; they give a
``failed`` leaf zero advantage, so the rollout writes failed leaves only for them."""

METRICS_PARTITION = "trace_metrics"
"""TransferQueue partition of the rollout's step metrics: each TRACE rollout worker puts one
tag-only key per training submission there (its ``trace/*`` and ``plan/*`` metrics as the tag);
the trainer merges and clears them once per step (``metrics.merge_step_metrics``). verl's V1
trainer reads no rollout metrics of its own, and its ReplayBuffer samples only ``train``/``val``."""


class TreeMeta(BaseModel):
    """``extra_fields["trace"]`` of one leaf."""

    model_config = ConfigDict(extra="allow", frozen=True)

    tree_uid: str
    path: list[int] = Field(min_length=2)  # node ids root .. leaf, root = 0
    spans: list[tuple[int, int]]  # [start, end) of each turn on the path, response coordinates
    status: LeafStatus = LeafStatus.OK

    @model_validator(mode="after")
    def _consistent(self) -> TreeMeta:
        if self.path[0] != ROOT:
            raise ValueError(f"path must start at the root (node {ROOT}), got {self.path}")
        if len(self.spans) != len(self.path) - 1:
            raise ValueError(f"{len(self.spans)} spans for a path of {len(self.path) - 1} turns")
        prev = 0
        for s, e in self.spans:
            if not prev <= s <= e:
                raise ValueError(f"spans must be ordered, non-overlapping [start, end) pairs, got {self.spans}")
            prev = e
        return self

    def to_field(self) -> dict[str, Any]:
        """The plain dict to store under ``extra_fields[TRACE_FIELD]``."""
        return {"tree_uid": self.tree_uid, "path": list(self.path), "spans": [list(s) for s in self.spans],
                "status": self.status.value}


class TreeMetaError(ValueError):
    """A trajectory's tree metadata is missing or malformed; the message names the row."""


def parse_tree_meta(extra_fields: Any, where: str) -> TreeMeta:
    """Read and validate ``extra_fields[TRACE_FIELD]`` of one trajectory (``where`` names it)."""
    extra_fields = getattr(extra_fields, "data", extra_fields)  # tensordict NonTensorData
    if not isinstance(extra_fields, dict) or TRACE_FIELD not in extra_fields:
        raise TreeMetaError(
            f"{where}: extra_fields has no {TRACE_FIELD!r} entry; tree estimators need leaves written by "
            "the TRACE rollout (actor_rollout_ref.rollout.agent.agent_loop_manager_class="
            "verl_trace.rollout.worker.TraceAgentLoopManager)"
        )
    try:
        return TreeMeta.model_validate(extra_fields[TRACE_FIELD])
    except ValidationError as e:
        errs = "; ".join(f"{'.'.join(str(x) for x in err['loc']) or 'value'}: {err['msg']}" for err in e.errors())
        raise TreeMetaError(f"{where}: extra_fields[{TRACE_FIELD!r}] is malformed: {errs}") from None
