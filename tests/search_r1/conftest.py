"""Fixtures for the Search-R1 recipe tests: the shipped mini data and real retrieval-server processes."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from verl_trace.tools.retrieval_server.process import RetrievalServerProcess

ROOT = Path(__file__).resolve().parents[2]
MINI = ROOT / "recipes" / "search_r1" / "data" / "mini"


def start_process(corpus: Path, index_dir: Path, *extra: str) -> RetrievalServerProcess:
    """A BM25 server process with its index in ``index_dir`` and its log beside it."""
    log = index_dir.parent / f"server-{index_dir.name}.log"
    return RetrievalServerProcess(corpus, log, index_dir=index_dir, extra_args=extra, startup_timeout=60.0).start()


@pytest.fixture(scope="session")
def mini_records() -> list[dict]:
    return [json.loads(line) for split in ("train", "test") for line in (MINI / f"{split}.jsonl").read_text().splitlines()]


@pytest.fixture(scope="session")
def mini_corpus_rows() -> list[dict]:
    return [json.loads(line) for line in (MINI / "corpus.jsonl").read_text().splitlines()]


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> Iterator[RetrievalServerProcess]:
    """One BM25 server over the shipped mini corpus for the whole session."""
    proc = start_process(MINI / "corpus.jsonl", tmp_path_factory.mktemp("bm25") / "index")
    yield proc
    proc.stop()


@pytest.fixture
def start_server(tmp_path) -> Iterator:
    """Start servers this test may stop, freeze or kill: ``start_server(*extra_cli_args)``."""
    started: list[RetrievalServerProcess] = []

    def start(*extra: str) -> RetrievalServerProcess:
        started.append(start_process(MINI / "corpus.jsonl", tmp_path / f"index{len(started)}", *extra))
        return started[-1]

    yield start
    for proc in started:
        proc.stop()


def _load_script(name: str):
    """Import a recipe script (recipes/ is not an installed package) as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"search_r1_{name}", ROOT / "recipes" / "search_r1" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def make_mini():
    return _load_script("make_mini_data")


@pytest.fixture(scope="session")
def prepare():
    return _load_script("prepare_data")
