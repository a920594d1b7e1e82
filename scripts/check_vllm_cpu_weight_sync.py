"""Stand-alone check of the vLLM CPU weight update (``verl_trace.rollout.vllm_cpu``) against
transformers, on a tiny Qwen2 built here (no download). Run with the vLLM environment:

    .venv-vllm/bin/python scripts/check_vllm_cpu_weight_sync.py --out /tmp/weight_sync.json [--transport verl]

One in-process vLLM CPU engine (fp32, eager, prefix caching on, our worker extension) serves a
tokenized prompt long enough to fill several KV blocks. Then, twice, the engine gets new
(perturbed) weights and greedy continuations are scored against transformers with the same weights
(teacher-forced log-probs of the tokens vLLM generated; max absolute difference):

* ``--transport direct``: the weights go through the extension's ``layerwise_reload`` and verl's
  ``_update_weights`` in several chunks, a layer's tensors split across chunks;
* ``--transport verl``: verl's own ``BucketedWeightSender`` (shared-memory buckets, small enough
  that layers straddle buckets) to the extension's ``update_weights_from_ipc``, as verl's rollout
  does (needs verl's ``cpu`` platform: ``VERL_PLATFORM=cpu``).

The first update sends every tensor (``lm_head.weight`` included, as verl's FSDP actor does for a
tied model), the second leaves the tied ``lm_head.weight`` out. After each update the continuation
is scored twice: before and after ``reset_prefix_cache`` (what verl's rollout calls after every
update), so the JSON shows what a stale prefix cache costs. A last update leaves out both
``lm_head.weight`` and the embedding re-pack (a negative control: the tied ``lm_head`` keeps
computing from the old packed weights). Prints and writes JSON; exits non-zero if a fresh error
exceeds ``--tol``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process engine core: one process
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("VERL_RAY_JOB_ID", f"weightcheck{os.getpid()}")  # private zmq socket path

import torch  # noqa: E402

EXTENSION = "verl_trace.rollout.vllm_cpu.CPUWeightSyncExtension"
TEXTS = ["the quick brown fox jumps over the lazy dog", "tool calls and observations", "search the corpus"] * 20


def build_model(out: Path) -> Path:
    from verl_trace.testing.tiny import build_tiny_model

    # head dim 32: the smallest head size vLLM's CPU attention supports
    return build_tiny_model(out, TEXTS, vocab_size=512, seed=0, hidden=64, layers=2, heads=2, kv_heads=1)


def perturbed(state: dict[str, torch.Tensor], seed: int, scale: float = 0.2) -> dict[str, torch.Tensor]:
    """New weights near ``state``; a tied ``lm_head.weight`` stays equal to the embedding."""
    gen = torch.Generator().manual_seed(seed)
    out = {k: (v + scale * v.abs().mean().clamp_min(1e-3) * torch.randn(v.shape, generator=gen)).contiguous()
           for k, v in state.items()}
    if "lm_head.weight" in out:
        out["lm_head.weight"] = out["model.embed_tokens.weight"]
    return out


@torch.no_grad()
def hf_logprobs(hf, state, prompt: list[int], generated: list[int]) -> torch.Tensor:
    hf.load_state_dict({k: v for k, v in state.items() if k != "lm_head.weight"}, strict=False)
    hf.tie_weights()
    logits = hf(torch.tensor([prompt + generated])).logits[0].float()
    lp = torch.log_softmax(logits, -1)
    return torch.tensor([lp[len(prompt) - 1 + i, t].item() for i, t in enumerate(generated)])


def vllm_generate(llm, prompt: list[int], n_tokens: int) -> tuple[list[int], torch.Tensor]:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(max_tokens=n_tokens, temperature=0.0, ignore_eos=True, logprobs=0)
    out = llm.generate([TokensPrompt(prompt_token_ids=prompt)], params, use_tqdm=False)[0].outputs[0]
    tokens = list(out.token_ids)
    return tokens, torch.tensor([out.logprobs[i][t].logprob for i, t in enumerate(tokens)])


def counters(llm) -> dict[str, float]:
    want = {"vllm:prefix_cache_queries", "vllm:prefix_cache_hits"}
    got: dict[str, float] = {}
    for metric in llm.get_metrics():
        if metric.name in want:
            got[metric.name] = got.get(metric.name, 0.0) + metric.value
    return got


def score(llm, hf, state, prompt: list[int], n_tokens: int) -> tuple[float, dict[str, float]]:
    """Max |vLLM - transformers| log-prob of vLLM's greedy continuation, and the prefix-cache hits it got."""
    before = counters(llm)
    tokens, lp = vllm_generate(llm, prompt, n_tokens)
    after = counters(llm)
    hits = after.get("vllm:prefix_cache_hits", 0) - before.get("vllm:prefix_cache_hits", 0)
    return float((lp - hf_logprobs(hf, state, prompt, tokens)).abs().max()), {"prefix_cache_hit_tokens": hits}


def update_direct(llm, state: dict[str, torch.Tensor], chunks: int, refresh: bool = True) -> None:
    items = list(state.items())

    def run(worker, items, chunks, refresh):
        from vllm.model_executor.model_loader.reload import (
            finalize_layerwise_reload,
            initialize_layerwise_reload,
        )

        from verl_trace.rollout.vllm_cpu import layerwise_reload

        models = list(worker._iter_all_models_with_config())
        step = max(1, -(-len(items) // chunks))
        pieces = [items[i:i + step] for i in range(0, len(items), step)]
        if refresh:
            with layerwise_reload(models):
                for piece in pieces:
                    worker._update_weights(piece, peft_config=None, base_sync_done=False)
            return
        for model, _ in models:  # the control: vLLM's reload alone, embeddings not re-packed
            initialize_layerwise_reload(model)
        for piece in pieces:
            worker._update_weights(piece, peft_config=None, base_sync_done=False)
        for model, config in models:
            finalize_layerwise_reload(model, config)

    llm.collective_rpc(run, args=(items, chunks, refresh))


def update_verl(llm, state: dict[str, torch.Tensor]) -> None:
    """verl's sender in a thread, the extension's receiver in the engine (this thread). The bucket
    holds exactly the largest tensor, so the smaller ones straddle buckets (a shared-memory bucket
    must fit every tensor: verl asserts it)."""
    import asyncio

    from verl.workers.rollout.vllm_rollout.bucketed_weight_transfer import BucketedWeightSender

    handle = f"ipc:///tmp/rl-colocate-zmq-{os.environ['VERL_RAY_JOB_ID']}-replica-0-rank-0.sock"
    sender = BucketedWeightSender(zmq_handle=handle, bucket_size_mb=1, use_shm=True)
    sender.bucket_size = max(t.nbytes for t in state.values())
    errors: list[BaseException] = []

    def send():
        try:
            asyncio.run(sender.async_send_weights(iter(list(state.items()))))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    llm.collective_rpc("update_weights_from_ipc", kwargs={"use_shm": True})
    thread.join(timeout=60)
    if errors:
        raise errors[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--transport", choices=["direct", "verl"], default="direct")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--prompt-tokens", type=int, default=300)
    ap.add_argument("--new-tokens", type=int, default=16)
    args = ap.parse_args()

    from transformers import AutoModelForCausalLM
    from vllm import LLM

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vllm-weight-sync-") as tmp:
        model_dir = build_model(Path(tmp) / "model")
        hf = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32, attn_implementation="eager").eval()
        state0 = {k: v.detach().clone() for k, v in hf.state_dict().items()}  # lm_head.weight too, as verl's actor sends it
        llm = LLM(model=str(model_dir), dtype="float32", enforce_eager=True, max_model_len=1024, seed=0,
                  enable_prefix_caching=True, disable_log_stats=False, worker_extension_cls=EXTENSION)
        block = llm.llm_engine.vllm_config.cache_config.block_size
        gen = torch.Generator().manual_seed(1)
        prompt = torch.randint(3, hf.config.vocab_size, (args.prompt_tokens,), generator=gen).tolist()

        def error(state) -> tuple[float, dict[str, float]]:
            return score(llm, hf, state, prompt, args.new_tokens)

        result: dict = {"transport": args.transport, "block_size": block, "prompt_tokens": len(prompt), "updates": []}
        err, info = error(state0)
        result["initial"] = {"max_abs_logprob_diff": err, **info}
        # update 1 sends every tensor, lm_head.weight included (what verl's FSDP actor sends for a
        # tied model); update 2 leaves the tied lm_head.weight out (what a sender that drops tied
        # duplicates sends): only the embedding re-pack then refreshes the lm_head
        for i, (seed, drop) in enumerate(((11, ()), (12, ("lm_head.weight",)))):
            state = {k: v for k, v in perturbed(state0, seed).items() if k not in drop}
            t_up = time.perf_counter()
            if args.transport == "direct":
                update_direct(llm, state, chunks=3 + i)
            else:
                update_verl(llm, state)
            seconds = time.perf_counter() - t_up
            stale, stale_info = error(state)
            llm.reset_prefix_cache()
            fresh, fresh_info = error(state)
            result["updates"].append({"sent": len(state), "left_out": list(drop), "seconds": seconds,
                                      "stale_cache_max_abs_logprob_diff": stale, "stale_cache": stale_info,
                                      "max_abs_logprob_diff": fresh, "fresh": fresh_info})
        state = {k: v for k, v in perturbed(state0, 13).items() if k != "lm_head.weight"}
        update_direct(llm, state, chunks=2, refresh=False)
        llm.reset_prefix_cache()
        result["control_no_embedding_repack"] = {"left_out": ["lm_head.weight"], "max_abs_logprob_diff": error(state)[0]}
    result["seconds"] = time.perf_counter() - t0
    worst = max([result["initial"]["max_abs_logprob_diff"]] + [u["max_abs_logprob_diff"] for u in result["updates"]])
    result["ok"] = worst <= args.tol
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
