"""The demo for a task family of ``verl_trace.tasks`` (``--task bfcl|math``): :class:`FamilyTask`,
the :class:`~.family.DemoTask` that adapts a :class:`~verl_trace.tasks.Task` to the demo's tiny
model; the job itself (warm start, verl's trainer, report) is the search demo's code.

All task knowledge comes from the Task: its rows, tools, reward and scripted teacher, its rollout
settings. What is added here is only what a tiny model trained from scratch needs:

* **tokenizer** (``build_model``): a byte-level BPE trained on the task's own texts (every message
  of the training rows, the tools' names and descriptions, and one perfect teacher chain per
  training row, calls and observations included), with every tool name as one token. Prompts
  render the tools by name only (``tiny.chat_template(tool_schemas=False)``): BFCL's full JSON
  schemas would be thousands of tokens per prompt, and a model trained from scratch learns the
  functions from the demonstrations anyway;
* **demonstrations**: the task's teacher, erring at the demo's ``family.mistake_rate``, plays the
  training rows through the real agent loop, tools and reward (``demonstrations.play``), as the
  search teacher does;
* **held-out accuracy**: verl's validation metric ``val-core/<data source>/reward/mean@1`` (the
  task's reward on one greedy chain per held-out row), averaged over the data sources weighted by
  their rows (BFCL's mini set mixes ``multi_turn_base`` and ``miss_param``).
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tokenizers import AddedToken

from ..rollout import TreePrompt, compute_score_reward
from ..rollout.agent_loop import USER_TURNS_KEY
from ..tasks import Task, loop_kwargs
from ..testing.tiny import build_model as tiny_model
from ..testing.tiny import build_tokenizer, chat_template
from . import shared_names
from .demonstrations import Demonstration, play
from .family import DemoTask
from .settings import DemoSettings, verl_config


def messages(row: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every chat message of a row: its prompt and its later user turns."""
    later = (row.get("extra_info") or {}).get(USER_TURNS_KEY) or []
    return [*row["prompt"], *(m for turn in later for m in turn)]


def tool_texts(tools: Sequence[Any]) -> tuple[list[str], list[str]]:
    """(names, descriptions) of the task's tools."""
    schemas = [t.tool_schema.function for t in tools]
    return [s.name for s in schemas], [s.description or "" for s in schemas]


def _tokenizer(texts: Sequence[str], names: Sequence[str], vocab_size: int):
    tok = build_tokenizer(texts, vocab_size=vocab_size, template=chat_template(tool_schemas=False))
    # one token per tool name, matched only as a whole word (as the search demo's entity names)
    tok.add_tokens([AddedToken(n, single_word=True, normalized=False) for n in names])
    return tok


def as_loaded(tokenizer: Any, config: Any) -> Any:
    """``tokenizer`` as verl's trainer will load it from the warm start's directory. transformers'
    ``AutoTokenizer`` loads a tokenizer saved next to a Qwen2 config as its ``Qwen2Tokenizer``, with
    Qwen's own pre-tokenizer (every digit a token of its own), not the one it was trained with: the
    demonstrations must be tokenized as the trainer's rollouts will be (measured: a warm start
    trained on the other tokenization wrote broken tool calls in verl's rollouts)."""
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        config.save_pretrained(tmp)
        return AutoTokenizer.from_pretrained(tmp)


class FamilyTask(DemoTask):
    """A task family of ``verl_trace.tasks`` in the demo (module docstring)."""

    accuracy_label = "held-out accuracy (the task's reward)"

    def __init__(self, settings: DemoSettings, task: Task):
        super().__init__(settings)
        self.task, self.name = task, task.name
        val = task.rows("val")
        n = min(settings.eval.questions, len(val))
        self._held_out = random.Random(0).sample(val, n) if n < len(val) else val  # the same for every run
        self._tools: list[Any] | None = None

    def tools(self) -> list[Any]:
        if self._tools is None:
            self._tools = self.task.tools()
        return self._tools

    def episode(self):
        """The agent loop's config slice: the demo's lengths and turn limit, the task's other settings."""
        return verl_config(self.settings.task, multi_turn=dict(self.task.rollout.get("multi_turn", {})))

    def train_rows(self) -> list[dict[str, Any]]:
        """The training rows (the first ``family.train_rows`` of them, if set)."""
        return self.task.rows("train")[: self.settings.family.train_rows]

    def _play(self, rows: Sequence[dict[str, Any]], prefix: str, policy: Any, tokenizer: Any):
        s = self.settings
        prompts = [TreePrompt(f"{prefix}{i}", loop_kwargs(r)) for i, r in enumerate(rows)]
        return asyncio.run(play(prompts, policy, tokenizer, self.episode(), self.tools(),
                                compute_score_reward(self.task.compute_score, tokenizer), s.task.max_turns, s.seed,
                                progress=False))

    def build_model(self) -> tuple[Any, Any]:
        s, train = self.settings, self.task.rows("train")  # the vocabulary covers every training row
        names, descriptions = tool_texts(self.tools())
        texts = [m["content"] for r in train for m in messages(r) if isinstance(m.get("content"), str)]
        texts += [f"Tools: {' '.join(names)}", *descriptions]
        # The protocol strings (calls, observations) come from the teacher itself, one perfect
        # chain per training row, played with a first tokenizer trained on the texts above.
        first = _tokenizer(texts, names, s.model.vocab_size)
        played = self._play(train, "vocab-", self.task.teacher(seed=s.seed), first)
        texts += [first.decode(out.response_ids, skip_special_tokens=False) for _, out in played]
        tok = _tokenizer(texts, names, s.model.vocab_size)
        m = s.model
        model = tiny_model(tok, hidden=m.hidden, layers=m.layers, heads=m.heads, kv_heads=m.kv_heads, seed=s.seed,
                           max_positions=m.max_positions)
        return as_loaded(tok, model.config), shared_names.configure(model, [])  # no name rows shared here

    def demonstrations(self, tokenizer: Any) -> list[Demonstration]:
        """``sft.demonstrations`` teacher chains over the training rows (each row once before any
        repeats), the teacher erring at ``family.mistake_rate``."""
        s, train = self.settings, self.train_rows()
        rng = random.Random(s.seed)
        order: list[int] = []
        while len(order) < s.sft.demonstrations:
            order += rng.sample(range(len(train)), min(len(train), s.sft.demonstrations - len(order)))
        teacher = self.task.teacher(seed=s.seed, mistake_rate=s.family.mistake_rate)
        played = self._play([train[i] for i in order], "demo-", teacher, tokenizer)
        ids = {f"demo-{k}": f"train-{i}" for k, i in enumerate(order)}
        return [Demonstration(ids[uid], list(out.prompt_ids), list(out.response_ids), list(out.response_mask),
                              float(out.reward_score)) for uid, out in played]

    def held_out(self) -> list[dict[str, Any]]:
        return self._held_out

    def held_out_rows(self) -> list[dict[str, Any]]:
        return self._held_out

    def tool_config(self) -> dict[str, Any]:
        return self.task.tool_config

    def overrides(self) -> list[str]:
        """The task's reward function and agent-loop settings (then the demo's turn limit)."""
        multi_turn = {**self.task.rollout.get("multi_turn", {}), "max_assistant_turns": self.settings.task.max_turns}
        return [f"reward.custom_reward_function.path={self.task.reward_path}",
                f"reward.custom_reward_function.name={self.task.reward_name}",
                *(f"actor_rollout_ref.rollout.multi_turn.{k}={'null' if v is None else json.dumps(v)}"
                  for k, v in multi_turn.items())]

    def accuracy_keys(self) -> dict[str, int]:
        """verl's held-out metric of each data source -> its number of held-out rows."""
        counts = Counter(r["data_source"] for r in self._held_out)
        return {f"val-core/{ds}/reward/mean@1": n for ds, n in counts.items()}

    def accuracy(self, metrics: dict[str, Any]) -> float | None:
        keys = self.accuracy_keys()
        if not all(isinstance(metrics.get(k), int | float) for k in keys):
            return None
        return sum(float(metrics[k]) * n for k, n in keys.items()) / sum(keys.values())

    def read_validation(self, path: Path, metrics: dict[str, Any]) -> dict[str, float]:
        """The dump's mean reward (``dump_accuracy``, which must equal verl's metric) and the
        binomial standard error."""
        n = len(self._held_out)
        rec: dict[str, float] = {"questions": float(n)}
        if Path(path).is_file():
            scores = [float(json.loads(x)["score"]) for x in Path(path).read_text().splitlines() if x.strip()]
            rec.update(questions=float(len(scores)), dump_accuracy=sum(scores) / max(1, len(scores)))
        acc = self.accuracy(metrics)
        rec["standard_error"] = math.sqrt(acc * (1 - acc) / rec["questions"]) if acc is not None and n else float("nan")
        return rec

    def fingerprint(self) -> dict[str, Any]:
        return {"task_name": self.name, "family": self.settings.family.model_dump()}
