"""The contract between agent loops and LLM clients, shared by the agent loop and the clients
here: how verl's vLLM server caps a call, where an engine may report entropy, and the error an
engine failure becomes."""

from __future__ import annotations

from typing import Any

ENTROPY_KEY = "entropy"  # optional TokenOutput.extra_fields entry: mean entropy of the generated tokens


class EngineError(RuntimeError):
    """The LLM engine failed (raised, or aborted the request) during one generation."""


def vllm_max_tokens(n_running: int, sampling_params: dict[str, Any], prompt_length: int, response_length: int) -> int:
    """The per-call generation cap of verl's vLLM server (``vllm_async_server.py``, generate):
    ``sampling_params['max_tokens']`` if given, else ``min(response_length, prompt_length +
    response_length - n_running)``, where ``n_running`` is the whole running sequence; at least 1."""
    if "max_tokens" in sampling_params:
        cap = int(sampling_params["max_tokens"])
    else:
        cap = min(response_length, prompt_length + response_length - n_running)
    return max(1, cap)
