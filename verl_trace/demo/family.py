"""What the demo's job needs to know about its task, in one interface: :class:`DemoTask`.

The job itself (``cli.run``: warm start, verl's trainer, report) is the same for every task; a
``DemoTask`` supplies the task's side: what runs beside the trainer (the search task's retrieval
server), the tokenizer and model, the demonstrations, the parquet rows and tool YAML, the Hydra
overrides that point verl at the task, and how to read its held-out accuracy from verl's metrics.

:class:`SearchTask` is the mini multi-hop world (the default, ``make demo``);
``task_family.FamilyTask`` wraps a task family of ``verl_trace.tasks`` (``--task bfcl|math``).
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

from .demonstrations import Demonstration, generate_demonstrations, search_tool_yaml
from .evaluate import read_validation
from .progress import DemoProgress
from .settings import DemoSettings, verl_config
from .world import MINI_DIR, Question, corpus_texts, load_split

# verl's validation metric that is the search task's held-out accuracy: the mean exact match (``em``,
# from the qa_em reward's extra info) of one greedy chain per question of the data source "mini".
ACCURACY_KEY = "val-aux/mini/em/mean@1"
FORMAT_OK_KEY = "val-aux/mini/format_ok/mean@1"


class DemoTask(ABC):
    """One task of the demo, for one run's ``settings``."""

    name: str
    accuracy_label: str = "held-out accuracy"  # the y axis of accuracy.png
    retrieve_url: str | None = None  # the search server the job's tools call (``$RETRIEVAL_URL``), if any

    def __init__(self, settings: DemoSettings):
        self.settings = settings

    def start(self, out: Path, progress: DemoProgress) -> None:  # noqa: B027 (optional: most tasks need nothing)
        """Start what the task's tools need beside the trainer (stopped by :meth:`stop`)."""

    def stop(self) -> None:  # noqa: B027 (optional, as start)
        """Stop what :meth:`start` started; safe to call on every exit path."""

    @abstractmethod
    def held_out(self) -> Sequence[Any]:
        """The held-out items (verl's validation set), the same for every allocator and seed."""

    @abstractmethod
    def build_model(self) -> tuple[Any, Any]:
        """(tokenizer, randomly initialized model) for the warm start."""

    @abstractmethod
    def demonstrations(self, tokenizer: Any) -> list[Demonstration]:
        """The teacher's trajectories through the real agent loop, tools and reward."""

    @abstractmethod
    def train_rows(self) -> list[dict[str, Any]]: ...

    @abstractmethod
    def held_out_rows(self) -> list[dict[str, Any]]: ...

    @abstractmethod
    def tool_config(self) -> dict[str, Any]:
        """verl's tool YAML (as a mapping) for the job's rollout workers."""

    @abstractmethod
    def overrides(self) -> list[str]:
        """Hydra overrides of ``cpu_tiny.yaml`` specific to the task (reward, agent loop)."""

    @abstractmethod
    def accuracy(self, metrics: dict[str, Any]) -> float | None:
        """Held-out accuracy in one row of verl's metrics (None: no validation in that row)."""

    @abstractmethod
    def read_validation(self, path: Path, metrics: dict[str, Any]) -> dict[str, float]:
        """What the report adds to verl's accuracy from one validation: its dump (``path``) and
        metrics row; at least ``questions`` and ``standard_error``."""

    def fingerprint(self) -> dict[str, Any]:
        """What the task adds to the warm start's fingerprint."""
        return {}


class SearchTask(DemoTask):
    """The mini multi-hop world with the BM25 retrieval server (``recipes/search_r1``)."""

    name = "search"
    accuracy_label = "held-out accuracy (EM)"

    def __init__(self, settings: DemoSettings, retrieve_url: str | None = None):
        super().__init__(settings)
        self.retrieve_url = retrieve_url
        self.server = None

    def start(self, out: Path, progress: DemoProgress) -> None:
        if self.retrieve_url is not None:  # a caller's server (the benchmark shares one between runs)
            return
        from ..tools.retrieval_server.process import RetrievalServerProcess

        self.server = RetrievalServerProcess(MINI_DIR / "corpus.jsonl", Path(out) / "retrieval_server.log").start()
        self.retrieve_url = self.server.retrieve_url
        progress.log(f"retrieval server: {self.server.url} (BM25 over {MINI_DIR / 'corpus.jsonl'})")

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    @cached_property
    def _held_out(self) -> list[Question]:
        return held_out_questions(self.settings)

    def held_out(self) -> list[Question]:
        return self._held_out

    def build_model(self) -> tuple[Any, Any]:
        from . import model as model_io

        return model_io.build(corpus_texts(MINI_DIR), load_split("train"), self.settings.model, self.settings.seed)

    def demonstrations(self, tokenizer: Any) -> list[Demonstration]:
        s = self.settings
        return generate_demonstrations(load_split("train"), tokenizer, verl_config(s.task), self.retrieve_url, s,
                                       progress=False)

    def train_rows(self) -> list[dict[str, Any]]:
        return [q.row for q in load_split("train")]

    def held_out_rows(self) -> list[dict[str, Any]]:
        return [q.row for q in self._held_out]

    def tool_config(self) -> dict[str, Any]:
        return search_tool_yaml(self.settings.task.topk)

    def overrides(self) -> list[str]:
        return [f"actor_rollout_ref.rollout.multi_turn.max_user_turns={self.settings.task.max_turns}",
                "reward.custom_reward_function.reward_kwargs.format_score=0.0"]  # reward = exact match

    def accuracy(self, metrics: dict[str, Any]) -> float | None:
        return metrics.get(ACCURACY_KEY)

    def read_validation(self, path: Path, metrics: dict[str, Any]) -> dict[str, float]:
        rec = read_validation(path, self._held_out) if Path(path).is_file() else {}
        value = metrics.get(FORMAT_OK_KEY)
        return {**rec, "format_ok": float(value) if isinstance(value, int | float) else float("nan")}


def held_out_questions(settings: DemoSettings) -> list[Question]:
    """The search task's held-out set: all test questions, or a fixed sample of them (the same for
    every allocator and seed)."""
    test = load_split("test")
    n = min(settings.eval.questions, len(test))
    return random.Random(0).sample(test, n) if n < len(test) else test


def demo_task(settings: DemoSettings, retrieve_url: str | None = None) -> DemoTask:
    """The :class:`DemoTask` of ``settings.task_name``."""
    if settings.task_name == "search":
        return SearchTask(settings, retrieve_url)
    from ..tasks import get_task
    from .task_family import FamilyTask

    return FamilyTask(settings, get_task(settings.task_name))
