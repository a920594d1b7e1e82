"""A Search-R1 compatible retrieval service: BM25 (bm25s) or dense (faiss) over a JSONL corpus."""

from .. import search_extra  # noqa: F401  (first: checks the optional packages below)
from .app import create_app
from .build import BackendOptions, open_backend
from .corpus import Corpus, CorpusError
from .protocol import Limits

__all__ = ["BackendOptions", "Corpus", "CorpusError", "Limits", "create_app", "open_backend"]
