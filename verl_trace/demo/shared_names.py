"""The demo's model class: a Qwen2 whose entity-name tokens share their updates.

Entity names are arbitrary symbols, and held-out questions are about entities no training
question mentions. A tiny model trained from scratch learns the training names instead of
learning to copy names, unless every name embedding gets the same update: the mean of the name
rows' gradients (docs/demo.md has the measurement). Each name then keeps the random identity it
was initialized with, and what is learned about names holds for held-out ones too.

The sharing lives in the model's forward (``_MeanRowGradient`` on the embedding weight as the
embedding and the tied output layer use it), not in a hook on the parameter, so it survives
whatever wraps the parameters: verl's FSDP2 actor replaces them with sharded ones and gathers them
for each forward, which keeps a forward-time function and loses a parameter hook. The token ids
are a config field (``shared_update_token_ids``), so the model directory carries them;
:func:`save_with_code` adds the two lines of code that let ``AutoModelForCausalLM`` (verl's actor,
``trust_remote_code=True``) build this class from the directory. Without ``trust_remote_code`` the
same directory loads as a plain ``Qwen2ForCausalLM`` with identical outputs, which is how the
rollout server loads it: the sharing matters only for gradients.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Qwen2ForCausalLM

CONFIG_KEY = "shared_update_token_ids"
CODE_FILE = "modeling_shared_names.py"
_CODE = (
    '"""Loads verl_trace.demo.shared_names (AutoModelForCausalLM with trust_remote_code)."""\n'
    "from verl_trace.demo.shared_names import SharedNameQwen2ForCausalLM  # noqa: F401\n"
)


class _MeanRowGradient(torch.autograd.Function):
    """Identity forward; backward gives every row in ``rows`` their mean gradient."""

    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor, rows: tuple[int, ...]) -> torch.Tensor:
        ctx.rows = rows
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        # The ids stay a tuple until here: transformers builds models on the meta device and
        # loads the weights afterwards, which would leave a tensor made in __init__ without data.
        rows = torch.tensor(ctx.rows, dtype=torch.long, device=grad.device)
        grad = grad.clone()
        grad[rows] = grad[rows].mean(0, keepdim=True)
        return grad, None


class _SharedRowsEmbedding(nn.Embedding):
    shared_rows: tuple[int, ...]

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        weight = _MeanRowGradient.apply(self.weight, self.shared_rows)
        return F.embedding(input_ids, weight, self.padding_idx, self.max_norm, self.norm_type,
                           self.scale_grad_by_freq, self.sparse)


class _SharedRowsLinear(nn.Linear):
    shared_rows: tuple[int, ...]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden, _MeanRowGradient.apply(self.weight, self.shared_rows), self.bias)


class SharedNameQwen2ForCausalLM(Qwen2ForCausalLM):
    """``Qwen2ForCausalLM`` + ``config.shared_update_token_ids`` (module docstring). The input
    embedding and the output layer keep their parameters (and the tie between them); only their
    forward changes, by a subclass swap of the two modules, as FSDP2 does when it wraps them."""

    def __init__(self, config: Any):
        super().__init__(config)
        rows = tuple(sorted(set(getattr(config, CONFIG_KEY, None) or [])))
        for module, cls in ((self.model.embed_tokens, _SharedRowsEmbedding), (self.lm_head, _SharedRowsLinear)):
            if rows:
                module.__class__ = cls
                module.shared_rows = rows


def configure(model: Qwen2ForCausalLM, token_ids: Sequence[int]) -> SharedNameQwen2ForCausalLM:
    """``model`` (a plain Qwen2) as a :class:`SharedNameQwen2ForCausalLM` sharing ``token_ids``,
    with the same parameters."""
    config = model.config
    setattr(config, CONFIG_KEY, sorted(set(int(t) for t in token_ids)))
    config.architectures = [SharedNameQwen2ForCausalLM.__name__]
    config.auto_map = {"AutoModelForCausalLM": f"{CODE_FILE[:-3]}.{SharedNameQwen2ForCausalLM.__name__}"}
    shared = SharedNameQwen2ForCausalLM(config)
    shared.load_state_dict(model.state_dict())
    shared.generation_config = model.generation_config
    return shared


def save_with_code(model: SharedNameQwen2ForCausalLM, path: str | Path) -> Path:
    """``save_pretrained`` plus the module ``config.auto_map`` points at."""
    path = Path(path)
    model.save_pretrained(path)
    (path / CODE_FILE).write_text(_CODE)
    return path


def load(path: str | Path) -> SharedNameQwen2ForCausalLM:
    """The model saved by :func:`save_with_code` (float32), without ``trust_remote_code``."""
    return SharedNameQwen2ForCausalLM.from_pretrained(path, dtype=torch.float32)
