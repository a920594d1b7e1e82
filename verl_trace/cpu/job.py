"""Run ``python -m verl_trace.main_trace`` on CPU as a child process and read back what it did.

The Python API a driver (the CPU demo, the tests, ``python -m verl_trace.cpu.run``) uses::

    assets = prepare(out / "assets")                        # model, parquet, tool config
    with retrieval_server(assets, out / "logs") as url:      # BM25 over the mini corpus
        run = run_main_trace(assets, out / "run", retrieve_url=url, method="trace",
                             overrides=["trainer.total_training_steps=5", "trainer.save_freq=5"])
    run.returncode, run.step_metrics(), run.checkpoint(5)

How the driver reads the run:

* **per-step metrics**: verl's own file logger (``trainer.logger`` gets ``file``;
  ``VERL_FILE_LOGGER_PATH`` points it at ``RUN/metrics.jsonl``): one JSON line per logged step,
  ``{"step": N, "data": {...}}`` with verl's metrics (``actor/grad_norm``,
  ``training/rollout_probs_diff_max``, ``timing_s/*``) and TRACE's (``trace/*``, ``plan/*``,
  ``predictor/*``). ``TrainerRun.step_metrics()`` parses it (NaN and infinities included).
  verl opens the file afresh per run, so a resumed run writes its own file.
* **checkpoints**: ``trainer.default_local_dir`` = ``RUN/checkpoints``; verl writes
  ``global_step_N/actor``, ``data.pt`` and ``latest_checkpointed_iteration.txt``, TRACE adds
  ``global_step_N/trace_predictor.pt``. Resuming is verl's: ``trainer.resume_mode=auto`` (the
  default) continues from the latest checkpoint of ``default_local_dir``.
* **output**: stdout and stderr of the whole job, Ray workers included, go to ``RUN/main_trace.log``.

Processes: the child runs in its own session with a private Ray temp dir. A normal exit shuts its
local Ray cluster down; on a timeout or an interrupt every process of the child's tree (driver,
Ray's GCS and raylet, the workers they started) is killed by PID, and nothing else is.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import ENV_VAR
from .prepare import ASSETS_ENV, Assets

RECIPE_CONFIG_DIR = Path(__file__).resolve().parents[2] / "recipes" / "search_r1" / "config"
CONFIG_NAME = "cpu_tiny"
METHODS = ("trace", "grpo", "tree_grpo")


@dataclass
class TrainerRun:
    """A finished ``main_trace`` child process."""

    returncode: int
    workdir: Path
    seconds: float
    command: list[str] = field(default_factory=list)

    @property
    def log(self) -> Path:
        return self.workdir / "main_trace.log"

    @property
    def metrics_file(self) -> Path:
        return self.workdir / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.workdir / "checkpoints"

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"global_step_{step}"

    def step_metrics(self) -> list[dict[str, Any]]:
        """One dict per line of verl's file logger, with ``"step"`` added; ``[]`` if none."""
        return read_step_metrics(self.metrics_file)

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.is_file() else ""


def read_step_metrics(path: Path) -> list[dict[str, Any]]:
    """Parse verl's ``FileLogger`` JSONL (orjson writes NaN and infinities as ``null``)."""
    if not Path(path).is_file():
        return []
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return [{"step": row["step"], **row["data"]} for row in rows]


def main_trace_command(method: str = "trace", overrides: Sequence[str] = (),
                       config_dir: Path = RECIPE_CONFIG_DIR, config_name: str = CONFIG_NAME) -> list[str]:
    if method not in METHODS:
        raise ValueError(f"method: {method!r}; choose one of {list(METHODS)}")
    return [sys.executable, "-m", "verl_trace.main_trace", f"--config-path={config_dir}",
            f"--config-name={config_name}", f"method={method}", *overrides]


def job_env(assets: Assets, retrieve_url: str | None, workdir: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment the child runs in: the CPU switch, the assets, the search server (if the
    task has one), the metrics file."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # always a private local cluster
    env.update({
        ENV_VAR: "1", ASSETS_ENV: str(assets.root),
        "VERL_FILE_LOGGER_PATH": str(workdir / "metrics.jsonl"), "PYTHONUNBUFFERED": "1",
        "TOKENIZERS_PARALLELISM": "false", "RAY_DEDUP_LOGS": "0", "HYDRA_FULL_ERROR": "1",
        "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "1"),
    })
    if retrieve_url is not None:
        env["RETRIEVAL_URL"] = retrieve_url
    env.update(extra or {})
    return env


def run_main_trace(assets: Assets, workdir: str | Path, *, retrieve_url: str | None, method: str = "trace",
                   overrides: Sequence[str] = (), timeout: float | None = None, ray_tmp: str | Path | None = None,
                   env: dict[str, str] | None = None, echo: bool = False, prefix: Sequence[str] = ()) -> TrainerRun:
    """Run main_trace with ``cpu_tiny.yaml`` and ``overrides`` until it exits (or ``timeout``
    seconds pass: then its process tree is killed and ``returncode`` is -9). ``ray_tmp``: Ray's
    temp dir (keep it short: Ray's socket paths must stay under 108 characters). ``echo`` copies
    the output to this process's stdout as well. ``prefix`` goes before the interpreter (``nice``)."""
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    base = [f"trainer.default_local_dir={workdir / 'checkpoints'}", "trainer.logger=[console,file]"]
    if ray_tmp is not None:
        Path(ray_tmp).mkdir(parents=True, exist_ok=True)
        base.append(f"+ray_kwargs.ray_init._temp_dir={Path(ray_tmp).resolve()}")
    cmd = [*prefix, *main_trace_command(method, [*base, *overrides])]
    t0 = time.monotonic()
    with open(workdir / "main_trace.log", "wb") as log:
        proc = subprocess.Popen(cmd, env=job_env(assets, retrieve_url, workdir, env), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = _pump(proc, log, echo, None if timeout is None else t0 + timeout)
        except BaseException:
            kill_tree(proc.pid)
            raise
    return TrainerRun(rc, workdir, time.monotonic() - t0, cmd)


def _pump(proc: subprocess.Popen, log: Any, echo: bool, deadline: float | None) -> int:
    """Copy the child's output to the log until it exits or the deadline passes (-9: killed)."""
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    while True:
        wait = None if deadline is None else max(0.0, deadline - time.monotonic())
        if wait == 0.0:
            kill_tree(proc.pid)
            return -signal.SIGKILL
        if sel.select(timeout=min(wait, 1.0) if wait is not None else 1.0):
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            log.write(chunk)
            if echo:
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
    try:  # output closed: the child is exiting (Ray shutting down), within what is left of the deadline
        return proc.wait(timeout=None if deadline is None else max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        return -signal.SIGKILL


def kill_tree(pid: int) -> list[int]:
    """SIGKILL ``pid`` and every process descended from it (Ray's GCS, raylet and workers of a
    local cluster the child started); returns the PIDs signalled."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)
    return [p.pid for p in procs]


@contextmanager
def retrieval_server(assets: Assets, log_dir: str | Path) -> Iterator[str]:
    """The BM25 server over the mini corpus as a child process; yields its ``/retrieve`` URL."""
    from ..tools.retrieval_server.process import RetrievalServerProcess

    with RetrievalServerProcess(assets.corpus, Path(log_dir) / "retrieval_server.log") as server:
        yield server.retrieve_url
