"""Layer 5: one training step of budgeted tree rollouts over verl agent loops.

``TreeRolloutRunner.run_step(planner, prompts, sampling_params)`` executes a step's
:class:`~verl_trace.allocation.TreePlanner` with asyncio. ``planner.start`` turns the candidate
prompts into launches; each launch of ``count`` leaves at ``anchor`` becomes ``count`` agent-loop
runs (fresh chains at the root, :meth:`TraceToolAgentLoop.resume` from the anchor's snapshot
otherwise) under a concurrency limit. Every finished run is grafted onto its tree: the turns after
the anchor become new nodes (after checking that the replayed prefix equals the tree's), the last
one a leaf with its reward. Runs that finish together are reported to ``planner.leaves_done`` in
one call, and the new launches start at once: no tree waits for another tree's stragglers
(the planner decides per tree, or per round with ``trace.schedule=rounds``).

Snapshots live here, keyed by (tree uid, node id), and are dropped when the step ends; the tree
itself stays engine-free. Faults never escape a run: an engine error, a loop crash, a run timeout
or a failing reward function becomes a FAILED leaf (tool errors and timeouts, which verl's loop
turns into observations, stay ordinary leaves), so every launch produces its leaf and the budget
is spent exactly. Each leaf comes back as a verl-ready ``AgentLoopOutput`` whose
``extra_fields[protocol.TRACE_FIELD]`` is its ``protocol.TreeMeta``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from omegaconf import DictConfig
from tqdm.auto import tqdm
from verl.experimental.agent_loop.agent_loop import (
    AgentLoopMetrics,
    AgentLoopOutput,
    DictConfigWrap,
    ToolListWrap,
)

from ..allocation import Budget, Issued, TreePlanner, build_allocator, new_planner
from ..config import TraceConfig
from ..metrics import forest_metrics
from ..predictor import AnchorFeaturizer, Predictor
from ..protocol import TRACE_FIELD, TreeMeta
from ..tree import ROOT, LeafStatus, RolloutTree
from .agent_loop import AgentSnapshot, LoopResult, TraceToolAgentLoop, TurnRecord
from .engine import EngineError
from .reward import RewardFn, split_score

logger = logging.getLogger(__name__)

NodeHook = Callable[[RolloutTree, int], None]


@dataclass
class TreePrompt:
    """One candidate prompt: ``row`` is the dataset row the agent loop gets as keyword arguments
    (``raw_prompt`` required; ``tools_kwargs``, ``extra_info``, ``reward_model``... as verl passes
    them). ``key`` names the prompt across steps for the predictor (default: ``uid``)."""

    uid: str
    row: dict[str, Any]
    key: str | None = None

    def __post_init__(self) -> None:
        if "raw_prompt" not in self.row:
            raise ValueError(f"prompt {self.uid}: row needs a 'raw_prompt' (list of chat messages)")

    def root_tree(self) -> RolloutTree:
        """A tree holding only this prompt as its root (the text is the messages' contents: what
        featurizers read; tokens come with the first turn)."""
        msgs = self.row["raw_prompt"]
        text = "\n".join(m["content"] for m in msgs if isinstance(m.get("content"), str))
        tree = RolloutTree(self.uid, (), text, key=self.key)
        users = [m["content"] for m in msgs if m.get("role") == "user" and isinstance(m.get("content"), str)]
        if users:  # what the predictor's featurizer matches observations against (predictor/featurize.py)
            tree.meta["question"] = users[-1]
        return tree


@dataclass
class LeafOutput:
    """A finished leaf as verl sees it. ``output.extra_fields[TRACE_FIELD]`` carries the tree metadata."""

    uid: str
    leaf_id: int
    status: LeafStatus
    output: AgentLoopOutput
    error: str | None = None  # failure kind for FAILED leaves


@dataclass
class StepResult:
    leaves: list[LeafOutput]  # grouped by tree (pool order), leaves in creation order
    trees: dict[str, RolloutTree]  # the trees that got leaves (selected roots)
    metrics: dict[str, float]
    planner: TreePlanner

    def training_batch(self):
        """(AnchorBatch, outcomes) for ``predictor.update``: ``planner.training_batch()``."""
        return self.planner.training_batch()


def build_planner(
    cfg: TraceConfig,
    *,
    n_roots: int,
    budget: Budget,
    max_turns: int,
    predictor: Predictor | None = None,
    featurizer: AnchorFeaturizer | None = None,
    rng: np.random.Generator | None = None,
) -> TreePlanner:
    """A step's planner with ``cfg.allocator``. Pass a featurizer built once per job
    (``verl_trace.predictor.build_featurizer``): the runner features every new node with it."""
    featurize = None if featurizer is None else featurizer.featurize
    return new_planner(
        cfg, build_allocator(cfg), n_roots=n_roots, budget=budget, max_turns=max_turns,
        predictor=predictor, featurize=featurize, rng=rng,
    )  # fmt: skip


@dataclass
class _Run:
    """One agent-loop run, finished or failed."""

    launch: Issued
    seq: int
    result: LoopResult | None = None
    output: AgentLoopOutput | None = None
    reward: float | None = None
    reward_info: dict[str, Any] = field(default_factory=dict)
    error_kind: str | None = None
    error: str | None = None


@dataclass
class _Step:
    trees: dict[str, RolloutTree]
    prompts: dict[str, TreePrompt]
    snapshots: dict[tuple[str, int], AgentSnapshot] = field(default_factory=dict)
    runs_per_tree: Counter = field(default_factory=Counter)
    leaves: dict[str, list[LeafOutput]] = field(default_factory=dict)
    failures: Counter = field(default_factory=Counter)
    tool_errors: Counter = field(default_factory=Counter)
    planner_wall: float = 0.0
    seq: int = 0


class TreeRolloutRunner:
    """Runs tree rollout steps against one LLM client (see the module docstring).

    ``config`` is verl's trainer config (``actor_rollout_ref.rollout`` and ``data`` are read, as
    verl's agent loops read them). ``server_manager`` is anything with verl's
    ``LLMServerClient.generate`` signature. ``tools`` are shared by every loop, as in verl's
    worker. ``reward_fn`` scores a leaf when the loop sets no ``reward_score``.
    ``max_concurrency`` bounds agent-loop runs in flight; ``tool_timeout`` bounds one tool call
    (an error observation after it), ``run_timeout`` one whole run (a FAILED leaf after it).
    ``on_node(tree, node_id)`` is called for every new node, the roots included (annotations).
    ``plan_in_thread`` moves grafting, featurizing and the planner (allocator and predictor calls)
    off the event loop into a worker thread, so a slow predictor (a Ray actor) or featurizer (a
    sentence encoder) never stalls the agent loops; the step awaits each such call before it goes
    on, so trees and snapshots are never touched from two threads at once.
    """

    def __init__(
        self,
        config: DictConfig,
        server_manager: Any,
        tokenizer: Any,
        *,
        tools: Sequence[Any] = (),
        reward_fn: RewardFn | None = None,
        processor: Any = None,
        dataset_cls: type | None = None,
        hf_model_type: str | None = None,
        max_concurrency: int = 64,
        tool_timeout: float | None = None,
        run_timeout: float | None = None,
        agent_loop_cls: type[TraceToolAgentLoop] = TraceToolAgentLoop,
        on_node: NodeHook | None = None,
        plan_in_thread: bool = False,
    ):
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if run_timeout is not None and run_timeout <= 0:
            raise ValueError(f"run_timeout must be > 0 seconds, got {run_timeout}")
        if dataset_cls is None:
            from verl.utils.dataset.rl_dataset import RLHFDataset

            dataset_cls = RLHFDataset
        self.config = config
        self.rollout_config = config.actor_rollout_ref.rollout
        self.response_length = int(self.rollout_config.response_length)
        self.full_determinism = bool(self.rollout_config.get("full_determinism", False))
        self.server_manager = server_manager
        self.tokenizer = tokenizer
        self.tools = list(tools)
        self.reward_fn = reward_fn
        self.max_concurrency = max_concurrency
        self.run_timeout = run_timeout
        self.on_node = on_node
        self.plan_in_thread = plan_in_thread
        self._loop_kwargs = dict(
            trainer_config=DictConfigWrap(config),
            server_manager=server_manager,
            tokenizer=tokenizer,
            processor=processor,
            dataset_cls=dataset_cls,
            data_config=DictConfigWrap(config.data),
            hf_model_type=hf_model_type,
            tools=ToolListWrap(self.tools),
            tool_timeout=tool_timeout,
        )
        self._agent_loop_cls = agent_loop_cls

    # ------------------------------------------------------------------ the step
    async def run_step(
        self,
        planner: TreePlanner,
        prompts: Sequence[TreePrompt],
        sampling_params: Mapping[str, Any],
        *,
        progress: bool = False,
    ) -> StepResult:
        """Spend ``planner``'s budget over ``prompts`` (the candidate pool) and return every leaf."""
        t_step = time.perf_counter()
        if len({p.uid for p in prompts}) != len(prompts):
            raise ValueError("prompts have duplicate uids")
        step = _Step(trees={p.uid: self._new_tree(p) for p in prompts}, prompts={p.uid: p for p in prompts})
        sem = asyncio.Semaphore(self.max_concurrency)
        tasks: set[asyncio.Task] = set()
        bar = tqdm(total=planner.ctx.ledger.budget.leaves, desc="tree rollout", unit="leaf", disable=not progress)

        def spawn(launches: Sequence[Issued]) -> None:
            for launch in launches:
                for _ in range(launch.count):
                    step.seq += 1
                    tasks.add(asyncio.create_task(self._run_one(step, launch, step.seq, dict(sampling_params), sem)))

        call = asyncio.to_thread if self.plan_in_thread else _call_here
        try:
            spawn(await call(self._start, step, planner))
            while tasks:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                tasks -= done
                runs = sorted((t.result() for t in done), key=lambda r: r.seq)
                spawn(await call(self._absorb, step, planner, runs))
                bar.update(len(runs))
        finally:
            bar.close()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if not planner.done:
            raise RuntimeError(f"planner stopped with work outstanding: {planner.metrics()}")
        selected = {u: step.trees[u] for u in planner.ctx.trees}
        leaves = [leaf for u in step.trees for leaf in step.leaves.get(u, [])]
        metrics = self._metrics(step, planner, selected, time.perf_counter() - t_step)
        step.snapshots.clear()
        return StepResult(leaves=leaves, trees=selected, metrics=metrics, planner=planner)

    def _start(self, step: _Step, planner: TreePlanner) -> list[Issued]:
        t0 = time.perf_counter()
        launches = planner.start(list(step.trees.values()))
        step.planner_wall += time.perf_counter() - t0
        return launches

    def _absorb(self, step: _Step, planner: TreePlanner, runs: Sequence[_Run]) -> list[Issued]:
        """Graft finished runs onto their trees, report them to the planner in one call, and
        return its new launches."""
        completed = [(run.launch, self._graft(step, planner, run)) for run in runs]
        t0 = time.perf_counter()
        launches = planner.leaves_done(completed)
        step.planner_wall += time.perf_counter() - t0
        return launches

    def _new_tree(self, prompt: TreePrompt) -> RolloutTree:
        tree = prompt.root_tree()
        if self.on_node is not None:
            self.on_node(tree, ROOT)
        return tree

    # ------------------------------------------------------------------ one run
    async def _run_one(self, step: _Step, launch: Issued, seq: int, sp: dict[str, Any], sem: asyncio.Semaphore) -> _Run:
        run = _Run(launch, seq)
        row = step.prompts[launch.uid].row
        snapshot = None if launch.anchor == ROOT else step.snapshots.get((launch.uid, launch.anchor))
        if launch.anchor != ROOT and snapshot is None:
            return _fail(run, "missing_snapshot", f"node {launch.anchor} of {launch.uid} has no snapshot")
        request_id = self._request_id(step, launch)
        if self.full_determinism:
            # verl's vLLM server seeds every request alike under full_determinism; branches of one
            # prefix would then sample the same continuation. Give each run its own stable seed.
            sp["seed"] = _stable_int(f"{sp.get('seed', 0)}/{request_id}")
        async with sem:
            loop = self._agent_loop_cls(request_id=request_id, **self._loop_kwargs)  # in the event loop, as verl requires
            coro = loop.run(sp, **row) if snapshot is None else loop.resume(snapshot, sp, **row)
            try:
                run.output = await (asyncio.wait_for(coro, self.run_timeout) if self.run_timeout else coro)
            except EngineError as e:
                return _fail(run, "engine_error", str(e))
            except asyncio.TimeoutError:
                return _fail(run, "run_timeout", f"agent loop run exceeded {self.run_timeout:g}s")
            except Exception as e:
                logger.exception("agent loop failed for %s (anchor %d)", launch.uid, launch.anchor)
                return _fail(run, "loop_error", f"{type(e).__name__}: {e}")
            finally:
                run.result = loop.result  # also after a failure: the turns it completed
        if run.output.reward_score is not None:
            run.reward = float(run.output.reward_score)
            return run
        if self.reward_fn is None:
            raise RuntimeError("the agent loop set no reward_score and TreeRolloutRunner has no reward_fn")
        try:
            run.reward, run.reward_info = split_score(await self.reward_fn(run.output, row))
        except Exception as e:
            logger.exception("reward function failed for %s", launch.uid)
            return _fail(run, "reward_error", f"{type(e).__name__}: {e}")
        if not np.isfinite(run.reward):
            return _fail(run, "reward_error", f"reward is not finite: {run.reward}")
        return run

    def _request_id(self, step: _Step, launch: Issued) -> str:
        """One id per tree (sticky session: every run of a tree on one server, whose prefix cache
        serves the shared prompt and turn prefixes); a unique, reproducible id per run under
        ``full_determinism``, where verl hands the id to vLLM as its request id."""
        base = f"trace-{launch.uid}"
        if not self.full_determinism:
            return base
        step.runs_per_tree[launch.uid] += 1
        return f"{base}-{launch.anchor}-{step.runs_per_tree[launch.uid]}"

    # ------------------------------------------------------------------ grafting a run onto its tree
    def _graft(self, step: _Step, planner: TreePlanner, run: _Run) -> int:
        """Add the run's new turns below its anchor and finish the leaf; return the leaf id. A run
        that broke off keeps the turns that reached a boundary (each has its snapshot, so it is a
        valid anchor) and ends in an empty FAILED leaf; a finished run whose reward failed becomes
        a FAILED leaf as it is."""
        tree = step.trees[run.launch.uid]
        anchor = run.launch.anchor
        depth = tree[anchor].depth
        res = run.result
        started = res is not None and res.agent_data is not None
        problem = _replay_problem(tree, anchor, res) if started else None
        if problem is not None:
            logger.error("tree %s: %s", tree.uid, problem)
            _fail(run, "prefix_mismatch", problem)
        elif run.error_kind is None and len(res.turns) <= depth:
            _fail(run, "loop_error", f"run from node {anchor} finished without a new turn")
        if started and problem is None and not tree.prompt_ids:
            tree.prompt_ids = list(res.prompt_ids)
        turns = res.turns[depth:] if started and problem is None else []
        snaps = {} if res is None else {s.boundary: s for s in res.snapshots}
        finished = started and res.status is not None  # the loop ran to the end (a reward may have failed)
        if not finished:
            turns = [t for t in turns if t.index + 1 in snaps]  # broke off: keep turns that reached a boundary
        new_ids, parent = [], anchor
        for turn in turns:
            parent = self._add_turn(tree, parent, turn, res)
            new_ids.append(parent)
            step.tool_errors.update(turn.error_kinds)
            if turn.index + 1 in snaps:  # a boundary after this turn: the node is an anchor
                step.snapshots[(tree.uid, parent)] = snaps[turn.index + 1]
        if run.error_kind is None:
            leaf = parent
            tree.finish(leaf, run.reward, res.status)
        else:
            step.failures[run.error_kind] += 1
            if not (finished and turns):  # nothing ends the trajectory: an empty turn does
                leaf = tree.add_turn(parent, [], [], action_logprobs=[])
                new_ids.append(leaf)
            else:  # a whole trajectory without a usable reward
                leaf = parent
            tree[leaf].meta.update(error=run.error_kind, message=run.error)
            tree.finish(leaf, None, LeafStatus.FAILED)
        if planner.ctx.featurize is not None:
            planner.ctx.featurize(tree, new_ids)
        if self.on_node is not None:
            for nid in new_ids:
                self.on_node(tree, nid)
        step.leaves.setdefault(tree.uid, []).append(self._leaf_output(tree, leaf, run))
        return leaf

    def _add_turn(self, tree: RolloutTree, parent: int, turn: TurnRecord, res: LoopResult) -> int:
        response, lps = res.response_ids, res.response_logprobs
        return tree.add_turn(
            parent,
            response[turn.start : turn.action_end],
            response[turn.action_end : turn.end],
            action_logprobs=None if lps is None else lps[turn.start : turn.action_end],
            text=turn.text,
            obs_text=turn.obs_text,
            tool_calls=turn.tool_calls,
            tool_errors=turn.tool_errors,
            entropy=turn.entropy,
            meta={"error_kinds": list(turn.error_kinds)} if turn.error_kinds else None,
        )

    def _leaf_output(self, tree: RolloutTree, leaf: int, run: _Run) -> LeafOutput:
        traj = tree.render(leaf, max_response_len=self.response_length)
        status = traj.status
        meta = TreeMeta(tree_uid=tree.uid, path=list(traj.path), spans=traj.turn_spans, status=status)
        if status is not LeafStatus.FAILED:
            out = run.output
            out.reward_score = run.reward
            out.extra_fields.setdefault("reward_extra_info", run.reward_info)
        else:
            # No usable outcome: reward 0 keeps rm_scores present on every row; the trace
            # estimator ignores the row by its status (other estimators would not: drop it there).
            nodes = [tree[i] for i in traj.path[1:]]
            num_turns = 1 + sum(1 for n in nodes if n.action_ids) + sum(1 for n in nodes if n.obs_ids)
            ids, mask, lps = traj.response_ids, traj.response_mask, traj.response_logprobs
            if not ids:  # failed before generating: one masked EOS, since verl cannot take an empty response
                ids, mask, lps = [self._filler_id()], [0], None if lps is None else [0.0]
            out = AgentLoopOutput(
                prompt_ids=list(tree.prompt_ids),
                response_ids=ids,
                response_mask=mask,
                response_logprobs=lps,
                reward_score=0.0,
                num_turns=num_turns,
                metrics=AgentLoopMetrics(),
                extra_fields={"turn_scores": [], "tool_rewards": [], "reward_extra_info": {}},
            )
        out.extra_fields[TRACE_FIELD] = meta.to_field()
        return LeafOutput(tree.uid, leaf, status, out, error=run.error_kind)

    def _filler_id(self) -> int:
        tok = self.tokenizer
        eos = tok.eos_token_id if tok.eos_token_id is not None else tok.pad_token_id
        return int(eos[0] if isinstance(eos, list) else eos or 0)

    # ------------------------------------------------------------------ metrics
    def _metrics(self, step: _Step, planner: TreePlanner, trees: dict[str, RolloutTree], seconds: float) -> dict[str, float]:
        m = forest_metrics(trees.values(), "trace", planner.cfg.advantage, planner.ctx.threshold, prefix="trace/")
        for kind, n in step.failures.items():
            m[f"trace/failed/{kind}"] = float(n)
        for kind, n in step.tool_errors.items():
            m[f"trace/tool_errors/{kind}"] = float(n)
        m["trace/planner_seconds"] = float(planner.plan_seconds)
        m["trace/planner_wall_seconds"] = float(step.planner_wall)
        m["trace/step_seconds"] = float(seconds)
        m.update(planner.metrics())
        return m


async def _call_here(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


def _fail(run: _Run, kind: str, message: str) -> _Run:
    run.error_kind, run.error = kind, message
    return run


def _replay_problem(tree: RolloutTree, anchor: int, res: LoopResult) -> str | None:
    """Why the run's prompt and replayed prefix differ from the tree's path to ``anchor`` (None if
    they agree token for token: ids, mask and logprobs, and the turn boundary)."""
    if tree.prompt_ids and res.prompt_ids and list(res.prompt_ids) != tree.prompt_ids:
        return f"prompt ids differ from the tree's ({len(res.prompt_ids)} vs {len(tree.prompt_ids)} tokens)"
    path = tree.path(anchor)[1:]
    if not path:
        return None
    prefix = tree.render_prefix(anchor)
    ids, mask, lps = prefix.response_ids, prefix.response_mask, prefix.response_logprobs or []
    k = len(ids)
    if res.response_ids[:k] != ids or list(res.response_mask[:k]) != mask:
        return f"replayed prefix of node {anchor} differs from the tree (tokens or mask)"
    got = res.response_logprobs
    if lps and (got is None or list(got[:k]) != lps):
        return f"replayed prefix of node {anchor} differs from the tree (logprobs)"
    turns = res.turns
    if len(turns) < len(path) or turns[len(path) - 1].end != k:
        return f"the run's turn boundaries disagree with the tree's at node {anchor}"
    return None


def _stable_int(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest(), "little")
