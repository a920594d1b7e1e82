"""The QA reward: SQuAD normalization, EM/F1, the format check, and loading through verl's hook."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from omegaconf import OmegaConf

from verl_trace.rewards.qa_em import (
    compute_score,
    em_score,
    extract_answer,
    f1_score,
    format_ok,
    gold_answers,
    normalize_answer,
)

words = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789 .,!?'-", max_size=40)
answer_text = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789 ", min_size=1, max_size=30).filter(
    lambda s: normalize_answer(s))


@pytest.mark.parametrize(
    "raw, expected",
    [("The Eiffel Tower!", "eiffel tower"), ("  an   apple, a pear ", "apple pear"), ("U.S.A.", "usa"),
     ("Theory of the Leisure Class", "theory of leisure class"), ("", "")],
)
def test_normalization_matches_squad(raw, expected):
    assert normalize_answer(raw) == expected


@given(words)
def test_normalization_is_idempotent(text):
    assert normalize_answer(normalize_answer(text)) == normalize_answer(text)


@given(answer_text)
def test_em_ignores_case_articles_punctuation_and_spacing(answer):
    assert em_score(f"  The {answer.upper()} !! ", [answer]) == 1.0
    assert f1_score(f"The {answer}.", [answer]) == 1.0


@given(words, st.lists(words, min_size=1, max_size=3))
def test_f1_is_a_fraction_and_at_least_em(prediction, targets):
    f1 = f1_score(prediction, targets)
    assert 0.0 <= f1 <= 1.0 and f1 >= em_score(prediction, targets)


def test_f1_partial_overlap():
    assert f1_score("Kogridale city", ["Kogridale"]) == pytest.approx(2 / 3)
    assert f1_score("nothing here", ["Kogridale"]) == 0.0


@pytest.mark.parametrize(
    "text, ok",
    [("<answer>Paris</answer>", True),
     ("<think>need search</think>\n<tool_call>{}</tool_call> ... <think>found</think> <answer> Paris </answer>\n", True),
     ("<answer>Paris</answer> and more", False),  # something after the final answer
     ("<answer>Rome</answer> no, <answer>Paris</answer>", False),  # hedging with two answers
     ("<answer></answer>", False),  # empty answer
     ("<think><answer>Paris</answer></think>", False),  # nested
     ("<think>x <answer>Paris</answer>", False),  # unclosed think
     ("</answer><answer>Paris</answer>", False),  # close before open
     ("Paris", False)],
)
def test_format_check(text, ok):
    assert format_ok(text) is ok


@given(st.lists(answer_text, max_size=5), answer_text)
def test_thinking_blocks_then_one_answer_are_well_formed(thoughts, final):
    text = "".join(f"<think>{t}</think>\n<tool_call>...</tool_call>\n" for t in thoughts) + f"<answer>{final}</answer>"
    assert format_ok(text)
    assert not format_ok(text[: -len("</answer>")])
    assert extract_answer(text) == final.strip()


def test_score_uses_the_last_answer_and_reports_extras():
    out = compute_score("mini", "<answer>Gemmar</answer> wait <answer>Fotreia</answer>", {"target": ["fotreia"]})
    assert out == {"score": 1.0, "em": 1.0, "f1": 1.0, "format_ok": 0.0, "has_answer": 1.0}
    missing = compute_score("mini", "I think it is Fotreia.", {"target": ["Fotreia"]})
    assert missing["score"] == 0.0 and missing["has_answer"] == 0.0


def test_format_score_and_strict_format():
    wrong = "<think>hm</think><answer>Gemmar</answer>"
    assert compute_score("mini", wrong, ["Fotreia"], format_score=0.1)["score"] == 0.1
    right_but_messy = "<answer>Fotreia</answer> trailing"
    assert compute_score("mini", right_but_messy, ["Fotreia"])["score"] == 1.0
    assert compute_score("mini", right_but_messy, ["Fotreia"], strict_format=True)["score"] == 0.0


@pytest.mark.parametrize("truth", [{"target": np.array(["a", "b"], dtype=object)}, {"target": ["a", "b"]},
                                   ["a", "b"], np.array(["a", "b"])])
def test_ground_truth_shapes(truth):
    assert gold_answers(truth) == ["a", "b"]


@pytest.mark.parametrize("truth", [{"target": []}, {}, None, {"target": [None]}])
def test_bad_ground_truth_names_the_field(truth):
    with pytest.raises(ValueError, match="reward_model.ground_truth.target"):
        compute_score("mini", "<answer>a</answer>", truth)


def test_loads_through_verls_custom_reward_function_hook():
    from verl.trainer.ppo.reward import get_custom_reward_fn

    cfg = OmegaConf.create({"reward": {"custom_reward_function": {
        "path": "pkg://verl_trace.rewards.qa_em", "name": "compute_score", "reward_kwargs": {"format_score": 0.2}}}})
    fn = get_custom_reward_fn(cfg)
    result = fn(data_source="mini", solution_str="<answer>Gemmar</answer>", ground_truth={"target": ["Fotreia"]},
                extra_info={"index": 0})
    assert result["score"] == 0.2 and result["em"] == 0.0
