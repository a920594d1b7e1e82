"""BM25 retrieval with bm25s (sparse, numpy backend, CPU), the server's default backend.

Tokenization is ours (one ``Analyzer`` for passages and queries): lowercase, ``\\w\\w+`` words,
English stopwords, Snowball stemming. Queries never grow the vocabulary or any cache, so a
long-running server keeps a flat memory profile whatever it is asked.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterable
from pathlib import Path

import bm25s
import numpy as np
import Stemmer
from bm25s.stopwords import STOPWORDS_EN

from .index import Hit, top_hits

_WORD = re.compile(r"(?u)\b\w\w+\b")
_ANALYZER_FILE = "analyzer.json"
_SPARSE_FRACTION = 16  # score sparsely while the postings touched are under 1/16 of the corpus


class Analyzer:
    """Text -> stems. Thread-safe: PyStemmer objects are not, so each thread gets its own."""

    def __init__(self, language: str = "english", stopwords: Iterable[str] = STOPWORDS_EN):
        self.language = language
        self.stopwords = frozenset(stopwords)
        Stemmer.Stemmer(language)  # fail now on an unknown language, not in a request
        self._local = threading.local()

    def _stemmer(self) -> Stemmer.Stemmer:
        stemmer = getattr(self._local, "stemmer", None)
        if stemmer is None:
            stemmer = self._local.stemmer = Stemmer.Stemmer(self.language)
        return stemmer

    def __call__(self, text: str) -> list[str]:
        words = [w for w in _WORD.findall(text.lower()) if w not in self.stopwords]
        return self._stemmer().stemWords(words)


class BM25Backend:
    """A bm25s index over row numbers of the corpus; ``search`` returns the best rows."""

    name = "bm25"

    def __init__(self, retriever: bm25s.BM25, analyzer: Analyzer):
        self.retriever = retriever
        self.analyzer = analyzer
        self.vocab: dict[str, int] = retriever.vocab_dict
        self.num_docs = int(retriever.scores["num_docs"])

    @classmethod
    def build(cls, texts: Iterable[str], k1: float = 1.2, b: float = 0.75, language: str = "english",
              progress: bool = True) -> BM25Backend:
        """Tokenize ``texts`` (one per corpus row, in order) and build the score matrix."""
        analyzer = Analyzer(language)
        vocab: dict[str, int] = {}
        doc_ids: list[list[int]] = []
        for text in texts:
            doc_ids.append([vocab.setdefault(stem, len(vocab)) for stem in analyzer(text)])
        retriever = bm25s.BM25(k1=k1, b=b)
        retriever.index((doc_ids, vocab), show_progress=progress)
        return cls(retriever, analyzer)

    def save(self, index_dir: Path) -> None:
        self.retriever.save(str(index_dir), show_progress=False)
        (index_dir / _ANALYZER_FILE).write_text(json.dumps({"language": self.analyzer.language,
                                                            "stopwords": sorted(self.analyzer.stopwords)}))

    @classmethod
    def load(cls, index_dir: Path, mmap: bool = False) -> BM25Backend:
        settings = json.loads((index_dir / _ANALYZER_FILE).read_text())
        retriever = bm25s.BM25.load(str(index_dir), mmap=mmap, show_progress=False)
        return cls(retriever, Analyzer(settings["language"], settings["stopwords"]))

    def search(self, queries: list[str], k: int) -> list[list[Hit]]:
        """Top-``k`` rows per query; documents sharing no term with the query are not returned."""
        results = []
        for query in queries:
            ids = [self.vocab[s] for s in self.analyzer(query) if s in self.vocab]
            results.append(self._search_ids(np.asarray(ids, dtype=np.int64), k) if ids else [])
        return results

    def _search_ids(self, ids: np.ndarray, k: int) -> list[Hit]:
        """Score only the documents on the query terms' posting lists when they are few (entity-name
        queries): no pass over all documents. Frequent terms fall back to bm25s's dense scoring."""
        index = self.retriever.scores
        starts, ends = index["indptr"][ids], index["indptr"][ids + 1]
        postings = int((ends - starts).sum())
        if postings > self.num_docs // _SPARSE_FRACTION:
            return top_hits(np.asarray(self.retriever.get_scores_from_ids(ids.tolist())), k, min_score=0.0)
        docs = np.concatenate([index["indices"][s:e] for s, e in zip(starts, ends)])
        weights = np.concatenate([index["data"][s:e] for s, e in zip(starts, ends)])
        rows, slot = np.unique(docs, return_inverse=True)
        scores = np.zeros(len(rows), dtype=weights.dtype)
        np.add.at(scores, slot, weights)  # same terms, same order, same dtype as bm25s: identical scores
        return top_hits(scores, k, rows=rows, min_score=0.0)
