"""Build a backend over a corpus, or load it from an index directory when one matches."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .bm25 import BM25Backend
from .corpus import Corpus, fingerprint
from .dense import BUNDLED_MODEL, DenseBackend, Encoder
from .index import Backend, check_meta, read_meta, write_meta

log = logging.getLogger(__name__)

BackendName = Literal["bm25", "dense"]


@dataclass
class BackendOptions:
    """Build options; the ones that change the index are stored in, and checked against, meta.json."""

    backend: BackendName = "bm25"
    k1: float = 1.2
    b: float = 0.75
    language: str = "english"
    dense_model: str = BUNDLED_MODEL
    query_prefix: str = ""
    passage_prefix: str = ""
    batch_size: int = 64
    device: str = "cpu"
    mmap: bool = False
    faiss_index: str | None = None  # a prebuilt faiss index to serve as is (dense only)

    def index_options(self) -> dict:
        if self.backend == "bm25":
            return {"k1": self.k1, "b": self.b, "language": self.language}
        return {"model": self.dense_model, "query_prefix": self.query_prefix, "passage_prefix": self.passage_prefix}


def _encoder(opts: BackendOptions) -> Encoder:
    return Encoder(opts.dense_model, opts.query_prefix, opts.passage_prefix, opts.batch_size, opts.device)


def build_backend(corpus: Corpus, opts: BackendOptions, progress: bool = True) -> Backend:
    texts = corpus.contents(progress=progress, desc=f"index ({opts.backend})")
    if opts.backend == "bm25":
        return BM25Backend.build(texts, k1=opts.k1, b=opts.b, language=opts.language, progress=progress)
    if opts.backend == "dense":
        return DenseBackend.build(texts, _encoder(opts))
    raise ValueError(f"--backend must be 'bm25' or 'dense', got {opts.backend!r}")


def open_backend(corpus: Corpus, opts: BackendOptions, index_dir: str | Path | None = None,
                 rebuild: bool = False, progress: bool = True) -> Backend:
    """Load the index in ``index_dir`` if it matches corpus and options, else build (and save) one."""
    start = time.perf_counter()
    if opts.backend == "dense" and opts.faiss_index:
        return DenseBackend.from_faiss_file(Path(opts.faiss_index), _encoder(opts), num_docs=len(corpus))
    if index_dir is None:
        backend = build_backend(corpus, opts, progress)
        log.info("built %s index over %d passages in %.1fs", opts.backend, len(corpus), time.perf_counter() - start)
        return backend
    index_dir = Path(index_dir)
    corpus_fp = fingerprint(corpus.path)
    meta = None if rebuild else read_meta(index_dir)
    if meta is not None:
        check_meta(meta, index_dir, opts.backend, len(corpus), corpus_fp, opts.index_options())
        backend = (BM25Backend.load(index_dir, mmap=opts.mmap) if opts.backend == "bm25"
                   else DenseBackend.load(index_dir, _encoder(opts)))
        log.info("loaded %s index from %s in %.1fs", opts.backend, index_dir, time.perf_counter() - start)
        return backend
    backend = build_backend(corpus, opts, progress)
    index_dir.mkdir(parents=True, exist_ok=True)
    backend.save(index_dir)
    write_meta(index_dir, opts.backend, len(corpus), corpus_fp, opts.index_options())
    log.info("built and saved %s index (%d passages) to %s in %.1fs", opts.backend, len(corpus), index_dir,
             time.perf_counter() - start)
    return backend
