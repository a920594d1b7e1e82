"""A sandboxed Python runner for code-interpreter tools (see :mod:`.run` and ``boot.py``)."""

from .run import SandboxError, SandboxLimits, SandboxResult, landlock_abi, run_python

__all__ = ["SandboxError", "SandboxLimits", "SandboxResult", "landlock_abi", "run_python"]
