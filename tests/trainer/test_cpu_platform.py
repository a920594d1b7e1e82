"""verl's CPU support (``verl_trace.cpu``): off by default, so nothing changes for GPU users; on
with ``VERL_TRACE_CPU=1`` in a fresh ``import verl``, with verl's own functions answering for the
host: platform, process group (a real gloo group through verl's initializer), FSDP engine, the
``hf`` rollout backend in both of verl's registries. The server side of ``hf`` runs here in
process on a real tiny model; its Ray wiring runs in tests/trainer/test_main_trace_cpu.py."""

from __future__ import annotations

import ast
import asyncio
import os
import subprocess
import sys

import pytest
import torch

PROBE = r"""
import os, torch, torch.distributed as dist
import verl
from verl.plugin.platform import PlatformRegistry, get_platform
from verl.workers.engine import EngineRegistry
from verl.workers.rollout import base
from verl.workers.rollout.replica import RolloutReplicaRegistry
out = {
    "platforms": sorted(PlatformRegistry.registered_names()),
    "device": get_platform().device_name,
    "hf_adapter": ("hf", "async") in base._ROLLOUT_REGISTRY,
    "hf_replica": "hf" in RolloutReplicaRegistry._registry,
    "wrapped": getattr(dist.init_process_group, "verl_trace_dedupe", False),
    "cpu_engine": any("cpu" in b for m in EngineRegistry._engines.values() for b in m.values()),
    "VERL_PLATFORM": os.environ.get("VERL_PLATFORM"),
}
if out["device"] == "cpu":
    from verl.utils.device import get_device_id, get_nccl_backend, get_torch_device
    from verl.utils.distributed import initialize_global_process_group_ray
    from verl.workers.rollout.base import get_rollout_class
    from verl.workers.rollout.replica import get_rollout_replica_class
    os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ["PROBE_PORT"])
    initialize_global_process_group_ray(timeout_second=60)  # verl builds "cpu:gloo,cpu:gloo"
    t = torch.ones(3)
    dist.all_reduce(t)
    dev = get_torch_device()
    out.update(
        device_id=get_device_id(), backend=get_nccl_backend(), all_reduce=t.tolist(),
        engine=EngineRegistry.get_engine_cls("language_model", "fsdp2").__name__,
        adapter=get_rollout_class("hf").__qualname__, replica=get_rollout_replica_class("hf").__qualname__,
        mem_available=dev.mem_get_info()[0] > 0, allocated=dev.memory_allocated(), devices=dev.device_count(),
        stream=type(dev.current_stream()).__module__,
        rng_roundtrip=bool(torch.equal(dev.get_rng_state(), torch.get_rng_state())),
    )
    dist.destroy_process_group()
print(repr(out))
"""


def _probe(repo_root, **env) -> dict:
    from verl_trace.tools.retrieval_server.process import free_port

    clean = {k: v for k, v in os.environ.items() if k not in ("VERL_TRACE_CPU", "VERL_PLATFORM")}
    out = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=repo_root, capture_output=True, text=True, timeout=300,
        env={**clean, "PYTHONPATH": str(repo_root), "PROBE_PORT": str(free_port()), **env},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return ast.literal_eval(out.stdout.strip().splitlines()[-1])


def test_off_by_default_verl_is_untouched(repo_root):
    out = _probe(repo_root)
    assert "cpu" not in out["platforms"] and out["device"] == "cuda"  # verl's own fallback on this machine
    assert not out["hf_adapter"] and not out["hf_replica"] and not out["wrapped"] and not out["cpu_engine"]
    assert out["VERL_PLATFORM"] is None


def test_on_verl_runs_on_the_host(repo_root):
    out = _probe(repo_root, VERL_TRACE_CPU="1")
    assert out["device"] == "cpu" and out["VERL_PLATFORM"] == "cpu"
    assert out["device_id"] == "cpu"  # a device, never 0 (which would mean cuda:0)
    assert out["backend"] == "gloo" and out["all_reduce"] == [1.0, 1.0, 1.0]
    assert out["engine"] == "FSDPEngineWithLMHead"
    assert out["adapter"] == "HFServerAdapter" and out["replica"] == "HFReplica"
    assert out["mem_available"] and out["allocated"] == 0 and out["devices"] == 1
    assert out["stream"].startswith("torch.cpu") and out["rng_roundtrip"]


@pytest.fixture(scope="module")
def hf_server(tokenizer, tiny_model, tmp_path_factory):
    """The hf backend's server object (what runs inside its Ray actor), on the session's tiny model."""
    from omegaconf import OmegaConf

    from verl_trace.cpu.hf_rollout import HFServer

    tok, model, path = tokenizer, tiny_model, tmp_path_factory.mktemp("hf_model")
    tok.save_pretrained(path)
    model.save_pretrained(path)
    rollout = OmegaConf.create({"prompt_length": 32, "response_length": 16, "engine_kwargs": {"hf": {"seed": 3}}})
    return HFServer(rollout, OmegaConf.create({"path": str(path)}), replica_rank=0), tok, model


def _generate(server, tok, **sampling):
    ids = tok.encode("the answer is")
    return asyncio.run(server.generate(ids, {"temperature": 0.0, "logprobs": True, **sampling}, "req-1"))


def test_hf_server_generates_and_loads_the_actors_weights(hf_server):
    server, tok, model = hf_server
    before = _generate(server, tok)
    assert before.token_ids and len(before.log_probs) == len(before.token_ids)
    assert before.extra_fields["global_steps"] == 0
    # The actor's weights after an update: every parameter moved.
    state = {k: v + 0.5 * torch.randn_like(v) for k, v in model.state_dict().items() if k != "lm_head.weight"}
    assert asyncio.run(server.update_weights(state, global_steps=7)) == len(state)
    after = _generate(server, tok)
    assert after.extra_fields["global_steps"] == 7
    assert (after.token_ids, after.log_probs) != (before.token_ids, before.log_probs)


def test_hf_server_refuses_weights_of_another_model(hf_server):
    server, _, _ = hf_server
    with pytest.raises(ValueError, match="do not fit the rollout model"):
        asyncio.run(server.update_weights({"model.not_a_layer.weight": torch.zeros(2)}, global_steps=8))


def test_hf_options_are_validated():
    from omegaconf import OmegaConf

    from verl_trace.cpu.hf_rollout import HFEngineOptions

    ok = HFEngineOptions.of(OmegaConf.create({"engine_kwargs": {"hf": {"max_batch_size": 4, "sync_weights": False}}}))
    assert (ok.max_batch_size, ok.sync_weights, ok.decode_threads) == (4, False, 1)
    with pytest.raises(ValueError, match="engine_kwargs.hf"):
        HFEngineOptions.of(OmegaConf.create({"engine_kwargs": {"hf": {"batch": 4}}}))
