"""The shipped mini world: reproducible from its seed, consistent chains, an entity hold-out, BM25-findable hops."""

from __future__ import annotations

import collections
import json
from pathlib import Path

from verl_trace.tools.retrieval_server.corpus import split_title

MINI_FILES = ("corpus.jsonl", "train.jsonl", "test.jsonl")


def test_committed_files_are_what_the_seeded_generator_writes(tmp_path, make_mini):
    summary = make_mini.generate(tmp_path, seed=0)
    shipped = Path(make_mini.__file__).parent / "data" / "mini"
    for name in MINI_FILES:
        assert (tmp_path / name).read_bytes() == (shipped / name).read_bytes(), name
    assert 1000 <= summary["passages"] <= 3000 and 2000 <= summary["train"] + summary["test"] <= 3000
    assert summary["test"] >= 1000  # one evaluation's standard error about 0.015
    assert set(summary["hops"]) == {1, 2, 3} and min(summary["hops"].values()) > 300


def test_chains_walk_the_corpus(mini_records, mini_corpus_rows):
    docs = {d["id"]: d["contents"] for d in mini_corpus_rows}
    assert len(docs) == len(mini_corpus_rows)
    for record in mini_records:
        chain = record["metadata"]["chain"]
        assert len(chain) == record["metadata"]["hops"] and record["golden_answers"] == [chain[-1]["finds"]]
        assert chain[0]["query"] == record["metadata"]["topic"] and chain[0]["query"] in record["question"]
        for prev, hop in zip(chain, chain[1:]):
            assert hop["query"] == prev["finds"]
        for hop in chain:
            title, text = split_title(docs[hop["doc_id"]])
            assert title == hop["query"] and hop["finds"] in text


def test_test_persons_and_companies_never_occur_in_training_questions(mini_records, mini_corpus_rows):
    kind = {split_title(d["contents"])[0]: d["id"].split("-")[0] for d in mini_corpus_rows}

    def entities(split: str) -> set[str]:
        names = set()
        for r in mini_records:
            if r["id"].startswith(f"mini-{split}-"):
                for hop in r["metadata"]["chain"]:
                    names |= {n for n in (hop["query"], hop["finds"]) if kind.get(n) in ("person", "company")}
        return names

    train, test = entities("train"), entities("test")
    assert test and not (train & test)
    templates = collections.Counter(r["metadata"]["template"] for r in mini_records if r["id"].startswith("mini-test"))
    assert len(templates) >= 8  # the hold-out covers person and company questions of every depth


def test_bm25_finds_every_hop_in_the_top_3(make_mini):
    mini = Path(make_mini.__file__).parent / "data" / "mini"
    records = [json.loads(line) for name in ("train.jsonl", "test.jsonl") for line in (mini / name).read_text().splitlines()]
    recall = make_mini.bm25_recall(mini / "corpus.jsonl", records)
    print("BM25 recall@3:", recall)
    assert recall["entity_query"] >= 0.99
    assert recall["question_query_first_hop"] >= 0.95
