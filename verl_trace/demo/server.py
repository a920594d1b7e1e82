"""The real retrieval server as a child process on 127.0.0.1, stopped whatever happens.

``with RetrievalServer(corpus) as server:`` starts ``python -m verl_trace.tools.retrieval_server``
(BM25) on a free port, waits for ``/health``, and stops it on exit, errors and Ctrl-C included.
The child runs in its own session, so a terminal's Ctrl-C reaches only the demo (which then
writes its partial report and stops the server itself), and on Linux it is told to exit if the
demo process dies without cleaning up (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:  # not glibc/Linux: the context manager still stops the server
        pass


class RetrievalServer:
    def __init__(self, corpus: Path, log_path: Path, *, startup_timeout: float = 90.0):
        self.corpus = Path(corpus)
        if not self.corpus.is_file():
            raise FileNotFoundError(f"corpus {self.corpus} not found")
        self.log_path = Path(log_path)
        self.startup_timeout = startup_timeout
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def retrieve_url(self) -> str:
        return f"{self.url}/retrieve"

    def start(self) -> RetrievalServer:
        self.port = free_port()
        cmd = [sys.executable, "-m", "verl_trace.tools.retrieval_server", "--corpus", str(self.corpus),
               "--backend", "bm25", "--host", "127.0.0.1", "--port", str(self.port), "--no-progress"]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")]))}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True, preexec_fn=_die_with_parent)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"retrieval server exited with code {self.proc.returncode}; "
                                   f"log {self.log_path}:\n{self.log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"retrieval server not ready after {self.startup_timeout:.0f}s; log {self.log_path}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> RetrievalServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
