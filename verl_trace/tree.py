"""Layer 1: the per-prompt rollout tree.

The root is the prompt. Every other node is one ReAct turn: the tokens the policy generated
(thought + action, trained on) followed by the tokens the environment appended (tool observation
and the next generation prompt, masked out). A node whose turn ended the episode is a leaf and
carries the terminal reward. Any non-terminal node is an *anchor*: a turn-level prefix from which
more continuations can be sampled.

Pure Python (numpy only for optional feature vectors) so allocators, predictors and advantage
estimators can be tested without verl.
"""

from __future__ import annotations

import enum
import json
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = 0


class LeafStatus(str, enum.Enum):
    """How a trajectory ended. Only ``ok`` and ``truncated`` leaves carry a usable reward."""

    OK = "ok"  # the agent stopped by itself (answered, or no tool call)
    TRUNCATED = "truncated"  # hit the response-length or turn limit
    FAILED = "failed"  # engine/tool infrastructure error: no usable outcome


@dataclass(frozen=True, slots=True)
class TurnStats:
    """Per-turn policy statistics, when the engine returns logprobs. ``Node.stats`` is a read-only
    view of the node's ``mean_logprob`` and ``entropy`` fields (hot paths read the fields)."""

    mean_logprob: float | None = None
    entropy: float | None = None  # engine entropy if available, else None

    @classmethod
    def from_logprobs(cls, logprobs: Sequence[float] | None, entropy: float | None = None) -> TurnStats:
        if not logprobs:
            return cls(None, entropy)
        return cls(float(sum(logprobs) / len(logprobs)), entropy)

    @property
    def uncertainty(self) -> float | None:
        """Entropy if the engine reported it, else the sampled-token surprisal (-mean logprob)."""
        if self.entropy is not None:
            return self.entropy
        return None if self.mean_logprob is None else -self.mean_logprob


@dataclass(slots=True)
class Node:
    """One turn (or the root). Token sequences are the turn's own tokens, not the whole prefix.
    Slotted: a step holds tens of thousands of nodes, read field by field on the planner's hot path;
    slots make them smaller and their fields faster to read than a per-node ``__dict__``.
    Few container objects per node, because Python's cyclic garbage collector walks every live one
    on each full collection (one or more per step at 512 x 16): token sequences and children are
    tuples (the collector untracks a tuple of numbers after one collection, where a list would
    have it visit every token of every live tree), and the turn statistics are plain fields."""

    node_id: int
    parent: int | None
    depth: int
    action_ids: tuple[int, ...] = ()
    action_logprobs: tuple[float, ...] | None = None
    obs_ids: tuple[int, ...] = ()
    text: str = ""  # decoded action text (featurizers read it)
    obs_text: str = ""
    tool_calls: int = 0
    tool_errors: int = 0
    mean_logprob: float | None = None  # ``stats`` gives both as a TurnStats
    entropy: float | None = None
    children: tuple[int, ...] = ()
    # Leaf fields: set by RolloutTree.finish().
    terminal: bool = False
    reward: float | None = None
    status: LeafStatus | None = None
    # Free-form annotations: predictor estimates, simulator ground truth ("true_p"), round index.
    meta: dict[str, Any] = field(default_factory=dict)
    features: np.ndarray | None = field(default=None, repr=False)

    @property
    def stats(self) -> TurnStats:
        return TurnStats(self.mean_logprob, self.entropy)

    @property
    def is_leaf(self) -> bool:
        return self.terminal

    @property
    def generated_tokens(self) -> int:
        return len(self.action_ids)


@dataclass
class Trajectory:
    """A leaf rendered the way verl's agent loop returns a trajectory."""

    prompt_ids: list[int]
    response_ids: list[int]
    response_mask: list[int]
    response_logprobs: list[float] | None
    turn_spans: list[tuple[int, int]]  # [start, end) of each turn (action + obs) in response_ids
    path: list[int]  # node ids root -> leaf (root included)
    reward: float | None
    status: LeafStatus | None


class RolloutTree:
    """The rollout tree of one prompt.

    Nodes are appended (never removed), so node ids are stable and a serialized tree can be
    replayed. The tree does not own any engine state: snapshots needed to resume generation at an
    anchor live in the rollout layer, keyed by node id.
    """

    def __init__(self, uid: str, prompt_ids: Sequence[int] = (), prompt_text: str = "", key: str | None = None):
        self.uid = uid
        self.key = key if key is not None else uid
        self.prompt_ids = list(prompt_ids)
        self.prompt_text = prompt_text
        self.nodes: list[Node] = [Node(node_id=ROOT, parent=None, depth=0)]
        self.meta: dict[str, Any] = {}
        # Column views kept in step with ``nodes`` so planners can vectorize over thousands of
        # nodes without touching Python objects: parent (-1 for the root), depth, generated
        # tokens, leaf state (0 = not a leaf, 1 = usable leaf, 2 = failed leaf), reward (nan).
        self._cols: dict[str, list] = {"parent": [-1], "depth": [0], "gen": [0], "leaf": [0], "reward": [math.nan]}

    # ---------------------------------------------------------------- building
    @property
    def root(self) -> Node:
        return self.nodes[ROOT]

    def add_turn(
        self,
        parent: int,
        action_ids: Sequence[int],
        obs_ids: Sequence[int] = (),
        *,
        action_logprobs: Sequence[float] | None = None,
        text: str = "",
        obs_text: str = "",
        tool_calls: int = 0,
        tool_errors: int = 0,
        entropy: float | None = None,
        meta: dict[str, Any] | None = None,
        features: np.ndarray | None = None,
    ) -> int:
        """Append a turn under ``parent`` and return its node id."""
        p = self._get(parent)
        if p.terminal:
            raise ValueError(f"node {parent} of tree {self.uid} is a leaf; a leaf cannot be extended")
        if action_logprobs is not None and len(action_logprobs) != len(action_ids):
            raise ValueError(
                f"action_logprobs has {len(action_logprobs)} entries for {len(action_ids)} action tokens"
            )
        stats = TurnStats.from_logprobs(action_logprobs, entropy)
        node = Node(
            node_id=len(self.nodes),
            parent=parent,
            depth=p.depth + 1,
            action_ids=tuple(action_ids),
            action_logprobs=None if action_logprobs is None else tuple(float(x) for x in action_logprobs),
            obs_ids=tuple(obs_ids),
            text=text,
            obs_text=obs_text,
            tool_calls=tool_calls,
            tool_errors=tool_errors,
            mean_logprob=stats.mean_logprob,
            entropy=stats.entropy,
            meta=dict(meta or {}),
            features=features,
        )
        self.nodes.append(node)
        p.children += (node.node_id,)
        c = self._cols
        c["parent"].append(parent)
        c["depth"].append(node.depth)
        c["gen"].append(len(node.action_ids))
        c["leaf"].append(0)
        c["reward"].append(math.nan)
        return node.node_id

    def finish(self, node_id: int, reward: float | None, status: LeafStatus | str = LeafStatus.OK) -> None:
        """Mark ``node_id`` as the last turn of a finished trajectory."""
        node = self._get(node_id)
        if node_id == ROOT:
            raise ValueError("the root cannot be a leaf; add at least one turn")
        if node.children:
            raise ValueError(f"node {node_id} already has children and cannot end a trajectory")
        if node.terminal:
            raise ValueError(f"node {node_id} is already a leaf")
        status = LeafStatus(status)
        if status is not LeafStatus.FAILED:
            if reward is None or not math.isfinite(float(reward)):
                raise ValueError(f"leaf {node_id} with status {status.value} needs a finite reward, got {reward!r}")
            reward = float(reward)
        node.terminal, node.reward, node.status = True, reward, status
        self._cols["leaf"][node_id] = 2 if status is LeafStatus.FAILED else 1
        self._cols["reward"][node_id] = math.nan if reward is None else reward

    def _get(self, node_id: int) -> Node:
        if not 0 <= node_id < len(self.nodes):
            raise KeyError(f"tree {self.uid} has no node {node_id}")
        return self.nodes[node_id]

    # ---------------------------------------------------------------- queries
    def __len__(self) -> int:
        return len(self.nodes)

    def __getitem__(self, node_id: int) -> Node:
        return self._get(node_id)

    def path(self, node_id: int) -> list[int]:
        """Node ids from the root to ``node_id`` inclusive."""
        out = []
        cur: int | None = node_id
        while cur is not None:
            out.append(cur)
            cur = self.nodes[cur].parent
        return out[::-1]

    def leaves(self) -> list[Node]:
        return [n for n in self.nodes if n.terminal]

    def iter_subtree(self, node_id: int) -> Iterator[Node]:
        stack = [node_id]
        while stack:
            n = self.nodes[stack.pop()]
            yield n
            stack.extend(reversed(n.children))

    def leaves_under(self, node_id: int) -> list[Node]:
        return [n for n in self.iter_subtree(node_id) if n.terminal]

    def anchors(self, max_depth: int | None = None) -> list[Node]:
        """Nodes from which another continuation can be sampled: the root and every non-terminal
        turn (its turn ended in an observation). ``max_depth`` excludes prefixes that already used
        the whole turn allowance."""
        out = []
        for n in self.nodes:
            if n.terminal or (max_depth is not None and n.depth >= max_depth):
                continue
            out.append(n)
        return out

    def prefix_generated_tokens(self, node_id: int) -> int:
        """Generated (trainable) tokens on the path root -> node: what a branch from here reuses."""
        return sum(self.nodes[i].generated_tokens for i in self.path(node_id))

    def prefix_response_len(self, node_id: int) -> int:
        """Response tokens (generated + observation) on the path root -> node."""
        return sum(len(self.nodes[i].action_ids) + len(self.nodes[i].obs_ids) for i in self.path(node_id))

    def generated_tokens(self) -> int:
        """Tokens the engine actually generated for this tree (shared prefixes counted once)."""
        return sum(n.generated_tokens for n in self.nodes)

    def unshared_generated_tokens(self) -> int:
        """What the same leaves would have cost as independent trajectories."""
        return sum(self.prefix_generated_tokens(leaf.node_id) for leaf in self.leaves())

    def outcome_counts(self, node_id: int, threshold: float = 0.5) -> tuple[int, int]:
        """(successes, failures) among usable leaves under ``node_id``."""
        s, f = self.subtree_outcomes(threshold)
        return int(s[node_id]), int(f[node_id])

    def columns(self) -> dict[str, np.ndarray]:
        """Node attributes as arrays indexed by node id (see ``_cols``)."""
        return {
            "parent": np.asarray(self._cols["parent"], np.int64),
            "depth": np.asarray(self._cols["depth"], np.int64),
            "gen": np.asarray(self._cols["gen"], np.int64),
            "leaf": np.asarray(self._cols["leaf"], np.int8),
            "reward": np.asarray(self._cols["reward"], np.float64),
        }

    def subtree_outcomes(self, threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
        """(successes, failures) among usable leaves under every node, computed level by level."""
        c = self.columns()
        usable = c["leaf"] == 1
        s = (usable & (c["reward"] >= threshold)).astype(np.int64)
        f = (usable & ~(c["reward"] >= threshold)).astype(np.int64)
        return subtree_sum(c["parent"], c["depth"], s), subtree_sum(c["parent"], c["depth"], f)

    def branch_points(self) -> list[Node]:
        """Nodes with two or more children (the root included)."""
        return [n for n in self.nodes if len(n.children) >= 2]

    # ---------------------------------------------------------------- rendering
    def render_prefix(self, node_id: int) -> Trajectory:
        """The response up to and including ``node_id``'s turn (reward and status unset)."""
        path = self.path(node_id)
        response: list[int] = []
        mask: list[int] = []
        has_lp = all(self.nodes[i].action_logprobs is not None for i in path[1:])
        logprobs: list[float] | None = [] if has_lp else None
        spans: list[tuple[int, int]] = []
        for i in path[1:]:
            n = self.nodes[i]
            start = len(response)
            response += n.action_ids
            response += n.obs_ids
            mask += [1] * len(n.action_ids) + [0] * len(n.obs_ids)
            if logprobs is not None:
                logprobs += n.action_logprobs
                logprobs += [0.0] * len(n.obs_ids)
            spans.append((start, len(response)))
        return Trajectory(list(self.prompt_ids), response, mask, logprobs, spans, path, None, None)

    def render(self, leaf_id: int, max_response_len: int | None = None) -> Trajectory:
        """Concatenate the turns on the path to ``leaf_id`` into a verl-style trajectory.

        Two leaves that share a prefix render it to identical tokens, mask and logprobs, which is
        what makes a branched continuation indistinguishable from a trajectory sampled in one go.
        """
        leaf = self._get(leaf_id)
        if not leaf.terminal:
            raise ValueError(f"node {leaf_id} of tree {self.uid} is not a leaf")
        tr = self.render_prefix(leaf_id)
        tr.reward, tr.status = leaf.reward, leaf.status
        if max_response_len is not None and len(tr.response_ids) > max_response_len:
            m = max_response_len
            tr.response_ids, tr.response_mask = tr.response_ids[:m], tr.response_mask[:m]
            tr.response_logprobs = None if tr.response_logprobs is None else tr.response_logprobs[:m]
            # Turns cut off entirely keep an empty span, so spans stay aligned with the path.
            tr.turn_spans = [(min(a, m), min(b, m)) for a, b in tr.turn_spans]
        return tr

    # ---------------------------------------------------------------- serialization
    def to_dict(self, with_features: bool = False) -> dict[str, Any]:
        nodes = []
        for n in self.nodes:
            d = {
                "id": n.node_id,
                "parent": n.parent,
                "depth": n.depth,
                "action_ids": list(n.action_ids),
                "action_logprobs": None if n.action_logprobs is None else list(n.action_logprobs),
                "obs_ids": list(n.obs_ids),
                "text": n.text,
                "obs_text": n.obs_text,
                "tool_calls": n.tool_calls,
                "tool_errors": n.tool_errors,
                "mean_logprob": n.mean_logprob,
                "entropy": n.entropy,
                "terminal": n.terminal,
                "reward": n.reward,
                "status": None if n.status is None else n.status.value,
                "meta": _jsonable(n.meta),
            }
            if with_features and n.features is not None:
                d["features"] = [float(x) for x in n.features]
            nodes.append(d)
        return {
            "uid": self.uid,
            "key": self.key,
            "prompt_ids": self.prompt_ids,
            "prompt_text": self.prompt_text,
            "meta": _jsonable(self.meta),
            "nodes": nodes,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RolloutTree:
        tree = cls(data["uid"], data.get("prompt_ids", ()), data.get("prompt_text", ""), key=data.get("key"))
        tree.meta = dict(data.get("meta", {}))
        raw = sorted(data["nodes"], key=lambda d: d["id"])
        if not raw or raw[0]["id"] != ROOT or raw[0]["parent"] is not None:
            raise ValueError("serialized tree must start with the root node (id 0, parent null)")
        tree.root.meta = dict(raw[0].get("meta", {}))
        for d in raw[1:]:
            if d["id"] != len(tree.nodes):
                raise ValueError(f"serialized node ids must be contiguous; expected {len(tree.nodes)}, got {d['id']}")
            feats = d.get("features")
            nid = tree.add_turn(
                d["parent"],
                d["action_ids"],
                d["obs_ids"],
                action_logprobs=d.get("action_logprobs"),
                text=d.get("text", ""),
                obs_text=d.get("obs_text", ""),
                tool_calls=d.get("tool_calls", 0),
                tool_errors=d.get("tool_errors", 0),
                entropy=d.get("entropy"),
                meta=d.get("meta"),
                features=None if feats is None else np.asarray(feats, dtype=np.float32),
            )
            if d.get("terminal"):
                tree.finish(nid, d.get("reward"), d.get("status") or LeafStatus.OK)
        return tree


def save_trees(trees: Iterable[RolloutTree], path: str | Path) -> Path:
    """Write ``trees`` as one JSON list (``to_dict`` each), atomically (a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps([t.to_dict() for t in trees]))
    os.replace(tmp, path)
    return path


def load_trees(path: str | Path) -> list[RolloutTree]:
    """The trees :func:`save_trees` wrote."""
    return [RolloutTree.from_dict(d) for d in json.loads(Path(path).read_text())]


def subtree_sum(parent: np.ndarray, depth: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Sum ``values`` over every node's subtree (node included), one vectorized pass per level."""
    total = np.array(values, dtype=np.result_type(values, np.int64), copy=True)
    for d in range(int(depth.max(initial=0)), 0, -1):
        idx = np.flatnonzero(depth == d)
        np.add.at(total, parent[idx], total[idx])
    return total


def _jsonable(obj: Any) -> Any:
    """Best-effort conversion of numpy scalars/arrays inside meta dicts."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj
