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
from .demonstrations import answer_text, search_text
from .settings import ModelSettings
from .world import Question, corpus_texts


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
    initialized model (float32, CPU) whose name embeddings share their updates."""
    tok = build_tokenizer(tokenizer_texts(corpus, questions), vocab_size=settings.vocab_size,
                          template=chat_template(tool_schemas=False))
    names = entity_names(corpus)
    # single_word: a name is matched only as a whole word (never inside a longer one); the space
    # before it stays a token of its own, so a name is the same token wherever it appears.
    tok.add_tokens([AddedToken(n, single_word=True, normalized=False) for n in names])
    model = build_model(tok, hidden=settings.hidden, layers=settings.layers, heads=settings.heads,
                        kv_heads=settings.kv_heads, seed=seed, max_positions=settings.max_positions)
    share_name_updates(model, name_token_ids(tok, names), init_std=settings.name_init_std)
    return tok, model


def save(tokenizer, model, path: Path) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(path)
    model.save_pretrained(path)
    return path


def load(path: Path, corpus: Sequence[str] | None = None):
    """(tokenizer, model) saved by :func:`save` (e.g. the warm start a benchmark reuses), with the
    shared name updates in place again (hooks are not saved)."""
    from transformers import AutoTokenizer, Qwen2ForCausalLM

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no saved model in {path} (config.json missing)")
    tok = AutoTokenizer.from_pretrained(path)
    model = Qwen2ForCausalLM.from_pretrained(path, dtype=torch.float32)
    names = entity_names(corpus if corpus is not None else corpus_texts())
    share_name_updates(model, name_token_ids(tok, names))
    return tok, model


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


def share_name_updates(model: torch.nn.Module, token_ids: Sequence[int], init_std: float | None = None) -> None:
    """Entity names are arbitrary symbols: give all name tokens the same embedding update (their
    mean gradient), so what the model learns about names is shared by all of them, held-out ones
    included, while each keeps its own random identity from initialization (re-drawn with
    ``init_std`` if given). Without it a tiny model learns the training names, not to copy names
    (docs/demo.md has the measurement)."""
    emb = model.get_input_embeddings().weight
    rows = torch.tensor(sorted(token_ids), dtype=torch.long)
    if init_std is not None:
        with torch.no_grad():
            emb[rows] = torch.randn(len(rows), emb.shape[1], generator=torch.Generator().manual_seed(0)) * init_std

    def hook(grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        grad[rows] = grad[rows].mean(0, keepdim=True)
        return grad

    emb.register_hook(hook)
