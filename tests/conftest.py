"""Shared fixtures. (verl installs a top-level package named ``tests``, so test modules never
import each other; helpers are exposed as fixtures instead.)"""

from __future__ import annotations

import numpy as np
import pytest

from verl_trace.tree import LeafStatus, RolloutTree


def _sigmoid(z: float) -> float:
    return float(1.0 / (1.0 + np.exp(-z)))


class RandomWorld:
    """A minimal seeded stand-in for an agent environment: every prompt has a latent logit, every
    turn moves it by a random step, and a leaf succeeds with the final turn's probability. Nodes
    carry noisy features and the true probability, like the simulator's."""

    def __init__(self, seed: int = 0, max_turns: int = 4, stop_prob: float = 0.3, fail_prob: float = 0.0):
        self.rng = np.random.default_rng(seed)
        self.max_turns, self.stop_prob, self.fail_prob = max_turns, stop_prob, fail_prob

    def pool(self, n: int, prefix: str = "u") -> list[RolloutTree]:
        out = []
        for i in range(n):
            t = RolloutTree(f"{prefix}{i}", [1, 2, 3], f"prompt number {i}", key=f"{prefix}-key-{i}")
            z = float(self.rng.normal(0.0, 2.5))
            t.root.meta.update(z=z, true_p=_sigmoid(z))
            t.root.features = np.array([z + self.rng.normal(), 1.0], np.float32)
            out.append(t)
        return out

    def rollout(self, tree: RolloutTree, launch) -> list[int]:
        leaves = []
        for _ in range(launch.count):
            node = launch.anchor
            if self.rng.random() < self.fail_prob:
                nid = tree.add_turn(node, [], meta={"z": tree[node].meta["z"], "true_p": tree[node].meta["true_p"]},
                                    features=tree[node].features)
                tree.finish(nid, None, LeafStatus.FAILED)
                leaves.append(nid)
                continue
            z = tree[node].meta["z"]
            while True:
                z += float(self.rng.normal(0.0, 1.0))
                n_tok = int(self.rng.integers(3, 20))
                nid = tree.add_turn(
                    node,
                    self.rng.integers(10, 400, size=n_tok).tolist(),
                    [7, 8],
                    action_logprobs=(-self.rng.random(n_tok)).tolist(),
                    text=f"turn {tree[node].depth + 1}",
                    tool_calls=1,
                    entropy=float(self.rng.random()),
                    meta={"z": z, "true_p": _sigmoid(z)},
                    features=np.array([z + self.rng.normal(), 0.0], np.float32),
                )
                node = nid
                if tree[nid].depth >= self.max_turns or self.rng.random() < self.stop_prob:
                    status = LeafStatus.TRUNCATED if tree[nid].depth >= self.max_turns else LeafStatus.OK
                    tree.finish(nid, float(self.rng.random() < _sigmoid(z)), status)
                    break
            leaves.append(node)
        return leaves


@pytest.fixture
def world() -> RandomWorld:
    return RandomWorld(seed=0)


@pytest.fixture(scope="session")
def make_world():
    return RandomWorld
