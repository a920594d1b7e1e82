"""One BFCL environment: the entry's simulator instances, built from its ``initial_config``.

A trajectory owns one :class:`BfclEnv` (kept in ``tool_state(agent_data)``, so rollout-tree
branches each continue with a deep copy). Calls go straight to the simulator's public methods
with the model's keyword arguments; results and errors are formatted the way BFCL's own executor
formats them (``bfcl_eval.eval_checker.multi_turn_eval.multi_turn_utils``), so the model sees what
BFCL's evaluation would show it. :func:`call_string` writes a call the way BFCL's checker reads
model calls back (``name(arg='value', n=2)``).
"""

from __future__ import annotations

import ast
import copy
import inspect
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from . import package

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class BfclEnv:
    def __init__(self, initial_config: Mapping[str, Any], involved_classes: Sequence[str], long_context: bool = False):
        self.instances: dict[str, Any] = {}
        self.owner: dict[str, str] = {}  # public method -> class
        for cls_name in involved_classes:
            instance = package.simulator_class(cls_name)()
            if not package.is_stateless(cls_name):
                instance._load_scenario(copy.deepcopy(dict(initial_config.get(cls_name, {}))), long_context=long_context)
            self.instances[cls_name] = instance
            for name, _ in inspect.getmembers(instance, predicate=inspect.ismethod):
                if not name.startswith("_"):
                    self.owner[name] = cls_name

    def execute(self, name: str, arguments: Mapping[str, Any]) -> str:
        """Run one call; never raises (errors come back as BFCL's ``Error during execution: ...``)."""
        if name not in self.owner:
            return f"Error during execution: function '{name}' is not available in this environment."
        try:
            result = getattr(self.instances[self.owner[name]], name)(**dict(arguments))
        except Exception as e:
            return f"Error during execution: {e}"
        return format_result(result)

    def state(self) -> dict[str, dict[str, Any]]:
        """Each instance's public attributes (what BFCL's state checker compares)."""
        return {cls: {k: v for k, v in vars(inst).items() if not k.startswith("_")} for cls, inst in self.instances.items()}


def format_result(result: Any) -> str:
    if isinstance(result, str):
        return result
    if isinstance(result, dict):
        try:
            return json.dumps(result)
        except (TypeError, ValueError):
            return str(result)
    return str(result)


def call_string(name: str, arguments: Mapping[str, Any]) -> str:
    """``name(k=v, ...)`` with Python literals, as BFCL's decoded model calls look."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"not a function name: {name!r}")
    for key in arguments:
        if not _NAME.fullmatch(str(key)):
            raise ValueError(f"not an argument name: {key!r}")
    return f"{name}({', '.join(f'{k}={v!r}' for k, v in arguments.items())})"


def parse_call(call: str, env: BfclEnv | None = None) -> tuple[str, dict[str, Any]]:
    """A BFCL ground-truth call string -> (name, keyword arguments). Positional arguments (BFCL
    writes ``sort('report.pdf')``) are bound to parameter names with the simulator method's
    signature, which needs ``env``."""
    node = ast.parse(call.strip(), mode="eval").body
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
        raise ValueError(f"not a plain function call: {call!r}")
    name = node.func.id
    kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords}
    if node.args:
        if env is None or name not in env.owner:
            raise ValueError(f"{call!r} has positional arguments; need the environment that defines {name!r}")
        method = getattr(env.instances[env.owner[name]], name)
        bound = inspect.signature(method).bind_partial(*[ast.literal_eval(a) for a in node.args], **kwargs)
        kwargs = dict(bound.arguments)
    return name, kwargs
