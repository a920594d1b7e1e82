"""The ``hf`` rollout backend (``actor_rollout_ref.rollout.name=hf``): verl's rollout machinery
serving our transformers engine, ``verl_trace.rollout.hf_client.HFLLMClient``.

verl 0.9.1 has two registries for a rollout backend, and this module fills both:

* server side, ``RolloutReplicaRegistry`` (public): ``HFReplica`` starts one ``HFServer`` Ray
  actor per replica. Agent loops reach it through verl's ``LLMServerClient`` exactly as they reach
  a vLLM server (``generate(prompt_ids, sampling_params, request_id, ...) -> TokenOutput``); the
  trainer's lifecycle calls (``wake_up``, ``sleep``, ``abort_all_requests``, KV-cache release) are
  no-ops, since there is no device memory to hand back.
* worker side, ``_ROLLOUT_REGISTRY`` (a private dict, see ``verl_private``): ``HFServerAdapter``
  lives in the FSDP actor worker. verl's naive weight sync calls ``update_weights`` with the
  actor's parameters after every step; each rank takes part in gathering the full tensors and the
  replica's first rank ships them to its server over Ray, which loads them between batches.

Options (``actor_rollout_ref.rollout.engine_kwargs.hf``, all optional): ``max_batch_size`` (rows
decoded together, 32), ``decode_threads`` (torch threads of the decode thread, 1), ``seed`` (0),
``sync_weights`` (true; false keeps the initial weights for the whole run, which is wrong for
training and exists as the negative control of the weight-sync tests).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any

import ray
import torch
from pydantic import BaseModel, ConfigDict, Field
from verl.workers.rollout.base import BaseRollout
from verl.workers.rollout.replica import RolloutReplica, RolloutReplicaRegistry, TokenOutput

from . import verl_private

logger = logging.getLogger(__name__)

BACKEND = "hf"


class HFEngineOptions(BaseModel):
    """``actor_rollout_ref.rollout.engine_kwargs.hf``."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(32, ge=1)
    decode_threads: int = Field(1, ge=1)
    seed: int = 0
    sync_weights: bool = True

    @classmethod
    def of(cls, rollout_config: Any) -> HFEngineOptions:
        kwargs = getattr(rollout_config, "engine_kwargs", None) or {}
        raw = kwargs.get(BACKEND) if isinstance(kwargs, Mapping) else None
        try:
            return cls.model_validate(dict(raw or {}))
        except ValueError as exc:
            raise ValueError(f"actor_rollout_ref.rollout.engine_kwargs.{BACKEND}: {exc}") from None


def server_name(replica_rank: int, name_suffix: str = "") -> str:
    """The Ray actor name of a replica's server (the adapter finds it by this name)."""
    return f"verl_trace_hf_server_{replica_rank}{name_suffix}"


class HFServer:
    """Token-in/token-out server around ``HFLLMClient``: the methods of verl's vLLM server that
    verl's agent loops, replica and trainer call. Run as a Ray actor (``HFReplica``)."""

    def __init__(self, config: Any, model_config: Any, replica_rank: int = 0):
        from transformers import AutoModelForCausalLM
        from verl.utils.config import omega_conf_to_dataclass
        from verl.workers.config import HFModelConfig

        from ..rollout.hf_client import HFLLMClient

        options = HFEngineOptions.of(config)
        torch.set_num_threads(options.decode_threads)
        model_config = omega_conf_to_dataclass(model_config, dataclass_type=HFModelConfig)  # as verl's servers do
        tokenizer = model_config.tokenizer
        model = AutoModelForCausalLM.from_pretrained(model_config.local_path, dtype=torch.float32).eval()
        self.client = HFLLMClient(
            model, tokenizer, prompt_length=config.prompt_length, response_length=config.response_length,
            max_batch_size=options.max_batch_size, seed=options.seed + replica_rank,
            decode_threads=options.decode_threads,
        )  # fmt: skip
        self._tied = bool(getattr(model.config, "tie_word_embeddings", False))

    def ready(self) -> bool:
        return True

    async def generate(
        self, prompt_ids: list[int], sampling_params: dict[str, Any], request_id: str, image_data: Any = None,
        video_data: Any = None, **kwargs: Any,
    ) -> TokenOutput:  # fmt: skip
        return await self.client.generate(
            request_id, prompt_ids=list(prompt_ids), sampling_params=dict(sampling_params), image_data=image_data,
            video_data=video_data, **kwargs,
        )  # fmt: skip

    async def update_weights(self, state_dict: dict[str, torch.Tensor], global_steps: int | None = None) -> int:
        """Load the actor's full weights between decode batches; generations afterwards report
        ``global_steps`` as their weights' version, as verl's servers do."""
        tied = self._tied

        def load(model: torch.nn.Module) -> None:
            missing, unexpected = model.load_state_dict(state_dict, strict=False)
            if tied:
                missing = [k for k in missing if k != "lm_head.weight"]
            if missing or unexpected:
                raise ValueError(
                    f"hf rollout: the actor's weights do not fit the rollout model (missing {missing[:5]}, "
                    f"unexpected {unexpected[:5]}); are actor and rollout the same model?"
                )

        version = self.client.weights_version + 1 if global_steps is None else int(global_steps)
        await self.client.update_weights(load, version=version)
        return len(state_dict)

    async def set_global_steps(self, global_steps: int) -> None:
        await self.client.update_weights(None, version=int(global_steps))

    # Lifecycle calls of verl's replica and trainer: the weights stay in host memory.
    async def wake_up(self, *args: Any, **kwargs: Any) -> None:
        return None

    async def sleep(self, *args: Any, **kwargs: Any) -> None:
        return None

    async def clear_kv_cache(self) -> None:
        return None

    async def release_kv_cache(self) -> None:
        return None

    async def resume_kv_cache(self) -> None:
        return None

    async def abort_all_requests(self, *args: Any, **kwargs: Any) -> dict:
        return {}

    async def resume_generation(self) -> None:
        return None

    async def start_profile(self, **kwargs: Any) -> None:
        return None

    async def stop_profile(self) -> None:
        return None


class HFReplica(RolloutReplica):
    """One ``HFServer`` per replica, on the node of the replica's first worker."""

    def rollout_worker_use_gpu(self) -> bool:
        return False

    async def launch_servers(self) -> None:
        options: dict[str, Any] = {"name": server_name(self.replica_rank, self.name_suffix),
                                   "max_concurrency": self.max_concurrency, "num_cpus": 0}
        if self.workers:
            node = await self.workers[0].__ray_call__.remote(lambda worker: ray.get_runtime_context().get_node_id())
            options["scheduling_strategy"] = ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(
                node_id=node, soft=False
            )
        server = ray.remote(HFServer).options(**options).remote(self.config, self.model_config, self.replica_rank)
        await server.ready.remote()
        self.servers = [server]
        self._server_handle = server
        self._server_address = options["name"]


class HFServerAdapter(BaseRollout):
    """The rollout as the FSDP actor worker sees it: receives the actor's weights."""

    def __init__(self, config: Any, model_config: Any, device_mesh: Any, replica_rank: int = -1):
        super().__init__(config, model_config, device_mesh)
        rank = int(os.environ.get("RANK", "0"))
        cfg = self.config
        world = cfg.tensor_model_parallel_size * cfg.data_parallel_size * cfg.pipeline_model_parallel_size
        self.replica_rank = rank // world if replica_rank < 0 else replica_rank
        self.is_leader = rank % world == 0
        self.options = HFEngineOptions.of(cfg)
        self._server: Any = None

    def server(self) -> Any:
        if self._server is None:
            self._server = ray.get_actor(server_name(self.replica_rank))
        return self._server

    async def resume(self, tags: list[str]) -> None:
        return None

    async def release(self) -> None:
        return None

    @torch.no_grad()
    async def update_weights(
        self, weights: Iterable[tuple[str, torch.Tensor]], wire_format: str = "named_tensors", **kwargs: Any
    ) -> None:
        if wire_format != "named_tensors":
            raise NotImplementedError(f"hf rollout: weight wire format {wire_format!r}; only 'named_tensors'")
        if kwargs.get("peft_config") is not None:
            raise NotImplementedError(
                "hf rollout: LoRA adapters are sent separately from the base weights, which this backend does "
                "not support; set actor_rollout_ref.model.lora.merge=true"
            )
        state: dict[str, torch.Tensor] = {}
        for name, tensor in weights:  # every rank drains the generator: full_tensor() is a collective
            if hasattr(tensor, "full_tensor"):
                tensor = tensor.full_tensor()
            if self.is_leader:
                state[name] = tensor.detach().to("cpu", dtype=torch.float32, copy=True)
        if self.is_leader and self.options.sync_weights:
            await self.server().update_weights.remote(state, kwargs.get("global_steps"))


def _load_replica() -> type[RolloutReplica]:
    return HFReplica


def register_hf_rollout() -> None:
    """Make ``rollout.name=hf`` known to both of verl's rollout registries. Idempotent."""
    RolloutReplicaRegistry.register(BACKEND, _load_replica)
    verl_private.register_rollout_adapter(BACKEND, f"{HFServerAdapter.__module__}.{HFServerAdapter.__name__}")
