import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from verl_trace.config import PredictorConfig
from verl_trace.predictor import (
    AnchorBatch,
    AnchorFeaturizer,
    BetaPredictor,
    EnsemblePredictor,
    HashedNgramEncoder,
    HybridPredictor,
    OraclePredictor,
    Prediction,
    auc,
    brier,
    build_featurizer,
    build_predictor,
    ece,
)
from verl_trace.predictor.featurize import N_NUMERIC
from verl_trace.tree import ROOT, RolloutTree


def test_calibration_metrics_against_definitions():
    p = np.array([0.1, 0.4, 0.35, 0.8, 0.8])
    y = np.array([0, 0, 1, 1, 0])
    assert brier(p, y) == pytest.approx(np.mean((p - y) ** 2))
    pairs = [(i, j) for i in range(5) for j in range(5) if y[i] == 1 and y[j] == 0]
    brute = np.mean([1.0 if p[i] > p[j] else 0.5 if p[i] == p[j] else 0.0 for i, j in pairs])
    assert auc(p, y) == pytest.approx(brute)
    # ECE with 10 equal-width bins: {0.1}, {0.35}, {0.4}, {0.8, 0.8}.
    expected = (abs(0.1 - 0) + abs(0.35 - 1) + abs(0.4 - 0) + 2 * abs(0.8 - 0.5)) / 5
    assert ece(p, y) == pytest.approx(expected)
    assert np.isnan(auc(p, np.ones(5)))


def test_beta_predictor_discounted_updates():
    pred = BetaPredictor(alpha0=1.0, beta0=1.0, discount=0.5, decay_by="visits")
    b = AnchorBatch(keys=["k", "k", "k"])
    pred.update(b, np.array([1.0, 1.0, 0.0]))
    out = pred.predict(AnchorBatch(keys=["k", "unseen"]))
    # alpha = 0.5*1 + 0.5*1 + 2 = 3, beta = 1 + 1 = 2.
    assert out.p[0] == pytest.approx(3 / 5)
    assert out.p[1] == pytest.approx(0.5)
    pred.update(AnchorBatch(keys=["k"]), np.array([0.0]))
    # alpha = 0.5*3 + 0.5 = 2, beta = 0.5*2 + 0.5 + 1 = 2.5
    assert pred.predict(AnchorBatch(keys=["k"])).p[0] == pytest.approx(2 / 4.5)
    assert out.std[1] == pytest.approx(np.sqrt(1 / 12))


def test_beta_predictor_bounds_memory():
    pred = BetaPredictor(max_keys=3)
    pred.update(AnchorBatch(keys=[f"k{i}" for i in range(10)]), np.ones(10))
    assert pred.state_dict()["ab"].shape == (3, 2)


def _task(n: int, seed: int):
    """Features whose first coordinate drives success: a learnable, shared structure."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    p = 1 / (1 + np.exp(-2.5 * x[:, 0]))
    y = (rng.random(n) < p).astype(float)
    return AnchorBatch(keys=[f"s{seed}-{i}" for i in range(n)], features=x), y, p


def test_shared_predictor_generalizes_to_unseen_anchors():
    pred = EnsemblePredictor(members=4, hidden=16, steps_per_update=60, seed=0)
    for step in range(6):
        b, y, _ = _task(400, seed=step)
        metrics = pred.update(b, y)
    assert metrics["predictor/shared_loss"] < 0.6
    test, y, p_true = _task(2000, seed=99)  # anchors never seen
    out = pred.predict(test)
    assert auc(out.p, y) > 0.8
    assert np.corrcoef(out.p, p_true)[0, 1] > 0.9
    assert np.all(out.std >= 0) and out.std.mean() > 0


def test_shared_predictor_uncertainty_is_prior_before_training():
    pred = EnsemblePredictor()
    out = pred.predict(_task(5, 0)[0])
    assert np.allclose(out.p, 0.5) and np.allclose(out.std, 0.5 / np.sqrt(3))
    with pytest.raises(ValueError, match="features"):
        pred.predict(AnchorBatch(keys=["a"]))


@pytest.mark.parametrize("kind", ["beta", "shared", "hybrid"])
def test_state_dict_round_trip_gives_identical_predictions(kind):
    cfg = PredictorConfig(kind=kind, members=3, hidden=8, steps_per_update=10)
    a = build_predictor(cfg)
    for step in range(2):
        b, y, _ = _task(100, step)
        a.update(b, y)
    test = _task(50, 7)[0]
    test.keys = [f"s0-{i}" for i in range(50)]  # keys the Beta part has seen
    b_ = build_predictor(cfg)
    b_.load_state_dict(a.state_dict())
    np.testing.assert_allclose(b_.predict(test).p, a.predict(test).p)
    # Training continues identically (optimizer and RNG state restored).
    nb, ny, _ = _task(60, 11)
    a.update(nb, ny)
    b_.update(nb, ny)
    np.testing.assert_allclose(b_.predict(test).p, a.predict(test).p, rtol=1e-6)


def test_hybrid_combines_shared_prior_with_key_evidence():
    shared = EnsemblePredictor(members=3, hidden=8)
    hyb = HybridPredictor(shared, BetaPredictor(discount=1.0), kappa_max=10.0)
    b = AnchorBatch(keys=["p"] * 20, features=np.zeros((20, 3), np.float32))
    prior = hyb.predict(b.select([0]))
    assert prior.p[0] == pytest.approx(0.5)
    hyb.update(b, np.ones(20))  # the prompt always succeeds
    post = hyb.predict(AnchorBatch(keys=["p", "q"], features=np.zeros((2, 3), np.float32)))
    assert post.p[0] > 0.8 and post.p[0] > post.p[1] + 0.1


def test_beta_params_moment_matching_and_oracle():
    pr = Prediction(p=np.array([0.3]), std=np.array([0.1]))
    a, b = pr.beta_params(kappa_max=1e9)
    assert a / (a + b) == pytest.approx(0.3)
    assert np.sqrt(a * b / ((a + b) ** 2 * (a + b + 1))) == pytest.approx(0.1)
    orc = OraclePredictor()
    assert orc.predict(AnchorBatch(keys=["x"], true_p=np.array([0.7]))).p[0] == 0.7
    with pytest.raises(ValueError, match="simulator"):
        orc.predict(AnchorBatch(keys=["x"]))


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="outcomes"):
        BetaPredictor().update(AnchorBatch(keys=["a"]), np.array([1.5]))
    with pytest.raises(ValueError, match="shape"):
        AnchorBatch(keys=["a", "b"], features=np.zeros((3, 2)))
    with pytest.raises(ValueError, match="discount"):
        BetaPredictor(discount=2.0)


def _tree() -> RolloutTree:
    t = RolloutTree("t", [1, 2], "who founded the blue company")
    a = t.add_turn(ROOT, [5, 6], [7], text="search blue company", obs_text="Doc 1: Blue was founded by Ann", action_logprobs=[-0.2, -0.4], tool_calls=1)
    t.add_turn(a, [8], [], text="<answer>Ann</answer>", action_logprobs=[-0.1])
    return t


def test_hashed_featurizer_is_incremental_and_deterministic():
    fz = AnchorFeaturizer(HashedNgramEncoder(32), max_turns=4)
    t = _tree()
    x = fz.featurize(t, [0, 1, 2])
    assert x.shape == (3, fz.dim) and np.all(np.isfinite(x))
    fresh = AnchorFeaturizer(HashedNgramEncoder(32), max_turns=4).featurize(_tree(), [2])
    np.testing.assert_array_equal(fresh[0], x[2])
    assert not np.array_equal(x[1], x[2])
    # Same features in a fresh interpreter (crc32 hashing, not Python's salted hash()).
    code = (
        "import numpy as np;from verl_trace.predictor import HashedNgramEncoder as H;"
        "print(repr(H(32).encode(['search blue company'])[0].tolist()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert eval(out) == HashedNgramEncoder(32).encode(["search blue company"])[0].tolist()


@pytest.mark.slow
def test_embedding_featurizer_loads_local_model_offline():
    fz = build_featurizer(PredictorConfig(featurizer="embedding"), max_turns=4)
    x = fz.featurize(_tree(), [0, 2])
    assert x.shape == (2, 3 * 384 + N_NUMERIC)
    assert np.all(np.isfinite(x))


def _snapshot_batch(seed: int) -> tuple[AnchorBatch, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(64, 6)).astype(np.float32)
    return AnchorBatch(keys=[f"k{i}" for i in range(64)], features=x), (x[:, 0] > 0).astype(float)


def test_state_dict_is_a_snapshot_not_live_optimizer_tensors():
    a = EnsemblePredictor(members=3, hidden=8, steps_per_update=5, seed=1)
    a.update(*_snapshot_batch(0))
    state = a.state_dict()
    b, c = EnsemblePredictor(members=3, hidden=8, steps_per_update=5), EnsemblePredictor(members=3, hidden=8, steps_per_update=5)
    b.load_state_dict(state)
    a.update(*_snapshot_batch(1))  # training the original must not touch the snapshot...
    c.load_state_dict(state)
    probe, _ = _snapshot_batch(2)
    assert np.array_equal(b.predict(probe).p, c.predict(probe).p)
    b.update(*_snapshot_batch(1))  # ...and a restored copy continues exactly like the original did
    assert np.array_equal(a.predict(probe).p, b.predict(probe).p)
    c.update(*_snapshot_batch(3))  # nor may two restored copies share optimizer tensors
    b2 = EnsemblePredictor(members=3, hidden=8, steps_per_update=5)
    b2.load_state_dict(state)
    b2.update(*_snapshot_batch(1))
    assert np.array_equal(b.predict(probe).p, b2.predict(probe).p)


def test_beta_evidence_decays_with_elapsed_steps():
    """Evidence from k training steps ago weighs discount**k, whether or not the key was seen since
    (decay_by: steps); with decay_by: visits it keeps full weight until the key returns."""
    steps, visits = BetaPredictor(discount=0.5), BetaPredictor(discount=0.5, decay_by="visits")
    for pred in (steps, visits):
        pred.update(AnchorBatch(keys=["k"] * 4), np.ones(4))  # step 0: 4 successes
        for _ in range(3):  # three steps that never see "k"
            pred.update(AnchorBatch(keys=["other"]), np.zeros(1))
    # four updates since: 4 * 0.5**4 = 0.25 pseudo-successes left
    assert steps.evidence(["k"])[0][0] == pytest.approx(0.25)
    assert visits.evidence(["k"])[0][0] == pytest.approx(4.0)
    # A new observation adds to the decayed evidence, and the state round-trips.
    steps.update(AnchorBatch(keys=["k"]), np.zeros(1))
    s, f = steps.evidence(["k"])
    assert (s[0], f[0]) == (pytest.approx(0.125), pytest.approx(0.5))
    clone = BetaPredictor()
    clone.load_state_dict(steps.state_dict())
    assert clone.predict(AnchorBatch(keys=["k", "other"])).p == pytest.approx(steps.predict(AnchorBatch(keys=["k", "other"])).p)


def test_beta_step_decay_tracks_a_drifting_policy():
    """A prompt whose success rate drifts from 0.1 to 0.9 while it is seen only every 8 steps: with
    decay by steps the posterior follows the drift; with decay by visits it lags behind."""
    rng = np.random.default_rng(0)
    err = {}
    for mode in ("steps", "visits"):
        pred = BetaPredictor(discount=0.8, decay_by=mode)
        errors = []
        for step in range(160):
            p = 0.1 + 0.8 * step / 159
            if step % 8 == 0:
                errors.append(abs(pred.predict(AnchorBatch(keys=["k"])).p[0] - p))
                pred.update(AnchorBatch(keys=["k"] * 8), (rng.random(8) < p).astype(float))
            else:
                pred.update(AnchorBatch(keys=[f"x{step}"]), np.zeros(1))
        err[mode] = float(np.mean(errors[5:]))
    assert err["steps"] < 0.75 * err["visits"], err


def test_shared_model_follows_row_weights():
    """Rows of weight 0 never reach the buffer, and weights tilt the fit: the same features seen
    with outcome 1 at weight 3 and outcome 0 at weight 1 are predicted near 3/4."""
    x = np.zeros((80, 3), np.float32)
    y = np.r_[np.ones(40), np.zeros(40)]
    pred = EnsemblePredictor(members=2, hidden=8, steps_per_update=150, lr=0.05)
    pred.update(AnchorBatch(keys=["k"] * 80, features=x, weight=np.r_[np.full(40, 3.0), np.ones(40)]), y)
    pred.update(AnchorBatch(keys=["j"] * 10, features=x[:10], weight=np.zeros(10)), np.zeros(10))
    assert pred.state_dict()["buffer_y"].shape == (80,)
    assert pred.predict(AnchorBatch(keys=["k"], features=x[:1])).p[0] == pytest.approx(0.75, abs=0.06)
    with pytest.raises(ValueError, match="weight"):
        AnchorBatch(keys=["a"], weight=np.array([-1.0]))


def test_shared_predictor_is_finite_and_silent_for_extreme_logits():
    """Features far outside the training range give logits of thousands: probabilities stay in
    [0, 1] without numpy's overflow warning (an error in this suite, see pyproject.toml)."""
    from verl_trace.predictor.shared import sigmoid

    x = np.array([-1000.0, -50.0, 0.0, 50.0, 1000.0])
    np.testing.assert_array_equal(sigmoid(x)[[0, 2, 4]], [0.0, 0.5, 1.0])
    np.testing.assert_allclose(sigmoid(x)[[1, 3]], [np.exp(-50.0), 1.0], rtol=1e-12)
    pred = EnsemblePredictor(members=3, hidden=8, steps_per_update=20)
    b, y, _ = _task(200, 0)
    pred.update(b, y)
    far = AnchorBatch(keys=["far-", "far+"], features=np.stack([b.features[0] * 1e6, -b.features[0] * 1e6]))
    out = pred.predict(far)
    assert np.all((out.p >= 0) & (out.p <= 1)) and np.all(np.isfinite(out.std))


@pytest.mark.parametrize("kind", ["beta", "shared", "hybrid", "oracle", "service"])
def test_update_on_an_empty_batch_is_a_no_op(kind):
    """A step whose leaves all failed trains on nothing: every predictor returns no metrics and
    keeps its state, before and after it has learned anything."""
    from verl_trace.predictor.service import PredictorService

    cfg = PredictorConfig(kind="hybrid" if kind in ("oracle", "service") else kind, members=2, hidden=4, steps_per_update=5)
    pred = {"oracle": lambda: OraclePredictor(), "service": lambda: PredictorService(cfg)}.get(kind, lambda: build_predictor(cfg))()
    empty = AnchorBatch(keys=[], features=None)
    assert pred.update(empty, np.zeros(0)) == {}
    if kind == "oracle":
        return
    b, y, _ = _task(50, 1)
    pred.update(b, y)
    before = pred.predict(b).p
    assert pred.update(empty, np.zeros(0)) == {}
    np.testing.assert_array_equal(pred.predict(b).p, before)
    if kind == "service":
        assert pred.updates == 1


def test_featurizer_sees_what_the_observations_contained():
    """The numeric block says whether the observations mention the question's terms and entities,
    whether the last turn's tool call failed, and the policy's own log-probs and entropy."""
    from verl_trace.predictor.featurize import NUMERIC, question_terms

    terms, ents = question_terms("Who founded the Blue Lantern company in 1998?")
    assert ents == {"founded", "blue", "lantern", "1998"} - {"founded"} and "company" in terms and "who" not in terms
    t = RolloutTree("t", [1], "system: you are an agent\nWho founded the Blue Lantern company in 1998?")
    t.meta["question"] = "Who founded the Blue Lantern company in 1998?"
    hit = t.add_turn(ROOT, [5, 6], [7], text="search Blue Lantern", obs_text="Blue Lantern was founded in 1998 by Ann Poe.",
                     action_logprobs=[-0.2, -0.4], tool_calls=1, entropy=0.7)
    miss = t.add_turn(ROOT, [5], [7], text="search lantern", obs_text="Error: unknown tool", tool_calls=1, tool_errors=1,
                      action_logprobs=[-2.0])
    deeper = t.add_turn(hit, [9], [7], text="search Ann Poe", obs_text="Ann Poe is a painter.", action_logprobs=[-1.0], tool_calls=1)
    fz = AnchorFeaturizer(HashedNgramEncoder(16), max_turns=4)
    x = fz.featurize(t, [ROOT, hit, miss, deeper])
    num = {name: x[:, 3 * 16 + k] for k, name in enumerate(NUMERIC)}
    assert x.shape == (4, fz.dim) and np.isfinite(x).all()
    assert num["entities_last"][1] == pytest.approx(1.0) and num["entities_last"][2] == 0.0
    assert num["question_terms_last"][3] == 0.0 and num["question_terms_seen"][3] == num["question_terms_seen"][1] > 0
    assert num["entities_seen"][3] == pytest.approx(1.0)  # found earlier on the path
    assert (num["last_tool_error"][2], num["tool_errors"][2], num["last_tool_error"][1]) == (1.0, pytest.approx(np.log1p(1)), 0.0)
    assert num["last_logprob"][1] == pytest.approx(-0.3) and num["mean_logprob"][3] == pytest.approx((-0.3 - 1.0) / 2)
    assert (num["last_entropy"][1], num["entropy_reported"][1], num["entropy_reported"][2]) == (pytest.approx(0.7), 1.0, 0.0)
    assert num["similarity_last"][1] > num["similarity_last"][2]  # the hit shares words with the prompt
    assert num["is_root"].tolist() == [1.0, 0.0, 0.0, 0.0]
    # Computed once: a node's vector is stored, and a second call returns it unchanged.
    again = fz.featurize(t, [deeper])
    np.testing.assert_array_equal(again[0], x[3])


def test_quality_by_step_reads_a_runs_logged_calibration(tmp_path):
    from verl_trace.predictor.calibration import quality_by_step

    records = [{"step": i, "predictor/hybrid_brier": 0.25 - 0.01 * i, "predictor/hybrid_ece": 0.1,
                "predictor/hybrid_auc": 0.5 + 0.05 * i} for i in range(6)]
    records.insert(0, {"step": -1})  # a step with nothing logged is skipped
    q = quality_by_step(records)
    assert len(q["per_step"]) == 6 and q["steps"] == 7
    assert q["after_first_third"]["auc"] == pytest.approx(np.mean([0.5 + 0.05 * i for i in range(3, 6)]))
    report = tmp_path / "report.json"
    report.write_text(__import__("json").dumps({"allocator": "trace", "curves": {"train": records}}))
    out = subprocess.run([sys.executable, "benchmarks/predictor_quality.py", str(report)], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0 and "after the first third" in out.stdout and "auc 0.700" in out.stdout
