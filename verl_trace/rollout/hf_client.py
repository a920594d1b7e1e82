"""An in-process LLM client backed by a transformers causal LM, with verl's client interface.

``HFLLMClient.generate(request_id, *, prompt_ids, sampling_params, **kw) -> TokenOutput`` is what
verl's agent loops call on ``LLMServerClient``, so the same loops (and the tree runner) run on CPU
against a real model. Requests that arrive while the model is busy are queued and decoded together
as one left-padded batch with a KV cache; a row leaves the batch and returns to its caller as
soon as it stops, so a long branch does not hold short ones back.

Semantics follow verl's vLLM server: ``max_tokens`` defaults to
``min(response_length, prompt_length + response_length - len(prompt_ids))``; generation stops at
EOS (the tokenizer's and the model's) or ``stop_token_ids`` and keeps the stop token; logprobs are
those of the sampled tokens under ``log_softmax(logits / temperature)`` (what verl's actor
recomputes; top-k/top-p only restrict sampling); temperature 0 is greedy. A per-request
``sampling_params["seed"]`` makes a request reproducible whatever it is batched with.

The model is used in place: a trainer that updates its weights between steps calls
:meth:`HFLLMClient.update_weights` (waits for the running batch, bumps ``weights_version``, which
is reported as ``global_steps`` the way verl's servers report it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch
from verl.workers.rollout.replica import TokenOutput

from .engine import ENTROPY_KEY, vllm_max_tokens


@dataclass
class _Request:
    prompt_ids: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    logprobs: bool
    stop_ids: frozenset[int]
    generator: torch.Generator
    future: asyncio.Future
    token_ids: list[int] = field(default_factory=list)
    log_probs: list[float] = field(default_factory=list)
    entropy_sum: float = 0.0
    released: bool = False  # handed back to the caller (set on the decode thread)


@dataclass
class ClientStats:
    requests: int = 0
    batches: int = 0
    generated_tokens: int = 0
    max_batch: int = 0


class HFLLMClient:
    """See the module docstring. ``max_batch_size`` bounds the rows decoded together.
    ``decode_threads`` sets torch's intra-op threads of the decoding thread only (OpenMP keeps the
    setting per thread; ``None`` keeps torch's): 1 by default, so decoding does not compete with the
    agent loops' tokenization and a co-located trainer for a small CPU (docs/integration.md has
    the measurements)."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        prompt_length: int,
        response_length: int,
        max_batch_size: int = 32,
        seed: int = 0,
        report_entropy: bool = True,
        decode_threads: int | None = 1,
    ):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.prompt_length = prompt_length
        self.response_length = response_length
        self.max_batch_size = max_batch_size
        self.report_entropy = report_entropy
        self.weights_version = 0
        self.stats = ClientStats()
        self._seeds = torch.Generator().manual_seed(seed)
        self._eos = _eos_ids(model, tokenizer)
        pad = tokenizer.pad_token_id
        self._pad = int(pad if pad is not None else next(iter(self._eos)))
        self._max_positions = getattr(model.config, "max_position_embeddings", None)
        self._executor = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="hf-decode",
            initializer=None if decode_threads is None else torch.set_num_threads,
            initargs=() if decode_threads is None else (decode_threads,),
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[_Request] | None = None
        self._worker: asyncio.Task | None = None
        self._model_lock: asyncio.Lock | None = None

    # ------------------------------------------------------------------ public API
    async def generate(
        self, request_id: str, *, prompt_ids: list[int], sampling_params: dict[str, Any], **kwargs: Any
    ) -> TokenOutput:
        if kwargs.get("image_data") or kwargs.get("video_data") or kwargs.get("audio_data"):
            raise ValueError("HFLLMClient is text-only: image_data/video_data/audio_data are not supported")
        req = self._request(list(prompt_ids), sampling_params)
        self._ensure_worker()
        self._queue.put_nowait(req)
        await req.future
        steps = self.weights_version
        extra: dict[str, Any] = {"global_steps": steps, "min_global_steps": steps, "max_global_steps": steps}
        if self.report_entropy and req.token_ids:
            extra[ENTROPY_KEY] = req.entropy_sum / len(req.token_ids)
        return TokenOutput(
            token_ids=req.token_ids,
            log_probs=req.log_probs if req.logprobs else None,
            stop_reason="completed",
            num_preempted=0,
            extra_fields=extra,
        )

    async def update_weights(self, update: Callable[[torch.nn.Module], None] | None = None, version: int | None = None) -> None:
        """Run ``update(model)`` (e.g. ``load_state_dict``) between batches and bump the version."""
        self._ensure_worker()
        async with self._model_lock:
            if update is not None:
                update(self.model)
            self.weights_version = self.weights_version + 1 if version is None else int(version)

    async def close(self) -> None:
        """Stop the batching task (pending requests fail with CancelledError)."""
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None

    # ------------------------------------------------------------------ batching
    def _request(self, prompt_ids: list[int], sp: dict[str, Any]) -> _Request:
        if not prompt_ids:
            raise ValueError("prompt_ids is empty")
        if float(sp.get("repetition_penalty", 1.0)) != 1.0:
            raise ValueError("sampling_params.repetition_penalty != 1.0 is not supported by HFLLMClient")
        cap = vllm_max_tokens(len(prompt_ids), sp, self.prompt_length, self.response_length)
        if self._max_positions is not None:
            room = self._max_positions - len(prompt_ids)
            if room < 1:
                raise ValueError(f"prompt of {len(prompt_ids)} tokens leaves no room in the model's {self._max_positions} positions")
            cap = min(cap, room)
        seed = sp.get("seed")
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,), generator=self._seeds))
        top_k = sp.get("top_k", -1)
        return _Request(
            prompt_ids=prompt_ids,
            max_tokens=cap,
            temperature=float(sp.get("temperature", 1.0)),
            top_p=float(sp.get("top_p", 1.0)),
            top_k=-1 if top_k is None else int(top_k),
            logprobs=bool(sp.get("logprobs", True)),
            stop_ids=frozenset(self._eos | set(sp.get("stop_token_ids") or [])),
            generator=torch.Generator().manual_seed(int(seed)),
            future=asyncio.get_running_loop().create_future(),
        )

    def _ensure_worker(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._worker is None or self._worker.done():
            self._loop = loop
            self._queue = asyncio.Queue()
            self._model_lock = asyncio.Lock()
            self._worker = loop.create_task(self._serve())

    async def _serve(self) -> None:
        while True:
            batch = [await self._queue.get()]
            await asyncio.sleep(0)  # let requests issued in the same tick join this batch
            while len(batch) < self.max_batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            batch = [r for r in batch if not r.future.done()]  # the caller was cancelled
            if not batch:
                continue
            self.stats.batches += 1
            self.stats.requests += len(batch)
            self.stats.max_batch = max(self.stats.max_batch, len(batch))
            async with self._model_lock:
                try:
                    await asyncio.get_running_loop().run_in_executor(self._executor, self._decode, batch)
                except Exception as e:
                    for r in batch:
                        if not r.released:
                            _settle(r.future, e)
                    continue

    def _release(self, req: _Request) -> None:
        """A row is done (worker thread): hand it back now, not when the whole batch ends, so the
        agent loop can run its tools while the longer rows keep decoding."""
        req.released = True
        self.stats.generated_tokens += len(req.token_ids)
        self._loop.call_soon_threadsafe(_settle, req.future, None)

    # ------------------------------------------------------------------ decoding (worker thread)
    @torch.no_grad()
    def _decode(self, reqs: list[_Request]) -> None:
        from transformers import DynamicCache

        model = self.model
        was_training = model.training
        model.eval()
        try:
            device = next(model.parameters()).device
            width = max(len(r.prompt_ids) for r in reqs)
            ids = torch.full((len(reqs), width), self._pad, dtype=torch.long)
            attn = torch.zeros((len(reqs), width), dtype=torch.long)
            for i, r in enumerate(reqs):
                ids[i, width - len(r.prompt_ids) :] = torch.tensor(r.prompt_ids)
                attn[i, width - len(r.prompt_ids) :] = 1
            ids, attn = ids.to(device), attn.to(device)
            pos = (attn.cumsum(-1) - 1).clamp(min=0)
            cache = DynamicCache()
            out = model(input_ids=ids, attention_mask=attn, position_ids=pos, past_key_values=cache, use_cache=True, logits_to_keep=1)
            rows = list(reqs)
            next_pos = pos[:, -1] + 1
            while True:
                tokens = self._sample(out.logits[:, -1, :].float(), rows)
                keep = []
                for j, r in enumerate(rows):
                    if r.token_ids[-1] in r.stop_ids or len(r.token_ids) >= r.max_tokens or r.future.done():
                        self._release(r)  # finished, or its caller gave up (cancelled)
                    else:
                        keep.append(j)
                if not keep:
                    return
                if len(keep) < len(rows):
                    idx = torch.tensor(keep, device=device)
                    cache.batch_select_indices(idx)
                    rows = [rows[j] for j in keep]
                    tokens, attn, next_pos = tokens[idx], attn[idx], next_pos[idx]
                attn = torch.cat([attn, attn.new_ones((len(rows), 1))], dim=-1)
                out = model(
                    input_ids=tokens[:, None],
                    attention_mask=attn,
                    position_ids=next_pos[:, None],
                    past_key_values=cache,
                    use_cache=True,
                )
                next_pos = next_pos + 1
        finally:
            model.train(was_training)

    def _sample(self, logits: torch.Tensor, rows: list[_Request]) -> torch.Tensor:
        """Sample one token per row; append it, its logprob and the distribution's entropy.

        Gumbel-max over the filtered log-probs, with each row's noise from its own generator:
        exact sampling, vectorized, and a seeded request draws the same tokens in any batch."""
        temps = torch.tensor([r.temperature if r.temperature > 0 else 1.0 for r in rows], device=logits.device)
        logp = torch.log_softmax(logits / temps[:, None], dim=-1)
        allowed = _top_k_top_p(logp, [r.top_k for r in rows], [r.top_p for r in rows])
        noise = torch.stack([torch.rand(logp.shape[-1], generator=r.generator) for r in rows]).to(logp.device)
        gumbel = -torch.log(-torch.log(noise.clamp(1e-20, 1.0 - 1e-7)))
        sampled = torch.where(allowed, logp + gumbel, torch.full_like(logp, -torch.inf)).argmax(-1)
        greedy = torch.tensor([r.temperature <= 0 for r in rows], device=logits.device)
        tokens = torch.where(greedy, logits.argmax(-1), sampled)
        tok_lp = logp.gather(-1, tokens[:, None])[:, 0].tolist()
        entropy = (-(logp.exp() * logp).sum(-1)).tolist() if self.report_entropy else [0.0] * len(rows)
        for r, tok, lp, h in zip(rows, tokens.tolist(), tok_lp, entropy):
            r.token_ids.append(tok)
            if r.logprobs:
                r.log_probs.append(lp)
            r.entropy_sum += h
        return tokens


def _settle(future: asyncio.Future, error: BaseException | None) -> None:
    if not future.done():
        future.set_result(None) if error is None else future.set_exception(error)


def _top_k_top_p(logp: torch.Tensor, top_k: list[int], top_p: list[float]) -> torch.Tensor:
    """Mask of the tokens each row may sample: its top-k tokens, within the smallest nucleus
    whose probability reaches top_p (vLLM's semantics: top_k <= 0 and top_p >= 1 disable them)."""
    vocab = logp.shape[-1]
    ks = torch.tensor([k if 0 < k < vocab else vocab for k in top_k], device=logp.device)
    ps = torch.tensor(top_p, device=logp.device, dtype=logp.dtype)
    if bool((ks == vocab).all()) and bool((ps >= 1.0).all()):
        return torch.ones_like(logp, dtype=torch.bool)
    sorted_lp, order = logp.sort(dim=-1, descending=True)
    rank = torch.arange(vocab, device=logp.device)[None, :]
    probs = sorted_lp.exp()
    before = torch.cumsum(probs, dim=-1) - probs  # mass strictly above each token
    keep_sorted = (rank < ks[:, None]) & (before < ps[:, None])
    return torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)


def _eos_ids(model: torch.nn.Module, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    for value in (getattr(getattr(model, "generation_config", None), "eos_token_id", None), tokenizer.eos_token_id):
        if value is None:
            continue
        ids.update(value if isinstance(value, (list, tuple)) else [value])
    if not ids:
        raise ValueError("neither the model's generation_config nor the tokenizer defines an EOS token")
    return frozenset(int(i) for i in ids)


