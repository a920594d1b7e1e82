"""The BFCL reward against BFCL's own ground truth: every ground-truth call sequence of the three
supported categories (600 entries), written the way our tools record calls, scores 1; the same
sequences corrupted score 0. Also: our environment's results equal BFCL's own executor's."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("bfcl_eval", reason="bfcl-eval is installed by `make venv` (pip install --no-deps)")

from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_utils import execute_multi_turn_func_call  # noqa: E402

from verl_trace.rewards.bfcl import compute_score, group_calls  # noqa: E402
from verl_trace.tasks.bfcl import MINI_TRAIN, MINI_VAL  # noqa: E402
from verl_trace.tools.bfcl import call_string, environment, package, parse_call, scenario  # noqa: E402

ALL = [(e, package.load_ground_truth(cat)[e["id"]]) for cat in package.CATEGORIES for e in package.load_entries(cat)]


def plan(entry, gt):
    env = environment(scenario(entry))
    return [[parse_call(c, env) for c in turn] for turn in gt]


def score(entry, gt, records, pending=0):
    extra = {"tools_kwargs": {"bfcl_scenario": scenario(entry)}, "bfcl_calls": records, "pending_user_turns": pending}
    return compute_score("bfcl", "", json.dumps(gt), extra)


def records(calls, one_step_per_call=False):
    return [[t, (i if one_step_per_call else 0), call_string(n, kw)] for t, turn in enumerate(calls)
            for i, (n, kw) in enumerate(turn)]


def test_every_ground_truth_scores_one_and_every_dropped_turn_zero():
    assert len(ALL) == 600
    for entry, gt in ALL:
        calls = plan(entry, gt)
        assert score(entry, gt, records(calls, one_step_per_call=bool(entry["id"].endswith("0"))))["score"] == 1.0, entry["id"]
        last = max(t for t, turn in enumerate(gt) if turn)
        dropped = [r for r in records(calls) if r[0] != last]
        result = score(entry, gt, dropped)
        assert result["score"] == 0.0 and result["empty_turn_model_response"] == 1.0, entry["id"]


def result_of(entry, calls, t, i):
    """The result of call ``i`` of turn ``t`` after all calls before it."""
    env = environment(scenario(entry))
    flat = [c for turn in calls[:t] for c in turn] + list(calls[t][: i + 1])
    return [env.execute(n, kw) for n, kw in flat][-1]


def test_cut_conversations_and_changed_arguments_score_zero():
    changed = 0
    for entry_id in MINI_TRAIN + MINI_VAL:
        entry = next(e for e, _ in ALL if e["id"] == entry_id)
        gt = package.load_ground_truth(package.category_of(entry_id))[entry_id]
        calls = plan(entry, gt)
        cut = score(entry, gt, records(calls), pending=1)
        assert cut["score"] == 0.0 and cut["force_terminated"] == 1.0
        # a wrong value in the last call that takes arguments; when that changes what the call
        # returns, BFCL's response check must fail (some changes are harmless to BFCL: ls(a=False)
        # where nothing is hidden, adding a stock already on the watchlist)
        t, i = next((t, i) for t in reversed(range(len(calls))) for i in reversed(range(len(calls[t]))) if calls[t][i][1])
        name, kw = calls[t][i]
        key = sorted(kw)[0]
        value = kw[key]
        wrong = (not value) if isinstance(value, bool) else value + 1 if isinstance(value, int | float) else str(value) + "x"
        bad = [list(turn) for turn in calls]
        bad[t][i] = (name, {**kw, key: wrong})
        if result_of(entry, bad, t, i) != result_of(entry, calls, t, i):
            changed += 1
            assert score(entry, gt, records(bad))["score"] == 0.0, entry_id
    assert changed >= 8


def test_environment_results_match_bfcl_executor():
    for entry_id in MINI_TRAIN + MINI_VAL:
        entry = next(e for e, _ in ALL if e["id"] == entry_id)
        gt = package.load_ground_truth(package.category_of(entry_id))[entry_id]
        ours = environment(scenario(entry))
        theirs_name = f"verl_trace_test_{entry_id}"
        for turn in gt:
            expected, _ = execute_multi_turn_func_call(turn, entry["initial_config"], entry["involved_classes"],
                                                       theirs_name, entry_id, long_context=False)
            got = [ours.execute(*parse_call(c, ours)) for c in turn]
            assert got == expected, entry_id


def test_group_calls_by_turn_and_message():
    recs = [[0, 1, "a()"], [0, 1, "b()"], [0, 3, "c()"], [2, 5, "d()"]]
    assert group_calls(recs, 3) == [[["a()", "b()"], ["c()"]], [], [["d()"]]]
    with pytest.raises(ValueError, match="user turn 4"):
        group_calls([[4, 1, "x()"]], 3)


def test_missing_scenario_is_a_clear_error():
    with pytest.raises(ValueError, match="bfcl_scenario"):
        compute_score("bfcl", "", "[[]]", {})
