"""Tree metadata as the trainer reads it from TransferQueue rows, and the scoped estimator binding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from verl_trace.protocol import TRACE_FIELD, TreeMeta, TreeMetaError, parse_tree_meta
from verl_trace.trainer.tree_advantage import TreeColumns, bound_estimator, row_uid, tree_batch_metrics


def meta(path, spans, status="ok", tree_uid="t"):
    return {TRACE_FIELD: {"tree_uid": tree_uid, "path": path, "spans": spans, "status": status}}


def test_tree_meta_round_trip():
    m = parse_tree_meta(meta([0, 1, 3], [[0, 5], [5, 9]], "truncated"), "row")
    assert m.path == [0, 1, 3] and m.spans == [(0, 5), (5, 9)] and m.status.value == "truncated"
    assert TreeMeta.model_validate(m.to_field()) == m


@pytest.mark.parametrize(
    "extra, needle",
    [
        ({}, "no 'trace' entry"),
        (None, "no 'trace' entry"),
        (meta([1, 2], [[0, 1]]), "path must start at the root"),
        (meta([0, 1, 2], [[0, 4]]), "1 spans for a path of 2 turns"),
        (meta([0, 1, 2], [[0, 4], [3, 6]]), "ordered, non-overlapping"),
        (meta([0, 1], [[0, 4]], status="lost"), "status"),
        (meta([0], []), "path"),
    ],
)
def test_malformed_metadata_is_named(extra, needle):
    with pytest.raises(TreeMetaError) as err:
        parse_tree_meta(extra, "TransferQueue row 'u_0_0'")
    assert "TransferQueue row 'u_0_0'" in str(err.value) and needle in str(err.value)


def test_columns_skip_padding_and_check_tree_identity():
    keys = ["a_0_0", "a_1_0", "b_0_0", "padx_0_0"]
    tags = [{}, {}, {}, {"is_padding": True}]
    rows = [meta([0, 1], [[0, 3]], tree_uid="a"), meta([0, 2], [[0, 4]], tree_uid="a"),
            meta([0, 1], [[0, 2]], "failed", tree_uid="b"), meta([0, 1], [[0, 3]], tree_uid="a")]
    cols = TreeColumns.from_rows(keys, tags, rows)
    kw = cols.estimator_kwargs()
    assert kw["tree_paths"] == [[0, 1], [0, 2], [0, 1], None]
    assert kw["turn_spans"][1] == [[0, 4]] and kw["turn_spans"][3] is None
    assert kw["leaf_status"] == ["ok", "ok", "failed", None]
    assert row_uid("3f2a-11_4_0") == "3f2a-11"

    rows[1] = meta([0, 2], [[0, 4]], tree_uid="other")
    with pytest.raises(TreeMetaError, match="must share one verl uid"):
        TreeColumns.from_rows(keys, tags, rows)


def test_bound_estimator_passes_extra_arguments_and_restores_the_registry():
    from verl.trainer.ppo import core_algos

    import verl_trace.plugin  # noqa: F401  (registers the estimators)

    original = core_algos.ADV_ESTIMATOR_REGISTRY["trace"]
    seen = []
    rewards = torch.tensor([[0.0, 1.0], [0.0, 0.0], [0.0, 0.0]])
    mask = torch.tensor([[1, 1], [1, 1], [0, 0]])
    extra = {"tree_paths": [[0, 1], [0, 2], None], "turn_spans": [[[0, 2]], [[0, 2]], None], "leaf_status": ["ok", "ok", None]}
    with bound_estimator("trace", extra, on_result=lambda kw, adv: seen.append((sorted(kw), adv))):
        fn = core_algos.get_adv_estimator_fn("trace")
        assert fn is not original
        adv, _ = fn(token_level_rewards=rewards, response_mask=mask, index=np.array(["u", "u", "pad"], dtype=object), config=None)
    assert core_algos.get_adv_estimator_fn("trace") is original
    assert seen and seen[0][0] == ["config", "index", "response_mask", "token_level_rewards"]
    assert adv[0, 0] > 0 > adv[1, 0] and torch.all(adv[2] == 0)

    def fail(*_):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"), bound_estimator("trace", {}, on_result=fail):
        core_algos.get_adv_estimator_fn("trace")(token_level_rewards=rewards, response_mask=mask, index=None, config=None)
    assert core_algos.get_adv_estimator_fn("trace") is original

    with pytest.raises(ValueError, match="not registered"), bound_estimator("no_such_estimator", {}):
        pass


def test_tree_batch_metrics():
    # Tree a: root branches into 1 and 2; node 1 branches into 3 and 4 -> 2 branch points, mixed.
    # Tree b: two chains with equal rewards -> 1 branch point (the root), not mixed. Then padding.
    keys = ["a_0_0", "a_1_0", "a_2_0", "b_0_0", "b_1_0", "pad_0_0"]
    rows = [meta([0, 1, 3], [[0, 1], [1, 2]], tree_uid="a"), meta([0, 1, 4], [[0, 1], [1, 2]], tree_uid="a"),
            meta([0, 2], [[0, 2]], "truncated", tree_uid="a"),
            meta([0, 1], [[0, 2]], tree_uid="b"), meta([0, 2], [[0, 2]], "failed", tree_uid="b"), meta([0, 1], [[0, 2]])]
    cols = TreeColumns.from_rows(keys, [{}] * 5 + [{"is_padding": True}], rows)
    index = [row_uid(k) for k in keys]
    rewards = torch.tensor([[0, 1.0], [0, 0], [0, 1.0], [0, 1.0], [0, 1.0], [0, 0]])
    mask = torch.tensor([[1, 1]] * 5 + [[0, 0]])
    adv = torch.tensor([[0.5, 0.5], [-1.0, -1.0], [0.5, 0.5], [0, 0], [0, 0], [0, 0]])
    m = tree_batch_metrics(cols, index, rewards, mask, adv)
    assert m["trace/adv/trees"] == 2
    assert (m["trace/adv/leaves_per_tree/max"], m["trace/adv/leaves_per_tree/min"]) == (3, 2)
    assert m["trace/adv/branch_points/mean"] == 1.5
    assert m["trace/adv/mixed_tree_ratio"] == 0.5
    assert m["trace/adv/effective_ratio"] == pytest.approx(3 / 5)
    assert m["trace/adv/depth/mean"] == pytest.approx((2 + 2 + 1 + 1 + 1) / 5)
    assert m["trace/adv/failed_leaf_ratio"] == pytest.approx(1 / 5)
    assert m["trace/adv/truncated_leaf_ratio"] == pytest.approx(1 / 5)
