"""Layer 5: verl's ``ToolAgentLoop`` with resumable snapshots at turn boundaries.

``TraceToolAgentLoop`` (registered as ``trace_agent``) runs verl's own ReAct state machine
unchanged (generate, parse tool calls, run tools, merge observations) and overrides only the
state handlers around it:

* at every turn boundary (boundary 0: prompt tokenized; boundary k: the k-th tool observation
  merged, generation k+1 next) it stores an :class:`AgentSnapshot`, a private copy of
  ``AgentData``;
* :meth:`TraceToolAgentLoop.resume` continues from a snapshot: the pending-state handler restores
  the copy and jumps straight to generation, so verl's unmodified ``run()`` finishes the
  trajectory and the continuation reproduces the prefix token for token (ids, mask, logprobs);
* it records the turn structure (:class:`TurnRecord`) the rollout tree is built from, and counts
  tool errors, timeouts and malformed tool calls per turn;
* it plays multi-turn conversations: when the dataset row lists later user messages
  (``extra_info["user_turns"]``, see :data:`USER_TURNS_KEY`) and the model ends its turn without a
  tool call, the next user message is merged like a tool observation (mask 0) and generation goes
  on, so each user turn after the first is the observation of the turn that precedes it.

What a snapshot holds, and why tools are not in it: verl gives each loop the worker's shared tool
objects and calls ``tool.create()``/``release()`` around every single call, so a tool instance
never outlives one call and holds no trajectory state. Snapshots therefore leave the tool objects
out (the resuming loop brings its own references to the same tools). Per-trajectory tool state
must live on ``agent_data`` (tools receive it): small records for the reward in
``agent_data.extra_fields``, environment objects in :func:`.tool_state.tool_state`. Both are
deep-copied into every snapshot and again for every branch, so each branch continues with its own
copy. ``metrics`` (timings) are also left out, so a branch reports only its own time.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from verl.experimental.agent_loop.agent_loop import AgentLoopOutput, register
from verl.experimental.agent_loop.tool_agent_loop import AgentData, AgentState, ToolAgentLoop
from verl.experimental.agent_loop.tool_parser import FunctionCall
from verl.tools.schemas import ToolResponse
from verl.workers.rollout.replica import TokenOutput

from ..tree import LeafStatus
from .engine import ENTROPY_KEY, EngineError, vllm_max_tokens

logger = logging.getLogger(__name__)

AGENT_NAME = "trace_agent"
# Dataset row, ``extra_info[USER_TURNS_KEY]``: the user turns after the one in ``raw_prompt``, each
# a list of messages (usually one ``{"role": "user", "content": ...}``).
USER_TURNS_KEY = "user_turns"
# ``extra_fields[PENDING_USER_TURNS]`` (rows with user turns only): user turns never delivered,
# because the trajectory hit a length or turn limit first. A reward should fail such a leaf.
PENDING_USER_TURNS = "pending_user_turns"

# AgentData attributes a snapshot leaves out (see the module docstring).
_NOT_SNAPSHOTTED = frozenset({"_active_tools", "_active_tool_schemas", "metrics"})
# Flat lists of numbers: a shallow list() copy is a full copy and much cheaper than deepcopy.
_FLAT = frozenset({"prompt_ids", "response_ids", "response_mask", "response_logprobs", "turn_scores", "tool_rewards"})


class TraceLayoutError(RuntimeError):
    """A turn's response mask is not ``1...1 0...0`` (generated tokens, then observation tokens),
    which the rollout tree assumes. No verl 0.9.1 continuous-token builder produces this."""


@dataclass
class TurnRecord:
    """One ReAct turn in response coordinates: generated tokens ``[start, action_end)``, then the
    observation (tool messages and the next generation prompt, mask 0) ``[action_end, end)``."""

    index: int
    start: int
    action_end: int = -1  # -1 while the turn is open
    end: int = -1
    tool_calls: int = 0  # tool calls parsed from this turn's text
    error_kinds: list[str] = field(default_factory=list)  # unknown_tool, bad_arguments, tool_exception, ...
    text: str = ""  # decoded generated text (special tokens skipped)
    obs_text: str = ""  # the tool messages' content
    mean_logprob: float | None = None
    entropy: float | None = None  # engine-reported mean entropy, if the client sends it
    stopped: bool = True  # generation ended by itself (stop token, or short of the max_tokens cap)

    @property
    def tool_errors(self) -> int:
        return len(self.error_kinds)

    @property
    def closed(self) -> bool:
        return self.end >= 0


@dataclass(frozen=True)
class AgentSnapshot:
    """A resumable copy of ``AgentData`` at turn boundary ``boundary`` (= turns completed)."""

    boundary: int
    state: dict[str, Any]

    @classmethod
    def capture(cls, agent_data: AgentData, boundary: int) -> AgentSnapshot:
        return cls(boundary, _clone({k: v for k, v in vars(agent_data).items() if k not in _NOT_SNAPSHOTTED}))

    def restore_into(self, agent_data: AgentData) -> None:
        """Overwrite ``agent_data``'s trajectory state with a fresh copy of this snapshot (the
        snapshot stays untouched, so any number of branches can start from it)."""
        vars(agent_data).update(_clone(self.state))

    @property
    def request_id(self) -> str:
        return self.state["request_id"]

    @property
    def prompt_ids(self) -> list[int]:
        """The running sequence: prompt followed by the response so far."""
        return self.state["prompt_ids"]

    @property
    def response_mask(self) -> list[int]:
        return self.state["response_mask"]

    @property
    def response_logprobs(self) -> list[float]:
        return self.state["response_logprobs"]

    @property
    def turns(self) -> list[TurnRecord]:
        return self.state["trace_turns"]

    @property
    def response_len(self) -> int:
        return len(self.response_mask)


def _clone(state: dict[str, Any]) -> dict[str, Any]:
    return {k: (list(v) if k in _FLAT else copy.deepcopy(v)) for k, v in state.items()}


class _RecordingClient:
    """Wraps the LLM client for one loop: takes the engine's entropy out of ``extra_fields`` (verl
    copies the first call's extra fields into the trajectory's) and turns engine failures into
    :class:`EngineError`."""

    def __init__(self, client: Any):
        self.client = client
        self.entropy: float | None = None

    async def generate(self, request_id: str, **kwargs: Any) -> TokenOutput:
        try:
            out = await self.client.generate(request_id, **kwargs)
        except Exception as e:
            raise EngineError(f"generate failed for request {request_id}: {type(e).__name__}: {e}") from e
        if out.stop_reason == "aborted":
            raise EngineError(f"the engine aborted request {request_id}")
        extra = dict(out.extra_fields)
        entropy = extra.pop(ENTROPY_KEY, None)
        self.entropy = None if entropy is None else float(entropy)
        return out.model_copy(update={"extra_fields": extra})

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


@dataclass
class LoopResult:
    """What one run of the loop produced, read by the tree runner. Filled in as the run goes, so
    after a failure it still holds the turns and snapshots reached before it."""

    start_boundary: int = 0  # 0 for a fresh run, the snapshot's boundary for a resumed one
    snapshots: list[AgentSnapshot] = field(default_factory=list)  # captured by this run, boundary order
    status: LeafStatus | None = None  # OK or TRUNCATED once the run finished
    agent_data: AgentData | None = None

    @property
    def turns(self) -> list[TurnRecord]:
        """Closed turns, the replayed prefix included (a resumed run inherits them)."""
        return [] if self.agent_data is None else list(getattr(self.agent_data, "trace_turns", []))

    @property
    def prompt_len(self) -> int:
        ad = self.agent_data
        return len(ad.prompt_ids) - len(ad.response_mask)

    @property
    def prompt_ids(self) -> list[int]:
        return self.agent_data.prompt_ids[: self.prompt_len]

    @property
    def response_ids(self) -> list[int]:
        """The whole response (not cut to ``response_length``)."""
        return self.agent_data.prompt_ids[self.prompt_len :]

    @property
    def response_mask(self) -> list[int]:
        return self.agent_data.response_mask

    @property
    def response_logprobs(self) -> list[float] | None:
        return self.agent_data.response_logprobs or None


@register(AGENT_NAME)
class TraceToolAgentLoop(ToolAgentLoop):
    """verl's ToolAgentLoop plus turn-boundary snapshots, resume, and turn records.

    Extra constructor arguments (settable from an ``agent_loop_config_path`` YAML entry):
    ``tool_timeout`` (seconds; a tool call that takes longer becomes an error observation) and
    ``request_id`` (the engine request id of this run; see :meth:`resume`).
    """

    def __init__(self, *args: Any, tool_timeout: float | None = None, request_id: str | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if tool_timeout is not None and tool_timeout <= 0:
            raise ValueError(f"tool_timeout must be > 0 seconds, got {tool_timeout}")
        self.tool_timeout = tool_timeout
        self.request_id = request_id
        self.server_manager = _RecordingClient(self.server_manager)
        self.result = LoopResult()
        self._resume_from: AgentSnapshot | None = None
        self._user_turns: list[list[dict[str, Any]]] | None = None
        self._running = False

    # ------------------------------------------------------------------ entry points
    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> AgentLoopOutput:
        """verl's run(), plus the turn records and snapshots in ``self.result``."""
        if self._running:
            raise RuntimeError("a TraceToolAgentLoop runs one trajectory at a time; build one loop per run")
        self._running = True
        self.result = LoopResult(start_boundary=0 if self._resume_from is None else self._resume_from.boundary)
        self._user_turns = user_turns(kwargs.get("extra_info"))
        try:
            output = await super().run(sampling_params, **kwargs)
            await self._finish()
            return output
        finally:
            self._running = False

    async def resume(self, snapshot: AgentSnapshot, sampling_params: dict[str, Any], **kwargs: Any) -> AgentLoopOutput:
        """Continue a trajectory from ``snapshot``; ``kwargs`` is the same dataset row ``run``
        got. The engine request id is the snapshot's (sticky routing: the same server, so the
        engine can reuse the prefix's KV cache) unless ``self.request_id`` is set; under
        ``rollout.full_determinism`` verl passes the id to vLLM as is, so concurrent branches
        must each set a unique one."""
        self._resume_from = snapshot
        try:
            return await self.run(sampling_params, **kwargs)
        finally:
            self._resume_from = None

    def _make_request_id(self, priority: int, full_determinism: bool) -> str:
        if self.request_id is not None:
            return self.request_id
        return super()._make_request_id(priority, full_determinism)

    # ------------------------------------------------------------------ state handlers
    async def _handle_pending_state(self, agent_data: AgentData, sampling_params: dict[str, Any]) -> AgentState:
        self.result.agent_data = agent_data
        if self._resume_from is not None:
            self._resume_from.restore_into(agent_data)
            if self.request_id is not None:
                agent_data.request_id = self.request_id
            return AgentState.GENERATING
        state = await super()._handle_pending_state(agent_data, sampling_params)
        agent_data.trace_turns = []
        agent_data.trace_open = None
        agent_data.trace_user_turns = self._user_turns  # None: a single-turn conversation
        self.result.snapshots.append(AgentSnapshot.capture(agent_data, 0))
        return state

    async def _handle_generating_state(
        self, agent_data: AgentData, sampling_params: dict[str, Any], ignore_termination: bool = False
    ) -> AgentState:
        start = len(agent_data.response_mask)
        n_messages = len(agent_data.messages)
        cap = vllm_max_tokens(len(agent_data.prompt_ids), sampling_params, self.prompt_length, self.response_length)
        agent_data.tool_calls = []  # verl only reassigns them when it parses; never keep a stale list
        state = await super()._handle_generating_state(agent_data, sampling_params, ignore_termination)
        ids = agent_data.response_ids  # this generation's tokens
        turn = TurnRecord(index=len(agent_data.trace_turns), start=start, entropy=self.server_manager.entropy)
        turn.stopped = bool(ids) and (ids[-1] in self._stop_ids(sampling_params) or len(ids) < cap)
        if len(agent_data.messages) > n_messages:
            calls = agent_data.tool_calls
        else:  # verl stopped on a length/turn limit before parsing: did the turn want a tool?
            _, calls = await self.tool_parser.extract_tool_calls(ids, self._tool_schemas(agent_data))
        turn.tool_calls = len(calls)
        malformed = self._malformed_calls(ids, calls)
        turn.error_kinds += ["malformed_tool_call"] * malformed
        agent_data.trace_open = turn
        pending = getattr(agent_data, "trace_user_turns", None)
        if pending is not None:
            ended_turn = state == AgentState.TERMINATED and len(agent_data.messages) > n_messages and not calls
            if ended_turn and pending:
                state = await self._deliver_user_turn(agent_data)
            # verl fills extra_fields from the first generation only while it is empty: set after it
            agent_data.extra_fields[PENDING_USER_TURNS] = len(agent_data.trace_user_turns)
        return state

    async def _deliver_user_turn(self, agent_data: AgentData) -> AgentState:
        """Merge the next user turn as the observation of the turn the model just ended (mask 0),
        like verl merges tool messages; end the trajectory instead if it would not fit."""
        previous = list(agent_data.messages)
        messages = previous + agent_data.trace_user_turns[0]
        merged, mask, logprobs = await self.ct_merge_context_msg(
            previous,
            messages,
            agent_data.prompt_ids,
            agent_data.response_mask,
            agent_data.response_logprobs or None,
            tools=getattr(agent_data, "_active_tool_schemas", self.tool_schemas),
        )
        if len(mask) >= self.response_length:
            return AgentState.TERMINATED
        turn = agent_data.trace_user_turns.pop(0)
        agent_data.messages = messages
        agent_data.prompt_ids = merged.token_ids
        agent_data.response_mask = mask
        if agent_data.response_logprobs:
            agent_data.response_logprobs = logprobs or []
        agent_data.user_turns += 1
        agent_data.trace_open.obs_text = "\n".join(m["content"] for m in turn)
        self._close_turn(agent_data)
        self.result.snapshots.append(AgentSnapshot.capture(agent_data, len(agent_data.trace_turns)))
        return AgentState.GENERATING

    async def _handle_processing_tools_state(self, agent_data: AgentData) -> AgentState:
        n_messages = len(agent_data.messages)
        state = await super()._handle_processing_tools_state(agent_data)
        if state == AgentState.GENERATING:
            added = agent_data.messages[n_messages:]
            agent_data.trace_open.obs_text = "\n".join(
                m["content"] for m in added if m.get("role") == "tool" and isinstance(m.get("content"), str)
            )
            self._close_turn(agent_data)
            self.result.snapshots.append(AgentSnapshot.capture(agent_data, len(agent_data.trace_turns)))
        return state

    async def _call_tool(
        self, tool_call: FunctionCall, tools_kwargs: dict[str, Any], agent_data: AgentData
    ) -> tuple[ToolResponse, float, dict]:
        """verl's tool call, bounded by ``tool_timeout``; the kind of any error is recorded on the
        turn. verl already turns unknown tools, bad JSON and tool exceptions into observations."""
        kind = _precheck(tool_call, getattr(agent_data, "_active_tools", self.tools))
        call = super()._call_tool(tool_call, tools_kwargs, agent_data)
        try:
            result = await (asyncio.wait_for(call, self.tool_timeout) if self.tool_timeout else call)
        except asyncio.TimeoutError:
            kind = "tool_timeout"
            result = ToolResponse(text=f"Error: tool '{tool_call.name}' timed out after {self.tool_timeout:g}s"), 0.0, {}
        if kind is None and (result[0].text or "").startswith(f"Error executing tool '{tool_call.name}':"):
            kind = "tool_exception"  # the message verl's _call_tool returns when execute() raised
        if kind is not None:
            agent_data.trace_open.error_kinds.append(kind)
        return result

    # ------------------------------------------------------------------ turn bookkeeping
    async def _finish(self) -> None:
        ad = self.result.agent_data
        if ad.trace_open is not None:
            self._close_turn(ad)
        last = ad.trace_turns[-1]
        truncated = (
            len(ad.response_mask) >= self.response_length
            or not last.stopped
            or last.tool_calls > 0
            or bool(getattr(ad, "trace_user_turns", None))  # the conversation was cut before its last user turn
        )
        self.result.status = LeafStatus.TRUNCATED if truncated else LeafStatus.OK

    def _close_turn(self, agent_data: AgentData) -> None:
        turn: TurnRecord = agent_data.trace_open
        end = len(agent_data.response_mask)
        mask = agent_data.response_mask[turn.start : end]
        n_action = next((i for i, m in enumerate(mask) if m == 0), len(mask))
        if any(mask[n_action:]):
            raise TraceLayoutError(f"turn {turn.index}: response mask {mask} is not generated tokens then observation")
        turn.action_end, turn.end = turn.start + n_action, end
        response = agent_data.prompt_ids[len(agent_data.prompt_ids) - end :]
        turn.text = self.tokenizer.decode(response[turn.start : turn.action_end], skip_special_tokens=True)
        lps = agent_data.response_logprobs[turn.start : turn.action_end] if agent_data.response_logprobs else []
        turn.mean_logprob = float(sum(lps) / len(lps)) if lps else None
        agent_data.trace_turns.append(turn)
        agent_data.trace_open = None

    def _stop_ids(self, sampling_params: dict[str, Any]) -> set[int]:
        ids = set(sampling_params.get("stop_token_ids") or []) | set(self.tool_parser.stop_token_ids)
        eos = self.tokenizer.eos_token_id
        ids.update(eos if isinstance(eos, list) else [] if eos is None else [eos])
        return ids

    def _tool_schemas(self, agent_data: AgentData) -> list:
        return [t.tool_schema for t in getattr(agent_data, "_active_tools", self.tools).values()]

    def _malformed_calls(self, ids: list[int], calls: list[FunctionCall]) -> int:
        """Tool-call openings the parser could not turn into a call (hermes-style parsers expose
        their start tag; others report 0)."""
        tag = getattr(self.tool_parser, "tool_call_start_token", None)
        if not tag:
            return 0
        return max(0, self.tokenizer.decode(ids, skip_special_tokens=False).count(tag) - len(calls))


def user_turns(extra_info: Any) -> list[list[dict[str, Any]]] | None:
    """The row's later user turns (``extra_info["user_turns"]``), checked; None when absent."""
    turns = (extra_info or {}).get(USER_TURNS_KEY) if isinstance(extra_info, dict) else None
    if turns is None:
        return None
    where = f"extra_info[{USER_TURNS_KEY!r}]"
    if isinstance(turns, str | bytes) or not hasattr(turns, "__iter__"):
        raise ValueError(f"{where} must be a list of turns (lists of messages), got {type(turns).__name__}")
    out = []
    for i, turn in enumerate(turns):
        if isinstance(turn, dict | str) or not hasattr(turn, "__iter__"):
            raise ValueError(f"{where}[{i}] must be a list of messages, got {type(turn).__name__}")
        messages = [dict(m) for m in turn]
        if not messages or any(m.get("role") != "user" or not isinstance(m.get("content"), str) for m in messages):
            raise ValueError(f"{where}[{i}] must hold one or more {{'role': 'user', 'content': str}} messages, got {messages}")
        out.append([{"role": "user", "content": m["content"]} for m in messages])
    return out


def _precheck(tool_call: FunctionCall, tools: dict[str, Any]) -> str | None:
    """Call errors decided by the call alone: an unknown tool, or arguments that are not a JSON
    object (verl answers invalid JSON itself and hands other non-objects to the tool)."""
    if tool_call.name not in tools:
        return "unknown_tool"
    try:
        args = json.loads(tool_call.arguments)
    except (json.JSONDecodeError, TypeError):
        return "bad_arguments"
    return None if isinstance(args, dict) else "bad_arguments"  # verl passes it on; the tool fails
