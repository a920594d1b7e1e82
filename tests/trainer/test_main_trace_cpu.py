"""``python -m verl_trace.main_trace`` trains for real on this CPU: verl's trainer (FSDP2 actor,
TransferQueue, the V1 sync trainer, its checkpoints and resume) with TRACE's rollout, predictor
and estimator, the ``hf`` rollout backend and the BM25 server (recipes/search_r1/config/cpu_tiny.yaml).

Five real runs, each a ``main_trace`` child process with its own private Ray cluster (killed by
PID if it overstays; a normal exit shuts its cluster down), each serving several assertions:

* ``trace``, 3 steps on 2 rollout workers, saving every step with ``max_actor_ckpt_to_keep=2`` and a
  ``default_hdfs_dir``, validating after the last step through verl's validation path; ``grpo`` and ``tree_grpo``, 3 steps: exit 0, finite ``actor/grad_norm`` > 0,
  multi-turn trees with branch points (tree methods), ``training/rollout_probs_diff_max`` below
  ``SYNC_BOUND`` (the rollout serves the weights the actor just trained);
* the no-sync control (``engine_kwargs.hf.sync_weights=false``): its ``rollout_probs_diff_max``
  exceeds ``SYNC_BOUND`` once the actor has been updated, so the bound above can fail;
* resume: the state a crash during step 3 of the ``trace`` run leaves (its step-3 checkpoint gone,
  verl's tracker back at 2) is resumed by verl's own ``trainer.resume_mode=auto``: training
  continues at step 3, and the restored predictor is the saved one, because it scores step 3's
  candidate pool (the same prompts: verl restores the dataloader) exactly as the uninterrupted run did.
"""

from __future__ import annotations

import math
import shutil

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

SYNC_BOUND = 1e-4  # max |rollout - actor| token probability; measured ~1e-6 with sync, ~0.3 without
RUN_TIMEOUT = 600.0
COMMON = ["trainer.total_training_steps=3", "trainer.save_freq=-1"]


@pytest.fixture(scope="module")
def cpu_job(tmp_path_factory):
    """The assets (built once) and the BM25 server; ``run(name, method, *overrides)`` runs main_trace."""
    from verl_trace.cpu.job import retrieval_server, run_main_trace
    from verl_trace.cpu.prepare import Assets, prepare

    root = tmp_path_factory.mktemp("cpu_job")
    ray_tmp = tmp_path_factory.mktemp("ray")  # short: Ray's socket paths must stay under 108 characters
    with retrieval_server(Assets(root / "assets"), root) as url:
        assets = prepare(root / "assets", retrieve_url=url)

        def run(name: str, method: str, *overrides: str, workdir=None):
            result = run_main_trace(assets, workdir or root / name, retrieve_url=url, method=method,
                                    overrides=[*COMMON, *overrides], timeout=RUN_TIMEOUT, ray_tmp=ray_tmp,
                                    prefix=["nice", "-n", "5"])
            assert result.returncode == 0, f"{name}: main_trace exited with {result.returncode}\n{result.log_tail()}"
            return result

        yield run


@pytest.fixture(scope="module")
def trace_run(cpu_job, tmp_path_factory):
    hdfs = tmp_path_factory.mktemp("hdfs")
    run = cpu_job("trace", "trace", "trainer.save_freq=1", "trainer.max_actor_ckpt_to_keep=2",
                  f"trainer.default_hdfs_dir={hdfs}", "actor_rollout_ref.rollout.agent.num_workers=2",
                  "trainer.test_freq=3")
    run.hdfs = hdfs
    return run


@pytest.fixture(scope="module")
def grpo_run(cpu_job):
    return cpu_job("grpo", "grpo")


@pytest.fixture(scope="module")
def tree_grpo_run(cpu_job):
    return cpu_job("tree_grpo", "tree_grpo")


def _trained(run, steps=(1, 2, 3), some_signal: bool = True) -> list[dict]:
    """Every step trained: a finite gradient, non-zero exactly when some advantage is (no KL or
    entropy term in cpu_tiny, so a step whose groups all tied has nothing to learn), and the
    rollout's token probabilities are the actor's (weights synced after every update)."""
    rows = run.step_metrics()
    assert [r["step"] for r in rows] == list(steps), rows
    for r in rows:
        g = r["actor/grad_norm"]
        signal = max(abs(r["critic/advantages/max"]), abs(r["critic/advantages/min"])) > 0
        assert g is not None and math.isfinite(g) and (g > 0) == signal, (r["step"], g, signal)
        assert r["training/rollout_probs_diff_max"] < SYNC_BOUND, (r["step"], r["training/rollout_probs_diff_max"])
    assert any(r["actor/grad_norm"] > 0 for r in rows) or not some_signal
    return rows


def _trees(rows: list[dict]) -> None:
    """Multi-turn trees that branch below the root somewhere in the run."""
    assert max(r["trace/adv/depth/mean"] for r in rows) > 1.0
    assert sum(r["trace/adv/branch_points/mean"] for r in rows) > 0
    assert all(r["trace/leaves_failed"] == 0 for r in rows)


def test_trace_trains(trace_run):
    rows = _trained(trace_run)
    _trees(rows)
    for r in rows:
        assert r["trace/leaves"] == r["plan/budget_leaves"] == 2 * 4  # 2 roots x rollout.n, on 2 workers
        assert r["trace/pool/prompts"] == 4 and r["trace/pool/roots"] == 2  # chosen from the whole pool of 4
        assert r["predictor/updates_total"] >= r["step"]
        assert "trace/adv/mixed_tree_ratio" in r and "trace/informative_comparisons" in r
    # verl's validation (test_freq=3) through the TRACE manager: plain greedy chains on the held-out split
    assert any(k.startswith("val-core/") for k in rows[-1]), sorted(k for k in rows[-1] if k.startswith("val"))


def test_trace_checkpoints_follow_verls_settings(trace_run):
    ckpt = trace_run.checkpoints
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == "3"
    # max_actor_ckpt_to_keep=2: verl dropped step 1's actor, the predictor file went with it
    assert not (ckpt / "global_step_1" / "actor").exists() and not (ckpt / "global_step_1" / "trace_predictor.pt").exists()
    for step in (2, 3):
        assert (ckpt / f"global_step_{step}" / "actor").is_dir()
        assert (ckpt / f"global_step_{step}" / "trace_predictor.pt").is_file()
    # default_hdfs_dir: every save copied (verl prunes only local checkpoints)
    assert all((trace_run.hdfs / f"global_step_{s}" / "trace_predictor.pt").is_file() for s in (1, 2, 3))


def test_grpo_trains(grpo_run):
    rows = _trained(grpo_run)
    assert all(r["trace/branch_points"] == 0 and r["trace/leaves"] == 8 for r in rows)  # independent chains


def test_tree_grpo_trains(tree_grpo_run):
    _trees(_trained(tree_grpo_run))


def test_without_weight_sync_the_rollout_drifts(cpu_job):
    """The negative control that makes the SYNC_BOUND assertions above falsifiable."""
    run = cpu_job("nosync", "grpo", "trainer.total_training_steps=2",
                  "+actor_rollout_ref.rollout.engine_kwargs.hf.sync_weights=false")
    rows = run.step_metrics()
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[0]["training/rollout_probs_diff_max"] < SYNC_BOUND  # both still on the initial weights
    assert rows[1]["training/rollout_probs_diff_max"] > SYNC_BOUND  # the actor moved, the rollout did not


def test_resume_after_a_crash_continues_at_step_3_with_the_saved_predictor(cpu_job, trace_run, tmp_path):
    workdir = tmp_path / "resumed"
    shutil.copytree(trace_run.checkpoints, workdir / "checkpoints")
    shutil.rmtree(workdir / "checkpoints" / "global_step_3")  # killed during step 3, after saving step 2
    (workdir / "checkpoints" / "latest_checkpointed_iteration.txt").write_text("2")
    run = cpu_job("resumed", "trace", "trainer.save_freq=1", "actor_rollout_ref.rollout.agent.num_workers=2",
                  workdir=workdir)
    log = run.log.read_text(errors="replace")
    assert "Resuming from" in log and "global_step_2" in log and "restored TRACE predictor state" in log
    (resumed,) = _trained(run, steps=(3,), some_signal=False)
    (original,) = [r for r in trace_run.step_metrics() if r["step"] == 3]
    # The predictor's estimates for step 3's pool, before its step-3 update: the saved state's.
    for key in ("trace/pool/p_hat/mean", "trace/pool/p_hat/min", "trace/pool/p_hat/max", "trace/pool/root_p_hat/mean"):
        assert resumed[key] == pytest.approx(original[key], abs=1e-9), key
    assert resumed["predictor/updates_total"] == original["predictor/updates_total"]
    assert (workdir / "checkpoints" / "global_step_3" / "trace_predictor.pt").is_file()
