"""A tiny Qwen2-architecture causal LM and a locally trained tokenizer, built without any download.

Tests, the CPU demo and the benchmarks need a real model and a real tokenizer with a chat
template that verl's agent loop and its hermes tool-call parser understand. Nothing can be
downloaded here, so both are built from text: a byte-level BPE tokenizer trained with
``tokenizers`` (ChatML special tokens; the tool-call and answer tags as single added tokens so a
small model can emit them) and a randomly initialized ``Qwen2ForCausalLM``.

Head dim is kept >= 32 (vLLM's CPU attention supports 32, 64, 80, ...), so the same directory can
also be served by the vLLM CPU build.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TAGS = ["<tool_call>", "</tool_call>", "<answer>", "</answer>", "<think>", "</think>"]

# ChatML with hermes-style tools, in the shape Qwen models use: tool schemas in the system block,
# calls as <tool_call>{"name": ..., "arguments": ...}</tool_call>, tool results as a `tool` turn.
_TOOLS_SCHEMAS = r"""{{- '# Tools\n<tools>\n' -}}
{%- for tool in tools -%}{{- tool | tojson -}}{{- '\n' -}}{%- endfor -%}
{{- '</tools>\nCall a tool as <tool_call>{"name": NAME, "arguments": ARGS}</tool_call><|im_end|>\n' -}}"""
# Tool names only: for models trained from scratch, which learn the tools from data and for which
# every prompt token costs (the CPU demo); same ChatML turns and hermes calls otherwise.
_TOOLS_NAMES = r"""{{- 'Tools:' -}}{%- for tool in tools -%}{{- ' ' + tool.function.name -}}{%- endfor -%}{{- '<|im_end|>\n' -}}"""
_TEMPLATE = r"""
{%- if tools -%}
{{- '<|im_start|>system\n' -}}
{%- if messages[0].role == 'system' -%}{{- messages[0].content + '\n\n' -}}{%- endif -%}
TOOLS_BLOCK
{%- elif messages[0].role == 'system' -%}
{{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' -}}
{%- endif -%}
{%- for m in messages -%}
{%- if not (loop.first and m.role == 'system') -%}
{{- '<|im_start|>' + m.role + '\n' -}}
{%- if m.content is string -%}{{- m.content -}}{%- endif -%}
{%- if m.tool_calls -%}{%- for tc in m.tool_calls -%}
{{- '<tool_call>{"name": "' + tc.function.name + '", "arguments": ' -}}
{%- if tc.function.arguments is string -%}{{- tc.function.arguments -}}{%- else -%}{{- tc.function.arguments | tojson -}}{%- endif -%}
{{- '}</tool_call>' -}}
{%- endfor -%}{%- endif -%}
{{- '<|im_end|>\n' -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}
"""


def chat_template(tool_schemas: bool = True) -> str:
    """The ChatML template, rendering the tools as full JSON schemas or as their names only."""
    return _TEMPLATE.replace("TOOLS_BLOCK", _TOOLS_SCHEMAS if tool_schemas else _TOOLS_NAMES)


CHAT_TEMPLATE = chat_template(True)


def build_tokenizer(texts: Iterable[str], vocab_size: int = 1024, template: str = CHAT_TEMPLATE):
    """Train a byte-level BPE tokenizer on ``texts`` (and the chat ``template``) and wrap it for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 300:
        raise ValueError("vocab_size must be >= 300 (256 byte symbols plus specials and merges)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts) + [template], trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=SPECIAL[1:],
    )
    fast.add_tokens(TAGS)
    fast.chat_template = template
    return fast


def build_model(tokenizer, hidden: int = 64, layers: int = 2, heads: int = 2, kv_heads: int = 1, seed: int = 0, max_positions: int = 4096):
    """A randomly initialized Qwen2ForCausalLM sized for ``tokenizer``."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    if hidden % heads or heads % kv_heads:
        raise ValueError("hidden must be divisible by heads, and heads by kv_heads")
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def build_tiny_model(out_dir: str | Path, texts: Iterable[str], vocab_size: int = 1024, seed: int = 0, **model_kwargs) -> Path:
    """Build tokenizer + model and save both to ``out_dir`` (loadable with ``from_pretrained``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(texts, vocab_size=vocab_size)
    model = build_model(tok, seed=seed, **model_kwargs)
    tok.save_pretrained(out)
    model.save_pretrained(out)
    return out
