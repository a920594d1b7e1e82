"""Fixtures for the Search-R1 recipe tests: the shipped mini data and real retrieval-server processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
MINI = ROOT / "recipes" / "search_r1" / "data" / "mini"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``python -m verl_trace.tools.retrieval_server`` as a child process on 127.0.0.1."""

    def __init__(self, corpus: Path, index_dir: Path, *extra: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = index_dir.parent / f"server-{self.port}.log"
        cmd = [sys.executable, "-m", "verl_trace.tools.retrieval_server", "--corpus", str(corpus),
               "--index-dir", str(index_dir), "--port", str(self.port), "--no-progress", *extra]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"retrieval server exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"retrieval server not ready in {timeout}s:\n{self.log.read_text()}")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="session")
def mini_records() -> list[dict]:
    return [json.loads(line) for split in ("train", "test") for line in (MINI / f"{split}.jsonl").read_text().splitlines()]


@pytest.fixture(scope="session")
def mini_corpus_rows() -> list[dict]:
    return [json.loads(line) for line in (MINI / "corpus.jsonl").read_text().splitlines()]


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> Iterator[ServerProcess]:
    """One BM25 server over the shipped mini corpus for the whole session."""
    proc = ServerProcess(MINI / "corpus.jsonl", tmp_path_factory.mktemp("bm25") / "index")
    yield proc
    proc.stop()


@pytest.fixture
def start_server(tmp_path) -> Iterator:
    """Start servers this test may stop, freeze or kill: ``start_server(*extra_cli_args)``."""
    started: list[ServerProcess] = []

    def start(*extra: str) -> ServerProcess:
        started.append(ServerProcess(MINI / "corpus.jsonl", tmp_path / f"index{len(started)}", *extra))
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
