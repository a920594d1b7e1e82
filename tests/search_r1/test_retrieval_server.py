"""The retrieval server as a real process on 127.0.0.1: protocol, hits, limits, concurrency, index files."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from verl_trace.tools.retrieval_server.build import BackendOptions, open_backend
from verl_trace.tools.retrieval_server.corpus import Corpus, CorpusError, split_title
from verl_trace.tools.retrieval_server.index import IndexMismatchError, top_hits

pytestmark = pytest.mark.slow

ROOT_CORPUS = Path(__file__).resolve().parents[2] / "recipes" / "search_r1" / "data" / "mini" / "corpus.jsonl"


def retrieve(server, body, **kw) -> httpx.Response:
    return httpx.post(f"{server.url}/retrieve", json=body, timeout=30, **kw)


def test_health_reports_backend_and_size(server, mini_corpus_rows):
    health = httpx.get(f"{server.url}/health").json()
    assert health["status"] == "ok" and health["backend"] == "bm25"
    assert health["num_docs"] == len(mini_corpus_rows)


def test_gold_queries_hit_in_one_batch(server, mini_records):
    hops = [h for r in random.Random(0).sample(mini_records, 300) for h in r["metadata"]["chain"]]
    resp = retrieve(server, {"queries": [h["query"] for h in hops], "topk": 3, "return_scores": True})
    assert resp.status_code == 200
    result = resp.json()["result"]
    assert len(result) == len(hops)
    for hop, hits in zip(hops, result):
        assert 1 <= len(hits) <= 3
        assert {"document", "score"} == set(hits[0]) and {"id", "contents"} <= set(hits[0]["document"])
        scores = [h["score"] for h in hits]
        assert scores == sorted(scores, reverse=True)
        assert hop["doc_id"] in [h["document"]["id"] for h in hits], hop
        # the bridge entity is written verbatim in the gold passage
        gold = next(h["document"] for h in hits if h["document"]["id"] == hop["doc_id"])
        assert hop["finds"] in gold["contents"]
        assert split_title(gold["contents"])[0] == hop["query"]


def test_without_scores_documents_come_bare_and_topk_defaults_to_server_setting(server):
    result = retrieve(server, {"queries": ["Kogridale"]}).json()["result"]
    assert len(result[0]) == 3  # the server's --topk default
    assert set(result[0][0]) >= {"id", "contents"} and "score" not in result[0][0]
    assert len(retrieve(server, {"queries": ["Kogridale"], "topk": 7}).json()["result"][0]) == 7


def test_blank_and_unknown_queries_get_empty_lists(server):
    result = retrieve(server, {"queries": ["", "   ", "qqqq zzzz", "Kogridale"], "topk": 2}).json()["result"]
    assert result[:3] == [[], [], []] and len(result[3]) == 2


@pytest.mark.parametrize(
    "body, field",
    [
        ({"topk": 3}, ["body", "queries"]),
        ({"queries": []}, ["body", "queries"]),
        ({"queries": "Kogridale"}, ["body", "queries"]),
        ({"queries": ["ok", 7]}, ["body", "queries", 1]),
        ({"queries": ["x" * 5000]}, ["body", "queries", 0]),
        ({"queries": ["ok"] * 1025}, ["body", "queries"]),
        ({"queries": ["ok"], "topk": 0}, ["body", "topk"]),
        ({"queries": ["ok"], "topk": 101}, ["body", "topk"]),
        ({"queries": ["ok"], "return_scores": "sometimes"}, ["body", "return_scores"]),
        ([1, 2], ["body"]),
    ],
)
def test_bad_requests_get_422_naming_the_field(server, body, field):
    resp = retrieve(server, body)
    assert resp.status_code == 422
    detail = resp.json()["detail"]
    assert field in [d["loc"] for d in detail], detail
    assert all(d["msg"] and "input" not in d for d in detail)  # no echo of (possibly huge) input


def test_malformed_json_oversized_body_and_wrong_method(server):
    bad = httpx.post(f"{server.url}/retrieve", content=b'{"queries": [', headers={"content-type": "application/json"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["type"] == "json_invalid"
    huge = httpx.post(f"{server.url}/retrieve", content=b" " * (9 * 1024 * 1024),
                      headers={"content-type": "application/json"}, timeout=30)
    assert huge.status_code == 413
    assert httpx.get(f"{server.url}/retrieve").status_code == 405
    assert httpx.get(f"{server.url}/health").status_code == 200  # still alive


def test_concurrent_clients_get_the_same_answers_as_one(server, mini_records):
    queries = [r["metadata"]["chain"][0]["query"] for r in mini_records[:64]]
    expected = retrieve(server, {"queries": queries, "topk": 3}).json()["result"]

    async def one(client, i):
        resp = await client.post(f"{server.url}/retrieve", json={"queries": [queries[i]], "topk": 3})
        return resp.json()["result"][0]

    async def all_at_once():
        async with httpx.AsyncClient(timeout=30) as client:
            return await asyncio.gather(*(one(client, i) for i in range(len(queries))))

    assert asyncio.run(all_at_once()) == expected


def test_saved_index_is_reused_and_checked_against_the_corpus(tmp_path, mini_corpus_rows):
    corpus_path = tmp_path / "corpus.jsonl"
    corpus_path.write_text("".join(json.dumps(r) + "\n" for r in mini_corpus_rows[:300]))
    index_dir = tmp_path / "index"
    cli = [sys.executable, "-m", "verl_trace.tools.retrieval_server", "build-index", "--corpus", str(corpus_path),
           "--index-dir", str(index_dir), "--no-progress"]
    done = subprocess.run(cli, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    meta = json.loads((index_dir / "meta.json").read_text())
    assert meta["backend"] == "bm25" and meta["num_docs"] == 300

    corpus = Corpus.open(corpus_path, progress=False)
    fresh = open_backend(corpus, BackendOptions(), progress=False)
    loaded = open_backend(corpus, BackendOptions(), index_dir, progress=False)
    queries = [split_title(r["contents"])[0] for r in mini_corpus_rows[:50]]
    assert loaded.search(queries, 3) == fresh.search(queries, 3)
    with pytest.raises(IndexMismatchError, match="k1"):
        open_backend(corpus, BackendOptions(k1=2.0), index_dir, progress=False)
    with pytest.raises(IndexMismatchError, match="backend 'bm25'"):
        open_backend(corpus, BackendOptions(backend="dense"), index_dir, progress=False)

    corpus_path.write_text("".join(json.dumps(r) + "\n" for r in mini_corpus_rows[:299]))
    with pytest.raises(IndexMismatchError, match="different corpus"):
        open_backend(Corpus.open(corpus_path, progress=False), BackendOptions(), index_dir, progress=False)


@pytest.mark.parametrize(
    "line, message",
    [("not json", "not valid JSON"), ("[1, 2]", "expected a JSON object"),
     ('{"contents": "\\"T\\"\\nx"}', "field 'id' is missing"), ('{"id": 1, "contents": 5}', "field 'contents'")],
)
def test_bad_corpus_lines_are_named(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "a", "contents": "\\"A\\"\\ntext"}\n\n' + line + "\n")
    with pytest.raises(CorpusError, match=f"bad.jsonl:3: {message}"):
        Corpus.open(path, progress=False)


def test_server_refuses_a_bad_corpus_with_exit_code_2(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"id": "a", "contents": '"A"\ntext'}) + "\n" + json.dumps({"id": "b"}) + "\n")
    done = subprocess.run([sys.executable, "-m", "verl_trace.tools.retrieval_server", "--corpus", str(path),
                           "--no-progress"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "bad.jsonl:2: field 'contents' must be a string" in done.stderr


def test_posting_list_scoring_equals_bm25s_full_scoring(mini_records):
    """The server scores only posting-list documents for rare terms; results (ties by row) must be
    exactly bm25s's full-corpus scoring."""
    corpus = Corpus.open(ROOT_CORPUS, progress=False)
    backend = open_backend(corpus, BackendOptions(), progress=False)
    queries = [h["query"] for r in mini_records[::7] for h in r["metadata"]["chain"]]
    queries += [r["question"] for r in mini_records[::11]] + ["city", "born in a city", "the museum was built"]
    ids = [[backend.vocab[s] for s in backend.analyzer(q) if s in backend.vocab] for q in queries]
    reference = [top_hits(np.asarray(backend.retriever.get_scores_from_ids(i)), 5, min_score=0.0) for i in ids]
    assert backend.search(queries, 5) == reference
    postings = [int(np.diff(backend.retriever.scores["indptr"])[i].sum()) for i in ids]
    assert min(postings) < len(corpus) // 16 < max(postings)  # both scoring paths were taken
