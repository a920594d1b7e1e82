"""The job-wide predictor: the service itself, then as a named Ray actor whose state is saved into
verl's ``global_step_N`` folder by the TRACE trainer and restored by a restarted job."""

from __future__ import annotations

import numpy as np
import pytest

from verl_trace.config import PredictorConfig, TraceConfig
from verl_trace.predictor import AnchorBatch, build_featurizer
from verl_trace.predictor.service import STATE_FILE, PredictorService
from verl_trace.tree import RolloutTree

PREDICTOR = {"members": 3, "hidden": 16, "steps_per_update": 10, "feature_dim": 16}


def anchors(seed: int, n: int = 24) -> tuple[AnchorBatch, np.ndarray]:
    """Roots and first-turn prefixes of real trees, featurized the way rollout workers do;
    prompts about 'rivers' succeed, the rest fail (learnable from the text)."""
    rng = np.random.default_rng(seed)
    featurizer = build_featurizer(PredictorConfig(**PREDICTOR), max_turns=3)
    keys, feats, ys = [], [], []
    for i in range(n):
        topic = ["rivers", "stars", "kings"][int(rng.integers(3))]
        tree = RolloutTree(f"s{seed}-{i}", [1, 2], f"question {i} about {topic}", key=f"k{seed}-{i}")
        node = tree.add_turn(0, [5, 6, 7], [8], text=f"search {topic}", obs_text=f"passage on {topic}", tool_calls=1)
        feats.append(featurizer.featurize(tree, [0, node]))
        keys += [tree.key, f"{tree.key}/1"]
        ys += [float(topic == "rivers")] * 2
    return AnchorBatch(keys=keys, features=np.concatenate(feats)), np.asarray(ys)


def test_update_predict_and_metrics():
    svc = PredictorService(PREDICTOR)
    batch, y = anchors(0)
    before = svc.predict(batch).p
    assert np.allclose(before, 0.5)  # nothing learned yet: the uniform prior
    svc.update(batch, y)
    svc.update(*anchors(1))
    m = svc.pop_metrics()
    assert m["predictor/updates_total"] == 2 and m["predictor/anchors"] == 96
    assert {"predictor/brier", "predictor/ece", "predictor/auc", "predictor/success_rate"} <= set(m)
    assert 0.0 < m["predictor/brier"] <= 0.25 + 1e-9  # scored before each update; the first at the prior
    after = svc.predict(batch).p
    assert after[y == 1].mean() > after[y == 0].mean()  # it learned the topic
    assert set(svc.pop_metrics()) == {"predictor/updates_total", "predictor/anchors_total"}  # window restarted
    assert svc.update(AnchorBatch(keys=[]), np.zeros(0)) == {}


def test_state_round_trip_is_exact_and_deterministic():
    a = PredictorService(PREDICTOR)
    a.update(*anchors(0))
    b = PredictorService(PREDICTOR)
    b.load_state_dict(a.state_dict())
    probe, _ = anchors(5)
    assert np.array_equal(a.predict(probe).p, b.predict(probe).p)
    # Optimizer, replay buffer and RNG state came along: the next update is identical too.
    a.update(*anchors(1))
    b.update(*anchors(1))
    assert np.array_equal(a.predict(probe).p, b.predict(probe).p)
    assert b.updates == a.updates == 2


def test_restore_refuses_a_different_predictor():
    state = PredictorService(PREDICTOR).state_dict()
    with pytest.raises(ValueError, match="trace.predictor.feature_dim"):
        PredictorService({**PREDICTOR, "feature_dim": 32}).load_state_dict(state)
    with pytest.raises(ValueError, match="trace.predictor.kind"):
        PredictorService({**PREDICTOR, "kind": "beta"}).load_state_dict(state)


# ---------------------------------------------------------------------------- under Ray
@pytest.fixture(scope="module")
def ray_session(repo_root):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": str(repo_root)}})
    yield ray
    ray.shutdown()


def _trainer(tiny_model_dir, ckpt_dir, *overrides):
    """verl's sync V1 trainer with TRACE's mixin, built as TaskRunnerV1.run builds it (its
    constructor only; init() would start GPU worker groups)."""
    from verl.trainer.ppo.v1 import get_trainer_cls

    from verl_trace.trainer.config_check import prepare_trace_config
    from verl_trace.trainer.hydra_config import compose_config
    from verl_trace.trainer.trainer import trace_trainer_class

    cfg = compose_config(overrides=[
        f"actor_rollout_ref.model.path={tiny_model_dir}", "actor_rollout_ref.rollout.name=vllm",
        "actor_rollout_ref.rollout.n=4", "actor_rollout_ref.rollout.multi_turn.max_assistant_turns=3",
        f"trainer.default_local_dir={ckpt_dir}", *[f"trace.predictor.{k}={v}" for k, v in PREDICTOR.items()],
        *overrides,
    ])
    prepare_trace_config(cfg)
    return trace_trainer_class(get_trainer_cls("sync"))(cfg)


def _stop(ray, trainer):
    """End the job's predictor actor and wait until its name is free again."""
    import time

    ray.kill(trainer.predictor)
    trainer.predictor = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            ray.get_actor("verl_trace_predictor")
        except ValueError:
            return
        time.sleep(0.1)
    raise TimeoutError("the killed predictor actor kept its name")


@pytest.mark.slow
def test_checkpoint_round_trip_and_restart(ray_session, tiny_model_dir, tmp_path):
    from verl.utils.checkpoint.checkpoint_manager import (
        find_latest_ckpt_path,
        get_checkpoint_tracker_filename,
    )

    from verl_trace.predictor.service import PREDICTOR_ACTOR_NAME, RemotePredictor, get_predictor_actor

    ray = ray_session
    ckpt = tmp_path / "ckpt"
    first = _trainer(tiny_model_dir, ckpt)
    # A rollout worker finds the actor by name and trains it through the Predictor interface.
    worker_view = RemotePredictor(get_predictor_actor(PREDICTOR_ACTOR_NAME))
    worker_view.update(*anchors(0))
    probe, _ = anchors(7)
    trained = worker_view.predict(probe).p
    assert not np.allclose(trained, 0.5)
    assert ray.get(first.predictor.pop_metrics.remote())["predictor/updates_total"] == 1

    # Step 2's checkpoint: TRACE writes its file, then verl marks the folder as the latest.
    first.global_steps = 2
    first._save_trace_state()
    assert (ckpt / "global_step_2" / STATE_FILE).is_file()
    open(get_checkpoint_tracker_filename(str(ckpt)), "w").write("2")
    _stop(ray, first)

    # A restarted job (resume_mode=auto): a fresh actor, restored where verl's _load_checkpoint resumes.
    second = _trainer(tiny_model_dir, ckpt)
    assert np.allclose(RemotePredictor(second.predictor).predict(probe).p, 0.5)
    second.global_steps = int(find_latest_ckpt_path(str(ckpt)).split("global_step_")[-1])  # as verl does
    second._restore_trace_state()
    restored = RemotePredictor(second.predictor)
    assert np.array_equal(restored.predict(probe).p, trained)
    assert ray.get(second.predictor.pop_metrics.remote())["predictor/updates_total"] == 1
    # The restored predictor keeps learning from where it was.
    restored.update(*anchors(1))
    assert not np.array_equal(restored.predict(probe).p, trained)
    _stop(ray, second)

    # resume_mode=disable starts fresh; resuming a folder without TRACE state warns and starts fresh.
    fresh = _trainer(tiny_model_dir, ckpt, "trainer.resume_mode=disable")
    fresh.global_steps = 2
    fresh._restore_trace_state()
    assert np.allclose(RemotePredictor(fresh.predictor).predict(probe).p, 0.5)
    _stop(ray, fresh)
    (ckpt / "global_step_3").mkdir()
    other = _trainer(tiny_model_dir, ckpt, "trainer.resume_mode=resume_path", f"trainer.resume_from_path={ckpt}/global_step_3")
    other.global_steps = 3
    other._restore_trace_state()
    assert np.allclose(RemotePredictor(other.predictor).predict(probe).p, 0.5)
    _stop(ray, other)


@pytest.mark.slow
def test_one_predictor_per_job(ray_session, tiny_model_dir, tmp_path):
    from verl_trace.predictor.service import create_predictor_actor

    trainer = _trainer(tiny_model_dir, tmp_path)
    with pytest.raises(RuntimeError, match="already exists"):
        create_predictor_actor(TraceConfig())
    _stop(ray_session, trainer)
    # Allocators without a predictor start none.
    plain = _trainer(tiny_model_dir, tmp_path, "trace.allocator=tree_random")
    assert plain.predictor is None
