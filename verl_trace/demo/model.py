"""The demo's tokenizer and tiny Qwen2, built locally (``verl_trace.testing.tiny``): nothing is downloaded.

The tokenizer is trained on the corpus, the training questions and the exact strings the agent
produces (tool calls, answers), so the protocol costs few tokens. Its chat template is ChatML with
hermes tool calls, rendering the tools by name only (``tiny.chat_template(tool_schemas=False)``):
a model trained from scratch learns the tool from the demonstrations, and a JSON schema in every
prompt would cost more compute than anything else in the sequence. Test questions are not in its training text; their entities are in the corpus, as any
retrieval-augmented model's vocabulary would cover them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers import AddedToken

from ..testing.tiny import build_model, build_tokenizer, chat_template
from . import shared_names
from .demonstrations import answer_text, search_text
from .settings import ModelSettings
from .world import Question


def tokenizer_texts(corpus: Sequence[str], questions: Sequence[Question]) -> list[str]:
    """Corpus, training questions and the protocol strings the agent writes."""
    texts = list(corpus)
    for q in questions:
        texts.append(f"Question: {q.question}")
        texts += [search_text(hop["query"]) for hop in q.chain] + [answer_text(q.answers[0])]
    return texts


def entity_names(corpus: Sequence[str]) -> list[str]:
    """Every passage title: the world's entities (and its landmarks' and products' names)."""
    return sorted({text.split("\n", 1)[0].strip().strip('"') for text in corpus})


def build(corpus: Sequence[str], questions: Sequence[Question], settings: ModelSettings, seed: int):
    """(tokenizer, model): a fresh BPE tokenizer with one token per entity name, and a randomly
    initialized model (float32, CPU) whose name embeddings share their updates (``shared_names``)."""
    tok = build_tokenizer(tokenizer_texts(corpus, questions), vocab_size=settings.vocab_size,
                          template=chat_template(tool_schemas=False))
    names = entity_names(corpus)
    # single_word: a name is matched only as a whole word (never inside a longer one); the space
    # before it stays a token of its own, so a name is the same token wherever it appears.
    tok.add_tokens([AddedToken(n, single_word=True, normalized=False) for n in names])
    model = build_model(tok, hidden=settings.hidden, layers=settings.layers, heads=settings.heads,
                        kv_heads=settings.kv_heads, seed=seed, max_positions=settings.max_positions)
    ids = name_token_ids(tok, names)
    init_name_embeddings(model, ids, settings.name_init_std)
    return tok, shared_names.configure(model, ids)


def save(tokenizer, model, path: Path) -> Path:
    """Tokenizer and model (with the code that lets verl's actor load the model class)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(path)
    shared_names.save_with_code(model, path)
    return path


def load(path: Path):
    """(tokenizer, model) saved by :func:`save` (e.g. the warm start the RL phase starts from)."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no saved model in {path} (config.json missing)")
    return AutoTokenizer.from_pretrained(path), shared_names.load(path)


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def name_token_ids(tokenizer, names: Sequence[str]) -> list[int]:
    """The token id of each entity name (each must be a single token)."""
    ids = []
    for n in names:
        toks = tokenizer.encode(n, add_special_tokens=False)
        if len(toks) != 1:
            raise ValueError(f"entity name {n!r} is not one token in this tokenizer")
        ids.append(toks[0])
    return sorted(set(ids))


def init_name_embeddings(model: torch.nn.Module, token_ids: Sequence[int], std: float) -> None:
    """Give every name a random identity of scale ``std`` (they keep it: their updates are shared)."""
    emb = model.get_input_embeddings().weight
    rows = torch.tensor(sorted(token_ids), dtype=torch.long)
    with torch.no_grad():
        emb[rows] = torch.randn(len(rows), emb.shape[1], generator=torch.Generator().manual_seed(0)) * std
