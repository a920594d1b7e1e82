"""Layer 5: verl integration on the rollout side.

* :mod:`.agent_loop`: ``TraceToolAgentLoop`` (registered in verl as ``trace_agent``), verl's
  ToolAgentLoop with resumable turn-boundary snapshots and turn records;
* :mod:`.runner`: ``TreeRolloutRunner``, one step of budgeted tree rollouts driven by a
  ``TreePlanner`` over those loops, emitting verl trajectories with tree metadata;
* :mod:`.hf_client`: ``HFLLMClient``, a batched in-process transformers engine with verl's
  ``LLMServerClient.generate`` interface (CPU tests, the CPU demo);
* :mod:`.reward`: reward-function adapters.

The scripted policy and the arithmetic toy task the tests use are in :mod:`verl_trace.testing`.

Importing this package imports verl's agent-loop machinery (layers 1-4 never do).
"""

from .agent_loop import (
    AGENT_NAME,
    AgentSnapshot,
    LoopResult,
    TraceLayoutError,
    TraceToolAgentLoop,
    TurnRecord,
)
from .engine import ENTROPY_KEY, EngineError, vllm_max_tokens
from .hf_client import HFLLMClient
from .reward import RewardFn, compute_score_reward
from .runner import LeafOutput, StepResult, TreePrompt, TreeRolloutRunner, build_planner

__all__ = [
    "AGENT_NAME",
    "ENTROPY_KEY",
    "AgentSnapshot",
    "EngineError",
    "HFLLMClient",
    "LeafOutput",
    "LoopResult",
    "RewardFn",
    "StepResult",
    "TraceLayoutError",
    "TraceToolAgentLoop",
    "TreePrompt",
    "TreeRolloutRunner",
    "TurnRecord",
    "build_planner",
    "compute_score_reward",
    "vllm_max_tokens",
]
