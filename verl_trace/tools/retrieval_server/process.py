"""The retrieval server as a child process on 127.0.0.1, stopped whatever happens: what the CPU
demo, the benchmarks and the tests run (one way to start it, one way to stop it).

``with RetrievalServerProcess(corpus, log_path) as server:`` starts ``python -m
verl_trace.tools.retrieval_server`` on a free port, waits for ``/health``, and stops it on exit,
errors and Ctrl-C included. The child runs in its own session, so a terminal's Ctrl-C reaches only
the parent (which then stops the server itself), and on Linux it is told to exit if the parent dies
without cleaning up (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:  # not glibc/Linux: the context manager still stops the server
        pass


class RetrievalServerProcess:
    """One server process. Its output goes to ``log_path`` (None: this process's stderr, with the
    server's index-building progress bar). ``extra_args`` go to the server's command line (e.g.
    ``--max-queries``), ``prefix`` before the interpreter (e.g. ``["nice", "-n", "10"]``);
    ``startup_timeout`` covers building the index (minutes for a million passages)."""

    def __init__(self, corpus: Path, log_path: Path | None, *, index_dir: Path | None = None, backend: str = "bm25",
                 extra_args: Sequence[str] = (), prefix: Sequence[str] = (), startup_timeout: float = 90.0):
        self.corpus = Path(corpus)
        if not self.corpus.is_file():
            raise FileNotFoundError(f"corpus {self.corpus} not found")
        self.log_path = Path(log_path) if log_path is not None else None
        self.index_dir, self.backend = index_dir, backend
        self.extra_args, self.prefix = list(extra_args), list(prefix)
        self.startup_timeout = startup_timeout
        self.port = 0
        self.startup_seconds = 0.0
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def retrieve_url(self) -> str:
        return f"{self.url}/retrieve"

    def start(self) -> RetrievalServerProcess:
        self.port = free_port()
        cmd = [*self.prefix, sys.executable, "-m", "verl_trace.tools.retrieval_server", "--corpus", str(self.corpus),
               "--backend", self.backend, "--host", "127.0.0.1", "--port", str(self.port),
               *(["--no-progress"] if self.log_path is not None else []),
               *(["--index-dir", str(self.index_dir)] if self.index_dir is not None else []), *self.extra_args]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")]))}
        t0 = time.monotonic()
        if self.log_path is None:
            self.proc = subprocess.Popen(cmd, env=env, stdout=sys.stderr, stderr=sys.stderr,
                                         start_new_session=True, preexec_fn=_die_with_parent)
        else:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "w") as log:
                self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                             start_new_session=True, preexec_fn=_die_with_parent)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = f"log {self.log_path}:\n{self.log_path.read_text()[-2000:]}" if self.log_path else "output above"
                raise RuntimeError(f"retrieval server exited with code {self.proc.returncode}; {log}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1.0) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"retrieval server not ready after {self.startup_timeout:.0f}s; log {self.log_path or 'above'}")

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the server (tests freeze it with SIGSTOP or kill it)."""
        if self.proc is not None:
            self.proc.send_signal(sig)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGCONT)  # a frozen server cannot act on SIGTERM
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> RetrievalServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
