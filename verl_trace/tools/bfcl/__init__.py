"""The BFCL v4 multi-turn function-calling task's tools: the installed ``bfcl-eval`` package's
stateful simulators behind verl tools (see :mod:`.tool`; what we use of the package: :mod:`.package`)."""

from .env import BfclEnv, call_string, parse_call
from .package import CATEGORIES, CLASSES, BfclNotInstalled
from .tool import CALLS_KEY, ENV_KEY, SCENARIO_KEY, BfclFunctionTool, environment, scenario, tool_config

__all__ = [
    "CALLS_KEY",
    "CATEGORIES",
    "CLASSES",
    "ENV_KEY",
    "SCENARIO_KEY",
    "BfclEnv",
    "BfclFunctionTool",
    "BfclNotInstalled",
    "call_string",
    "environment",
    "parse_call",
    "scenario",
    "tool_config",
]
