"""The simulated multi-turn search agent.

Every prefix has a known conditional success probability ``p``. A turn either is *decisive* (a
search that found the answer, after which ``p`` jumps to ``found_p``; or a wrong search / bad tool
call, after which it drops to ``lost_p``) or moves ``p`` by a random walk in logit space. Both moves
are drift-corrected so that ``p`` is a martingale: the expected terminal reward of any prefix is
exactly its ``p`` (which is what "true conditional success probability" means). The agent answers
by a hazard that depends on the question's hops and on whether it has found the answer, or at the
turn limit; the answer's reward is Bernoulli(p).

The predictor sees only noisy observables (a difficulty cue in the prompt, per-turn retrieval
evidence, noisy found / lost flags, token counts, the policy's entropy), never ``p``. The policy
"learns" by a per-prompt drift of the success logit between steps. docs/benchmarks.md lists what
is and is not modelled.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np

from verl_trace.tree import ROOT, LeafStatus, RolloutTree

from .regime import Lognormal, Regime

LOGIT_CLIP = 12.0
N_TURN_FEATURES = 9


def sigmoid(u: float) -> float:
    return 1.0 / (1.0 + math.exp(-u))


def logit(p: float) -> float:
    return math.log(p / (1.0 - p))


class MartingaleWalk:
    """Logit random walk u' = u + c(u) + s * eps with the correction c(u) chosen so that
    E[sigmoid(u')] = sigmoid(u) exactly (Gauss-Hermite quadrature, tabulated once per regime)."""

    def __init__(self, std: float, grid: int = 2401):
        self.std = std
        self.u = np.linspace(-LOGIT_CLIP, LOGIT_CLIP, grid)
        self.c = np.zeros(grid) if std == 0 else self._solve(self.u, std)

    @staticmethod
    def _solve(u: np.ndarray, s: float) -> np.ndarray:
        x, w = np.polynomial.hermite_e.hermegauss(80)
        w = w / w.sum()
        target = 1.0 / (1.0 + np.exp(-u))
        c = np.zeros_like(u)
        for _ in range(60):
            z = 1.0 / (1.0 + np.exp(-(u[:, None] + c[:, None] + s * x[None, :])))
            f = z @ w - target
            df = (z * (1 - z)) @ w
            c -= f / np.maximum(df, 1e-300)
        return c

    def correction(self, u: float) -> float:
        return float(np.interp(u, self.u, self.c))


@dataclass(slots=True)
class NodeState:
    """Simulator-private state of a prefix (never shown to allocators or predictors)."""

    u: float  # success logit
    delta: float  # P(the next turn is decisive)
    found: bool  # a turn on the path found the answer
    depth: int
    searches: int
    evidence: float  # running sum of observed evidence
    found_flags: int
    lost_flags: int
    gen_tokens: int  # generated tokens on the path

    @property
    def p(self) -> float:
        return sigmoid(self.u)


@dataclass(slots=True)
class TurnDraw:
    """One sampled turn, materialized into the tree when its trajectory finishes."""

    state: NodeState
    action_tokens: int
    obs_tokens: int
    entropy: float
    features: np.ndarray
    answer: bool
    reward: float
    tool_s: float  # tool latency after this turn (0 for the answer)
    prefill_tokens: int  # tokens the engine must prefill before generating this turn


class PromptSet:
    """Train and held-out prompts with latent difficulty, drift, hops, verbosity and the prompt
    block of their features."""

    def __init__(self, regime: Regime, seed: int):
        r = regime
        rng = np.random.default_rng([seed, 17])
        n = r.run.train_prompts + r.run.eval_prompts
        comps = r.difficulty.components
        w = np.array([c.weight for c in comps])
        k = rng.choice(len(comps), size=n, p=w / w.sum())
        self.z0 = np.array([rng.normal(comps[i].mean, comps[i].std) for i in k])
        self.drift = rng.normal(r.learning.drift_mean, r.learning.drift_std, n)
        self.hops = rng.integers(r.turns.hops_min, r.turns.hops_max + 1, n)
        self.verbosity = np.exp(rng.normal(0.0, r.tokens.verbosity_sigma, n))
        self.prompt_tokens = np.maximum(1, _lognormal(rng, r.tokens.prompt, n)).astype(int)
        ob = r.observables
        block = np.empty((n, ob.prompt_dims), np.float32)
        block[:, 0] = (self.z0 + rng.normal(0.0, ob.prompt_signal_std, n)) / 4.0  # difficulty cue
        block[:, 1] = (self.hops + rng.normal(0.0, 0.5, n)) / 3.0  # "how many entities" cue
        block[:, 2] = np.log(self.prompt_tokens) / 6.0
        block[:, 3:] = rng.normal(0.0, 1.0, (n, ob.prompt_dims - 3))  # topic: uninformative
        self.block = block
        self.train = np.arange(r.run.train_prompts)
        self.held_out = np.arange(r.run.train_prompts, n)

    def logit_at(self, i: int, step: int) -> float:
        return float(np.clip(self.z0[i] + self.drift[i] * step, -LOGIT_CLIP, LOGIT_CLIP))


def _lognormal(rng: np.random.Generator, d: Lognormal, n: int) -> np.ndarray:
    return d.median * np.exp(rng.normal(0.0, d.sigma, n))


class Environment:
    """Samples turns from prefix states and materializes finished trajectories into trees."""

    def __init__(self, regime: Regime, prompts: PromptSet, seed: int):
        self.r = regime
        self.prompts = prompts
        self.walk = MartingaleWalk(regime.turns.walk_std)
        self.rng = random.Random(seed)
        t = regime.turns
        self._beta = (t.decisive_mean * t.decisive_concentration, (1 - t.decisive_mean) * t.decisive_concentration)
        self.state: dict[str, list[NodeState]] = {}  # tree uid -> state per node id
        self.prompt_of: dict[str, int] = {}
        self.feature_dim = regime.observables.prompt_dims + N_TURN_FEATURES

    # ------------------------------------------------------------------ roots
    def root(self, prompt: int, step: int, uid: str) -> RolloutTree:
        """A root-only tree for the candidate pool, with noisy features and the true p."""
        tree = RolloutTree(uid, key=f"p{prompt}")
        u = self.prompts.logit_at(prompt, step)
        st = NodeState(u, self._delta(), False, 0, 0, 0.0, 0, 0, 0)
        self.state[uid] = [st]
        self.prompt_of[uid] = prompt
        tree.root.features = self._features(prompt, st, 0.0, 0.0)
        tree.root.meta["true_p"] = st.p
        return tree

    def forget(self, uid: str) -> None:
        self.state.pop(uid, None)
        self.prompt_of.pop(uid, None)

    # ------------------------------------------------------------------ dynamics
    def _delta(self) -> float:
        return self.rng.betavariate(*self._beta)

    def _lognormal(self, d: Lognormal, scale: float = 1.0) -> int:
        return max(1, round(scale * d.median * math.exp(self.rng.gauss(0.0, d.sigma)))) if d.sigma else max(1, round(scale * d.median))

    def continuation(self, uid: str, anchor: int) -> list[TurnDraw]:
        """Sample the turns of one trajectory continuing from node ``anchor`` until it answers."""
        r, rng = self.r, self.rng
        t, ob = r.turns, r.observables
        prompt = self.prompt_of[uid]
        hops = int(self.prompts.hops[prompt])
        verb = float(self.prompts.verbosity[prompt])
        s = self.state[uid][anchor]
        out: list[TurnDraw] = []
        prefill = int(self.prompts.prompt_tokens[prompt]) if anchor == ROOT else 0  # prefix cache hit
        while True:
            depth = s.depth + 1
            p = s.p
            entropy = ob.entropy_base + ob.entropy_gain * s.delta * 4.0 * p * (1.0 - p) + rng.gauss(0.0, ob.entropy_noise_std)
            entropy = max(0.0, entropy)
            if depth >= t.max_turns:
                answer = True
            elif s.depth == 0:
                answer = rng.random() < t.answer_without_search
            else:
                h = t.answer_hazard_found if s.found else (t.answer_hazard_after_hops if s.searches >= hops else t.answer_hazard)
                answer = rng.random() < h
            if answer:
                n_act = self._lognormal(r.tokens.answer, verb)
                ns = NodeState(s.u, 0.0, s.found, depth, s.searches, s.evidence, s.found_flags, s.lost_flags, s.gen_tokens + n_act)
                reward = 1.0 if rng.random() < p else 0.0
                out.append(TurnDraw(ns, n_act, 0, entropy, self._features(prompt, ns, 0.0, entropy), True, reward, 0.0, prefill))
                return out
            found_now = lost_now = False
            if rng.random() < s.delta:
                hi, lo = max(t.found_p, p), min(t.lost_p, p)
                found_now = rng.random() < (p - lo) / (hi - lo)
                lost_now = not found_now
                u = logit(hi if found_now else lo)
            else:
                u = s.u + self.walk.correction(s.u) + t.walk_std * rng.gauss(0.0, 1.0)
            u = min(LOGIT_CLIP, max(-LOGIT_CLIP, u))
            ev = (u - s.u) + rng.gauss(0.0, ob.evidence_std)
            ff = rng.random() < (ob.found_flag.hit if found_now else ob.found_flag.false_alarm)
            lf = rng.random() < (ob.lost_flag.hit if lost_now else ob.lost_flag.false_alarm)
            n_act = self._lognormal(r.tokens.action, verb)
            n_obs = self._lognormal(r.tokens.observation)
            ns = NodeState(
                u, self._delta(), s.found or found_now, depth, s.searches + 1, s.evidence + ev,
                s.found_flags + ff, s.lost_flags + lf, s.gen_tokens + n_act,
            )
            tool = r.latency.tool_s.median * math.exp(rng.gauss(0.0, r.latency.tool_s.sigma))
            out.append(TurnDraw(ns, n_act, n_obs, entropy, self._features(prompt, ns, ev, entropy), False, 0.0, tool, prefill))
            prefill = n_obs
            s = ns

    def _features(self, prompt: int, s: NodeState, last_evidence: float, entropy: float) -> np.ndarray:
        mt = self.r.turns.max_turns
        turn = np.array(
            [
                s.depth / mt,
                s.searches / mt,
                s.evidence / 4.0,
                last_evidence / 4.0,
                s.found_flags,
                s.lost_flags,
                entropy,
                math.log1p(s.gen_tokens) / 8.0,
                1.0 if s.depth == 0 else 0.0,
            ],
            np.float32,
        )
        return np.concatenate([self.prompts.block[prompt], turn])

    # ------------------------------------------------------------------ trees
    def materialize(self, tree: RolloutTree, anchor: int, turns: list[TurnDraw]) -> int:
        """Add a finished trajectory's turns below ``anchor``; return the leaf id."""
        states = self.state[tree.uid]
        parent = anchor
        for d in turns:
            nid = len(tree)
            parent = tree.add_turn(
                parent,
                (0,) * d.action_tokens,  # a tuple, as the tree stores token sequences (not copied again)
                (0,) * d.obs_tokens,
                tool_calls=0 if d.answer else 1,
                entropy=d.entropy,
                meta={"true_p": d.state.p, "key": f"{tree.uid}/{nid}"},
                features=d.features,
            )
            states.append(d.state)
        tree.finish(parent, turns[-1].reward, LeafStatus.OK)
        return parent
