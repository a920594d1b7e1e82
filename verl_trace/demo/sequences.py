"""Padded (prompt + response) batches and next-token log-probabilities for the supervised phase.

A row is ``prompt_ids + response_ids``, right-padded, so positions are plain ``0..L-1``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from verl.utils.torch_functional import logprobs_from_logits


@dataclass
class SeqBatch:
    input_ids: torch.Tensor  # (B, L) prompt + response, right-padded
    attention_mask: torch.Tensor  # (B, L)
    prompt_lens: torch.Tensor  # (B,)


def collate(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_id: int) -> SeqBatch:
    lens = [len(p) + len(r) for p, r in zip(prompts, responses)]
    width = max(lens) + 1  # one spare column so every response position has a next-token target
    ids = torch.full((len(lens), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(lens), width), dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        row = list(p) + list(r)
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        attn[i, : len(row)] = 1
    return SeqBatch(ids, attn, torch.tensor([len(p) for p in prompts]))


def next_token_logprobs(model: torch.nn.Module, batch: SeqBatch) -> torch.Tensor:
    """(B, L-1) log-probability of every next token (position ``t`` predicts token ``t + 1``)."""
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    return logprobs_from_logits(out.logits[:, :-1].float(), batch.input_ids[:, 1:])


def sequence_weights(batch: SeqBatch, response_masks: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(generated, context) 0/1 weights aligned with :func:`next_token_logprobs`: which predicted
    tokens the policy generated, and which are prompt or environment tokens (the first prompt
    token is never predicted; padding is neither)."""
    gen = torch.zeros(batch.input_ids.shape[0], batch.input_ids.shape[1] - 1)
    ctx = torch.zeros_like(gen)
    for i, mask in enumerate(response_masks):
        p = int(batch.prompt_lens[i])
        ctx[i, : p - 1] = 1.0
        m = torch.tensor(list(mask), dtype=torch.float32)
        gen[i, p - 1 : p - 1 + len(m)] = m
        ctx[i, p - 1 : p - 1 + len(m)] = 1.0 - m
    return gen, ctx
