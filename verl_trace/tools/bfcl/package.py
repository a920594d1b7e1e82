"""Where the installed ``bfcl-eval`` package keeps what we use, and loading it.

We use its files, never copies: the multi-turn questions and ground truth under
``bfcl_eval/data/``, the function docs under ``data/multi_turn_func_doc/``, and the executable
simulators under ``bfcl_eval/eval_checker/multi_turn_eval/func_source_code/``. Those simulators
and the multi-turn checker import only the standard library and ``mpmath`` (which sympy already
brings), so the package is installed with ``pip install --no-deps`` and its declared heavy
dependencies (model SDKs, pandas, a ``numpy==1.26.4`` pin, ...) never enter the environment.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
from functools import cache
from pathlib import Path
from typing import Any

PINNED = "bfcl-eval==2026.3.23"
INSTALL_HINT = f"pip install --no-deps {PINNED}   (its declared dependencies are not needed; see recipes/bfcl/README.md)"
# The multi-turn categories we support. miss_func is left out: it adds functions to the tool list in
# the middle of a conversation, which a token-level continuation cannot re-render (docs/tasks.md).
CATEGORIES = ("multi_turn_base", "multi_turn_miss_param", "multi_turn_long_context")
# The multi-turn simulator classes (bfcl_eval.constants.executable_backend_config names them all,
# memory and web-search back-ends included, which need heavy packages; these eight do not).
CLASSES = ("GorillaFileSystem", "MathAPI", "MessageAPI", "TwitterAPI", "TicketAPI", "TradingBot",
           "TravelAPI", "VehicleControlAPI")


class BfclNotInstalled(ImportError):
    def __init__(self) -> None:
        super().__init__(f"the BFCL task needs the bfcl-eval package: {INSTALL_HINT}")


@cache
def package_dir() -> Path:
    spec = importlib.util.find_spec("bfcl_eval")
    if spec is None or not spec.submodule_search_locations:
        raise BfclNotInstalled()
    return Path(next(iter(spec.submodule_search_locations)))


def data_dir() -> Path:
    return package_dir() / "data"


def _jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _check_category(category: str) -> None:
    if category not in CATEGORIES:
        raise ValueError(f"BFCL category {category!r} is not supported; choose from {list(CATEGORIES)}")


@cache
def load_entries(category: str) -> tuple[dict[str, Any], ...]:
    """The category's entries (id, question: list of turns, initial_config, involved_classes, ...)."""
    _check_category(category)
    return tuple(_jsonl(data_dir() / f"BFCL_v4_{category}.json"))


@cache
def load_ground_truth(category: str) -> dict[str, list[list[str]]]:
    """entry id -> per user turn, the ground-truth calls as BFCL writes them (``cd(folder='x')``)."""
    _check_category(category)
    return {e["id"]: e["ground_truth"] for e in _jsonl(data_dir() / "possible_answer" / f"BFCL_v4_{category}.json")}


def category_of(entry_id: str) -> str:
    return entry_id.rsplit("_", 1)[0]


@cache
def function_docs(class_name: str) -> tuple[dict[str, Any], ...]:
    """BFCL's function docs of one simulator class."""
    from bfcl_eval.constants.executable_backend_config import MULTI_TURN_FUNC_DOC_FILE_MAPPING

    if class_name not in CLASSES:
        raise ValueError(f"unknown BFCL class {class_name!r}; known: {list(CLASSES)}")
    return tuple(_jsonl(data_dir() / "multi_turn_func_doc" / MULTI_TURN_FUNC_DOC_FILE_MAPPING[class_name]))


@cache
def function_index() -> dict[str, tuple[str, dict[str, Any]]]:
    """function name -> (class, doc) over all eight classes (names are unique across them)."""
    index: dict[str, tuple[str, dict[str, Any]]] = {}
    for cls in CLASSES:
        for doc in function_docs(cls):
            if doc["name"] in index:
                raise ValueError(f"BFCL function {doc['name']!r} is defined by {index[doc['name']][0]} and {cls}")
            index[doc["name"]] = (cls, doc)
    return index


def simulator_class(class_name: str) -> type:
    from bfcl_eval.constants.executable_backend_config import CLASS_FILE_PATH_MAPPING

    if class_name not in CLASSES:
        raise ValueError(f"unknown BFCL class {class_name!r}; known: {list(CLASSES)}")
    return getattr(importlib.import_module(CLASS_FILE_PATH_MAPPING[class_name]), class_name)


def is_stateless(class_name: str) -> bool:
    from bfcl_eval.constants.executable_backend_config import STATELESS_CLASSES

    return class_name in STATELESS_CLASSES
