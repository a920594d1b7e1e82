"""The short supervised warm start on the demonstrations: AdamW, linear warm-up, cosine decay.

The loss is the mean next-token loss on the tokens the teacher generated (``response_mask == 1``)
plus ``context_weight`` times the mean loss on the rest of the sequence (question, tool
observations, chat scaffolding). The second term is what makes a model trained from scratch
learn to copy names within a few hundred steps: passages repeat their title's name in the text
(``Doc 1(Title: "X") X was born in ...``), which is exactly the pattern that builds the copying
(induction) circuit the agent needs to put entities from the question and the passages into its
queries and answers. Measured in docs/demo.md."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

import torch

from .demonstrations import Demonstration
from .sequences import collate, next_token_logprobs, sequence_weights
from .settings import SFTSettings


def lr_lambda(warmup: int, total: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


def batches(demos: Sequence[Demonstration], batch_size: int, steps: int, seed: int):
    """``steps`` batches: epochs of shuffled demonstrations, each batch of similar lengths (less padding)."""
    rng = random.Random(seed)
    made = 0
    while made < steps:
        order = list(range(len(demos)))
        rng.shuffle(order)
        chunk = 16 * batch_size  # sort within chunks by length, then shuffle the batches
        groups = []
        for i in range(0, len(order), chunk):
            part = sorted(order[i : i + chunk], key=lambda j: len(demos[j].prompt_ids) + len(demos[j].response_ids))
            groups += [part[k : k + batch_size] for k in range(0, len(part), batch_size)]
        rng.shuffle(groups)
        for g in groups:
            if made == steps:
                return
            yield [demos[j] for j in g]
            made += 1


class Renamer:
    """Consistently renames the entity names of one sequence to names drawn at random.

    Names are arbitrary symbols, and held-out questions are about entities no training question
    mentions. Trained on the demonstrations as they are, a tiny model learns which names go with
    which answers; with every name of a demonstration replaced by a random one (the same
    replacement everywhere in the sequence, so question, queries, passages and answer still agree)
    it can only succeed by searching and copying, which is what transfers to unseen entities."""

    def __init__(self, name_ids: Sequence[int], seed: int):
        self.name_ids = torch.tensor(sorted(name_ids), dtype=torch.long)
        self.is_name = torch.zeros(int(self.name_ids.max()) + 1, dtype=torch.bool)
        self.is_name[self.name_ids] = True
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        ids = ids.clone()
        for row in ids:
            known = row < self.is_name.numel()
            mask = known.clone()
            mask[known] = self.is_name[row[known]]
            present = torch.unique(row[mask])
            if not present.numel():
                continue
            new = self.name_ids[torch.randperm(len(self.name_ids), generator=self.gen)[: present.numel()]]
            lookup = dict(zip(present.tolist(), new.tolist()))
            row[mask] = torch.tensor([lookup[t] for t in row[mask].tolist()], dtype=torch.long)
        return ids


def train_sft(model: torch.nn.Module, demos: Sequence[Demonstration], settings: SFTSettings, pad_id: int, *,
              name_ids: Sequence[int] = (), seed: int = 0,
              on_step: Callable[[int, float], None] | None = None) -> list[float]:
    """Train ``model`` in place; returns the loss per step. ``name_ids`` are the entity-name tokens
    that :class:`Renamer` shuffles (``settings.rename``). ``on_step(step, loss)`` reports progress."""
    if not demos:
        raise ValueError("no demonstrations to train on")
    rename = Renamer(name_ids, seed) if settings.rename and len(name_ids) else None
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.01, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(settings.warmup, settings.steps))
    model.train()
    losses = []
    for step, batch in enumerate(batches(demos, settings.batch_size, settings.steps, seed)):
        seq = collate([d.prompt_ids for d in batch], [d.response_ids for d in batch], pad_id)
        if rename is not None:
            seq.input_ids = rename(seq.input_ids)
        gen, ctx = sequence_weights(seq, [d.response_mask for d in batch])
        logp = next_token_logprobs(model, seq)
        loss = -(logp * gen).sum() / gen.sum().clamp(min=1)
        if settings.context_weight:
            loss = loss - settings.context_weight * (logp * ctx).sum() / ctx.sum().clamp(min=1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(step, losses[-1])
    model.eval()
    return losses
