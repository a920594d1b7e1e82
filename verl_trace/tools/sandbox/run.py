"""Run untrusted Python in a locked-down child process (the parent side of the sandbox).

Each call gets a fresh process in a new session (so the whole group can be killed), a fresh
temporary directory as its working directory (deleted afterwards), an environment with nothing
inherited, a wall-clock deadline enforced here, and the limits and filters that ``boot.py`` applies
inside the child before the code runs. Whatever the code does — loop forever, allocate without
end, fork, print gigabytes, write elsewhere, exit, crash the interpreter — the caller gets a
:class:`SandboxResult` back; only a sandbox that cannot be set up at all raises
:class:`SandboxError`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

BOOT = Path(__file__).with_name("boot.py")
SETUP_FAILED = 97  # boot.py's exit code when the sandbox could not be set up
_CUT = "\n[... output cut ...]\n"
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")


class SandboxLimits(BaseModel):
    """Per-run limits (a tool's ``config.limits`` in the verl tool YAML)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    wall_s: float = Field(10.0, gt=0, description="wall-clock seconds before the process group is killed")
    cpu_s: int = Field(5, ge=1, description="CPU seconds (RLIMIT_CPU)")
    memory_mb: int = Field(1024, ge=64, description="address space (RLIMIT_AS); the interpreter itself needs ~100")
    file_mb: int = Field(4, ge=1, description="largest file the code may write, its output included (RLIMIT_FSIZE)")
    open_files: int = Field(64, ge=16, description="RLIMIT_NOFILE")
    output_chars: int = Field(4000, ge=100, description="characters of output returned (past it, both ends are kept and the middle cut)")
    code_chars: int = Field(100_000, ge=1, description="longest program accepted")
    landlock: bool = Field(True, description="confine writes to the working directory where the kernel has Landlock")


class SandboxError(RuntimeError):
    """The sandbox could not be set up (a missing kernel feature or library), not a fault of the code."""


@dataclass(frozen=True)
class SandboxResult:
    output: str  # stdout and stderr interleaved; past output_chars, its two ends
    exit_code: int | None  # None when killed by a signal
    signal: str | None  # e.g. "SIGSEGV", "SIGKILL"
    timed_out: bool
    truncated: bool  # output cut (too long, or the file-size limit was hit)
    seconds: float

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

    def observation(self) -> str:
        """What the model sees: the output, then a line saying how the run ended unless it was clean."""
        text = self.output.rstrip("\n")
        notes = []
        if self.truncated:
            notes.append("output truncated")
        if self.timed_out:
            notes.append("killed: time limit exceeded")
        elif self.signal == "SIGXCPU" or (self.signal == "SIGKILL" and not self.timed_out):
            notes.append(f"killed by {self.signal} (CPU or memory limit)")
        elif self.signal is not None:
            notes.append(f"crashed: {self.signal}")
        elif self.exit_code not in (0, None):
            notes.append(f"exit code {self.exit_code}")
        if notes:
            text = (text + "\n" if text else "") + "[" + "; ".join(notes) + "]"
        return text or "(no output)"

    def to_dict(self) -> dict:
        return asdict(self)


@cache
def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 where Landlock is missing or disabled."""
    try:
        from py_landlock import get_abi_version

        return int(get_abi_version())
    except Exception:
        return 0


def _environment(workdir: str) -> dict[str, str]:
    """Nothing inherited: no tokens, keys or proxies reach the code."""
    env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8",
           "PYTHONDONTWRITEBYTECODE": "1", "PYTHONIOENCODING": "utf-8", "PYTHONHASHSEED": "0"}
    env.update(dict.fromkeys(_THREAD_VARS, "1"))  # numerical libraries must not start threads
    return env


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(code).name
    except ValueError:
        return f"signal {code}"


def run_python(code: str, limits: SandboxLimits | None = None, python: str | None = None) -> SandboxResult:
    """Run ``code`` under ``limits`` and return what happened (blocking; call it from a thread)."""
    limits = limits or SandboxLimits()
    if len(code) > limits.code_chars:
        return SandboxResult(f"program too long: {len(code)} characters, the limit is {limits.code_chars}",
                             None, None, False, False, 0.0)
    boot_limits = {**limits.model_dump(), "landlock": limits.landlock and landlock_abi() > 0}
    workdir = tempfile.mkdtemp(prefix="verl-trace-sbx-")
    outdir = tempfile.mkdtemp(prefix="verl-trace-sbx-out-")  # outside the code's reach (Landlock)
    out_path = Path(outdir) / "output"
    start = time.monotonic()
    try:
        with open(out_path, "wb") as out:
            proc = subprocess.Popen(
                [python or sys.executable, "-I", "-u", str(BOOT), json.dumps(boot_limits)],
                stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT, cwd=workdir,
                env=_environment(workdir), start_new_session=True, close_fds=True,
            )
            timed_out = False
            try:
                proc.communicate(code.encode("utf-8", "replace"), timeout=limits.wall_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                _kill_group(proc.pid)
                proc.wait()
        seconds = time.monotonic() - start
        size = out_path.stat().st_size
        text = out_path.read_bytes().decode("utf-8", "replace")  # at most file_mb (RLIMIT_FSIZE)
        if proc.returncode == SETUP_FAILED and text.startswith("sandbox setup failed"):
            raise SandboxError(text.strip())
        truncated = len(text) > limits.output_chars or size >= limits.file_mb * 1024 * 1024
        if len(text) > limits.output_chars:  # keep both ends: the start, and the error at the end
            half = (limits.output_chars - len(_CUT)) // 2
            text = text[:half] + _CUT + text[-half:]
        rc = proc.returncode
        return SandboxResult(
            output=text,
            exit_code=rc if rc >= 0 else None,
            signal=_signal_name(-rc) if rc < 0 else None,
            timed_out=timed_out,
            truncated=truncated,
            seconds=seconds,
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(outdir, ignore_errors=True)


def _kill_group(pgid: int) -> None:
    """Kill the child's whole session group (the child cannot fork, but never leave a straggler)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
