"""``python(code)``: a verl ``BaseTool`` that runs model-written Python in the sandbox.

Loaded from a tool config YAML::

    tools:
      - class_name: verl_trace.tools.python_tool.PythonTool
        config:
          type: native
          max_concurrency: 8        # sandboxed interpreters running at once in one rollout process
          limits: {wall_s: 10, cpu_s: 5, memory_mb: 1024, file_mb: 4, output_chars: 4000}
        # tool_schema may be omitted: the default is python(code: string)

Every call runs in a fresh interpreter (``verl_trace.tools.sandbox``): nothing persists between
calls, so the tool has no per-trajectory state to branch (a branch of a rollout tree re-runs
nothing and shares nothing). The model must print what it wants to see; a bare expression on the
last line is printed too. Whatever the code does, the observation is its output plus a note on how
it ended (time limit, crash, exit code); the rollout worker is never at risk.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from verl.tools.base_tool import BaseTool
from verl.tools.schemas import OpenAIFunctionToolSchema, ToolResponse

from ..extras import require_extra
from .sandbox import SandboxLimits, run_python

require_extra("math", "the Python tool's sandbox (verl_trace.tools.python_tool)", ("pyseccomp", "py_landlock"))

DEFAULT_SCHEMA = {
    "type": "function",
    "function": {
        "name": "python",
        "description": "Runs a Python program in a fresh interpreter and returns what it prints (the value of a "
        "final expression is printed too). sympy and numpy are available; no files or network outside it.",
        "parameters": {
            "type": "object",
            "properties": {"code": {"type": "string", "description": "The Python program to run."}},
            "required": ["code"],
        },
    },
}


class PythonToolConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: str = "native"
    max_concurrency: int = Field(default_factory=lambda: max(1, os.cpu_count() or 1), ge=1)
    limits: SandboxLimits = SandboxLimits()


class PythonTool(BaseTool):
    def __init__(self, config: dict, tool_schema: OpenAIFunctionToolSchema | None = None):
        try:
            self.settings = PythonToolConfig.model_validate(config or {})
        except ValidationError as e:
            raise ValueError(f"PythonTool config: {e}") from e
        schema = tool_schema or OpenAIFunctionToolSchema.model_validate(DEFAULT_SCHEMA)
        with contextlib.redirect_stdout(io.StringIO()):  # BaseTool prints its schema
            super().__init__(config, schema)
        self._slots: dict[asyncio.AbstractEventLoop, asyncio.Semaphore] = {}

    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if loop not in self._slots:
            self._slots[loop] = asyncio.Semaphore(self.settings.max_concurrency)
        return self._slots[loop]

    async def execute(self, instance_id: str, parameters: dict[str, Any], **kwargs: Any) -> tuple[ToolResponse, float, dict]:
        code = parameters.get("code")
        if not isinstance(code, str) or not code.strip():
            return ToolResponse(text="Error: `code` must be a non-empty string of Python."), 0.0, {"sandbox_error": 1}
        async with self._semaphore():
            result = await asyncio.to_thread(run_python, code, self.settings.limits)
        metrics = {"exit_code": result.exit_code, "timed_out": result.timed_out, "seconds": result.seconds}
        return ToolResponse(text=result.observation()), 0.0, metrics
