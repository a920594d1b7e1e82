"""Prefix-cache accounting for rollouts served by vLLM: what the engine says it reused (its own
Prometheus counters) next to what it could at best have reused (the prefixes our requests shared).

Every turn of an agent loop is a new engine request whose prompt is the whole history so far, and
every branch of a tree starts from a prompt that an earlier request of the step already had. How
much of that the engine actually serves from its prefix cache is the engine's business: read it
from the engine (:func:`read_vllm_counters`), never infer it. :class:`PrefixLedger` gives the
yardstick: for each request, in the order they were sent, the longest prefix of its prompt that an
earlier request of the step already had (in its prompt, or in prompt + generated tokens once it
finished). vLLM caches whole KV blocks only and always recomputes a prompt's last token, so the
ledger also counts the block-aligned part, ``min(shared, len - 1) // block * block``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

# what we read from vLLM's /metrics: our name -> (metric family, sample suffix)
VLLM_COUNTERS: dict[str, tuple[str, str]] = {
    "prompt_tokens": ("vllm:prompt_tokens", "_total"),
    "generation_tokens": ("vllm:generation_tokens", "_total"),
    "prefix_cache_queries": ("vllm:prefix_cache_queries", "_total"),
    "prefix_cache_hits": ("vllm:prefix_cache_hits", "_total"),
    # new KV computed in prefill, cached tokens excluded, and the number of requests prefilled
    "prefill_computed_tokens": ("vllm:request_prefill_kv_computed_tokens", "_sum"),
    "requests": ("vllm:request_prefill_kv_computed_tokens", "_count"),
    "prefill_seconds": ("vllm:request_prefill_time_seconds", "_sum"),
}


def parse_vllm_counters(text: str) -> dict[str, float]:
    """The :data:`VLLM_COUNTERS` in a Prometheus text exposition, summed over label sets (engines,
    models). A counter the engine does not export is missing from the result."""
    wanted = {(family, family + suffix): name for name, (family, suffix) in VLLM_COUNTERS.items()}
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = wanted.get((family.name, sample.name))
            if name is not None:
                out[name] = out.get(name, 0.0) + float(sample.value)
    return out


async def read_vllm_counters(address: str, *, timeout: float = 10.0) -> dict[str, float]:
    """:func:`parse_vllm_counters` of ``http://{address}/metrics`` (a vLLM OpenAI server, e.g.
    verl's ``vLLMReplica.server_address``). Needs the engine's stats on
    (``rollout.disable_log_stats=False``); raises naming the address if none are exported."""
    url = f"http://{address}/metrics"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        async with session.get(url) as resp:
            resp.raise_for_status()
            counters = parse_vllm_counters(await resp.text())
    if "prefix_cache_queries" not in counters:
        raise RuntimeError(f"{url} exports no vllm:prefix_cache_* counters: is disable_log_stats=False "
                           "and enable_prefix_caching=True?")
    return counters


async def read_all_counters(addresses: Sequence[str]) -> dict[str, dict[str, float]]:
    """:func:`read_vllm_counters` of every address, concurrently."""
    values = await asyncio.gather(*(read_vllm_counters(a) for a in addresses))
    return dict(zip(addresses, values))


def counter_delta(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    return {k: after[k] - before.get(k, 0.0) for k in after}


# polynomial rolling hash over token ids: one integer per prefix, so "was this prefix seen" is a
# set lookup (a 61-bit Mersenne modulus makes a false match ~1e-18 per lookup)
_MOD = (1 << 61) - 1
_BASE = 1_000_003


def _prefix_hashes(tokens: Sequence[int]) -> list[int]:
    out, h = [], 0
    for t in tokens:
        h = (h * _BASE + int(t) + 1) % _MOD
        out.append(h)
    return out


@dataclass
class PrefixLedger:
    """The requests of one step, in the order they were sent (see the module docstring)."""

    block_size: int
    prompt_tokens: int = 0
    shared_tokens: int = 0
    cacheable_tokens: int = 0
    requests: int = 0
    _seen: set[int] = field(default_factory=set, repr=False)

    def __post_init__(self) -> None:
        if self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")

    def submit(self, prompt_ids: Sequence[int]) -> int:
        """Count a request about to be sent; returns its shared prefix length (tokens)."""
        hashes = _prefix_hashes(prompt_ids)
        # every prefix of a recorded sequence is recorded, so the seen prefixes of this prompt
        # are exactly its first `shared` ones
        shared = next((i for i, h in enumerate(hashes) if h not in self._seen), len(hashes))
        self.requests += 1
        self.prompt_tokens += len(prompt_ids)
        self.shared_tokens += shared
        self.cacheable_tokens += min(shared, len(prompt_ids) - 1) // self.block_size * self.block_size
        self._seen.update(hashes)
        return shared

    def complete(self, sequence_ids: Sequence[int]) -> None:
        """Record a finished request's prompt + generated tokens (now in the engine's KV cache)."""
        self._seen.update(_prefix_hashes(sequence_ids))

    @property
    def shared_prefix_fraction(self) -> float:
        return self.shared_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    @property
    def cacheable_prefix_fraction(self) -> float:
        return self.cacheable_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    def summary(self) -> dict[str, float]:
        return {"requests": self.requests, "prompt_tokens": self.prompt_tokens, "shared_tokens": self.shared_tokens,
                "cacheable_tokens": self.cacheable_tokens, "shared_prefix_fraction": self.shared_prefix_fraction,
                "cacheable_prefix_fraction": self.cacheable_prefix_fraction}


class LedgerClient:
    """An LLM client (verl's ``LLMServerClient.generate`` interface) that records every request in
    a :class:`PrefixLedger` (``ledger`` may be swapped between steps) and forwards it unchanged."""

    def __init__(self, inner: Any, ledger: PrefixLedger):
        self.inner = inner
        self.ledger = ledger

    async def generate(self, request_id: str, *, prompt_ids: list[int], sampling_params: dict[str, Any], **kwargs: Any):
        ledger = self.ledger
        ledger.submit(prompt_ids)
        output = await self.inner.generate(request_id, prompt_ids=prompt_ids, sampling_params=sampling_params, **kwargs)
        ledger.complete(list(prompt_ids) + list(output.token_ids))
        return output
