"""What every retrieval backend shares: the hit type, top-k selection, and the saved-index layout.

An index directory holds the backend's own files plus ``meta.json``: the backend name, its
build options, the number of passages and a fingerprint of the corpus file. Loading checks all
of them, so an index is never served against a corpus (or model) it was not built from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

META_FILE = "meta.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Hit:
    row: int
    score: float


class Backend(Protocol):
    name: str

    def search(self, queries: list[str], k: int) -> list[list[Hit]]: ...

    def save(self, index_dir: Path) -> None: ...


class IndexMismatchError(ValueError):
    """A saved index that does not belong to the requested corpus, backend or options."""


def top_hits(scores: np.ndarray, k: int, rows: np.ndarray | None = None, min_score: float | None = None) -> list[Hit]:
    """The ``k`` best of ``scores`` (for corpus ``rows``, default 0..n-1), best first, ties by row."""
    rows = np.arange(len(scores)) if rows is None else rows
    k = min(k, len(scores))
    if k <= 0:
        return []
    if k < len(scores):  # everything tied with the k-th best competes, so ties really go by row
        pick = np.flatnonzero(scores >= -np.partition(-scores, k - 1)[k - 1])
    else:
        pick = np.arange(len(scores))
    pick = pick[np.lexsort((rows[pick], -scores[pick]))][:k]
    return [Hit(int(rows[i]), float(scores[i])) for i in pick if min_score is None or scores[i] > min_score]


def write_meta(index_dir: Path, backend: str, num_docs: int, corpus_fingerprint: str,
               options: dict[str, Any]) -> None:
    meta = {"format": FORMAT_VERSION, "backend": backend, "num_docs": num_docs,
            "corpus_fingerprint": corpus_fingerprint, "options": options}
    (index_dir / META_FILE).write_text(json.dumps(meta, indent=2))


def read_meta(index_dir: Path) -> dict[str, Any] | None:
    path = index_dir / META_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def check_meta(meta: dict[str, Any], index_dir: Path, backend: str, num_docs: int, corpus_fingerprint: str,
               options: dict[str, Any]) -> None:
    """Raise ``IndexMismatchError`` naming the first thing that differs."""
    hint = f"rebuild it (build-index --index-dir {index_dir}, or serve with --rebuild)"
    if meta.get("format") != FORMAT_VERSION:
        raise IndexMismatchError(f"{index_dir}: index format {meta.get('format')} != {FORMAT_VERSION}; {hint}")
    if meta["backend"] != backend:
        raise IndexMismatchError(f"{index_dir}: index was built for backend '{meta['backend']}', "
                                 f"not '{backend}'; {hint}")
    if meta["num_docs"] != num_docs or meta["corpus_fingerprint"] != corpus_fingerprint:
        raise IndexMismatchError(f"{index_dir}: index was built from a different corpus "
                                 f"({meta['num_docs']} passages, fingerprint {meta['corpus_fingerprint']}; "
                                 f"this corpus has {num_docs}, fingerprint {corpus_fingerprint}); {hint}")
    for key, value in options.items():
        if meta["options"].get(key) != value:
            raise IndexMismatchError(f"{index_dir}: index was built with {key}={meta['options'].get(key)!r}, "
                                     f"requested {key}={value!r}; {hint}")
