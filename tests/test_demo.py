"""The CPU demo (verl_trace.demo): the teacher's mistakes, settings, checkpoints and the tree
rendering here; the whole ``--quick`` job (real server, model, agent loop, RL updates),
interrupted and resumed, in the slow test."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from verl_trace.demo import checkpoint, render
from verl_trace.demo.demonstrations import Teacher, answer_text, search_text
from verl_trace.demo.settings import TeacherSettings, make_settings
from verl_trace.demo.world import load_split
from verl_trace.tree import LeafStatus, RolloutTree

ROOT = Path(__file__).resolve().parents[1]

OBS = 'Doc 1(Title: "{t}") {t} was born in Brumar. {t} founded Kavaixtek.'


@pytest.fixture(scope="module")
def train():
    return load_split("train")


def three_hop(train):
    return next(q for q in train if q.hops == 3)


def test_teacher_without_mistakes_follows_the_gold_chain(train):
    q = three_hop(train)
    teacher = Teacher({x.question: x for x in train}, TeacherSettings(wrong_first_query=0, wrong_entity=0,
                      premature_answer=0, wrong_answer=0), max_turns=5)
    queries, observations = [], []
    for turn in range(q.hops):
        action = teacher.act(q, queries, observations, turn, random.Random(turn))
        assert action == search_text(q.chain[turn]["query"])
        queries.append(q.chain[turn]["query"])
        observations.append(OBS.format(t=q.chain[turn]["query"]))
    assert teacher.act(q, queries, observations, q.hops, random.Random(0)) == answer_text(q.answers[0])


def test_teacher_makes_each_mistake_it_is_told_to(train):
    q = three_hop(train)
    questions = {x.question: x for x in train}
    wrong_first = Teacher(questions, TeacherSettings(wrong_first_query=1.0), max_turns=5)
    first = wrong_first.act(q, [], [], 0, random.Random(0))
    assert first.startswith("<tool_call>") and first != search_text(q.chain[0]["query"])
    premature = Teacher(questions, TeacherSettings(premature_answer=1.0), max_turns=5)
    obs = [OBS.format(t=q.topic)]
    assert premature.act(q, [q.topic], obs, 1, random.Random(0)) == answer_text(q.chain[0]["finds"])
    # after a wrong search: recover (search the right entity) or answer from the wrong passage
    recover = Teacher(questions, TeacherSettings(recover=1.0), max_turns=5)
    assert recover.act(q, ["Nobody"], [OBS.format(t="Nobody")], 1, random.Random(0)) == search_text(q.topic)
    give_up = Teacher(questions, TeacherSettings(recover=0.0), max_turns=5)
    assert give_up.act(q, ["Nobody"], [OBS.format(t="Nobody")], 1, random.Random(0)) == answer_text("Brumar")
    # the loop's last allowed turn always answers
    assert Teacher(questions, TeacherSettings(), max_turns=2).act(q, [q.topic], obs, 1, random.Random(0)).startswith("<answer>")


def test_settings_name_the_bad_field():
    with pytest.raises(ValueError, match="rl.leaves_per_prompt"):
        make_settings(overrides={"rl": {"leaves_per_prompt": 1}})
    with pytest.raises(ValueError, match="rl.stepz"):
        make_settings(overrides={"rl": {"stepz": 3}})
    s = make_settings(quick=True, allocator="tree_random", seed=3)
    assert s.estimator == "tree_grpo" and s.trace.seed == 3 and s.leaves_per_step == 16


def test_entropy_trains_with_flat_grpo_over_the_tree():
    """ARPO's pairing (``EntropyAllocator.estimator``): GRPO over all leaves of a tree as one group,
    i.e. verl's GRPO on the same rows, whatever the tree's shape (failed leaves aside)."""
    import numpy as np
    import torch
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

    from verl_trace.config import AdvantageConfig
    from verl_trace.demo.learner import LeafBatch, compute_advantages

    assert make_settings(allocator="entropy").estimator == "grpo"
    mask = torch.ones(4, 3)
    rewards = torch.zeros(4, 3)
    rewards[:, -1] = torch.tensor([1.0, 0.0, 0.0, 1.0])
    batch = LeafBatch(prompts=[[1]] * 4, responses=[[1, 2, 3]] * 4, response_mask=mask, old_log_probs=torch.zeros(4, 3),
                      token_level_rewards=rewards, index=np.array(["t"] * 4, dtype=object),
                      tree_paths=[[0, 1, 2], [0, 1, 3], [0, 1, 4], [0, 5]],
                      turn_spans=[[[0, 1], [1, 3]], [[0, 1], [1, 3]], [[0, 1], [1, 3]], [[0, 3]]], leaf_status=["ok"] * 4)
    expected, _ = compute_grpo_outcome_advantage(rewards, mask, batch.index)
    torch.testing.assert_close(compute_advantages(batch, "grpo", AdvantageConfig()), expected)
    assert not torch.allclose(compute_advantages(batch, "trace", AdvantageConfig()), expected)  # the tree matters


def test_checkpoint_refuses_other_settings_by_field():
    a = make_settings().model_dump()
    b = make_settings(overrides={"rl": {"lr": 1e-3}}).model_dump()
    assert checkpoint.first_difference(a, a) is None
    assert checkpoint.first_difference(a, b) == "rl.lr"
    longer = make_settings(overrides={"rl": {"steps": 40}}).model_dump()
    assert checkpoint.first_difference(a, longer) is None  # a resumed run may be given more steps


def test_render_shows_branches_estimates_and_outcomes(tmp_path):
    t = RolloutTree("u", [1, 2], "Question: Where was X born?")
    t.root.meta["p_hat"] = 0.4
    a = t.add_turn(0, [5, 6], [7], text=search_text("X"), obs_text="Doc 1(Title: \"X\") X was born in Y.")
    t[a].meta["p_hat"] = 0.55
    for reward, ans in ((1.0, "Y"), (0.0, "Z")):
        t.finish(t.add_turn(a, [8], text=answer_text(ans)), reward, LeafStatus.OK)
    t.finish(t.add_turn(0, [9], text=answer_text("Q")), 0.0, LeafStatus.OK)
    assert render.turn_label(t[a]) == "search: X"
    assert render.pick_tree({"u": t, "v": RolloutTree("v")}) is t
    page = render.save_html(t, tmp_path / "t.html").read_text()
    assert "p̂=0.55" in page and "answer: Y" in page and "r=1" in page and "r=0" in page
    assert render.save_png(t, tmp_path / "t.png").stat().st_size > 1000
    x = render.layout(t)
    assert x[a][0] == 0.5 and x[0][1] == 0  # the branched prefix sits above its two leaves


# ---------------------------------------------------------------------- the job itself
def _demo(out: Path, *extra: str) -> subprocess.Popen:
    """The demo as a terminal starts it. SIGINT is reset to its default disposition because a
    non-interactive shell that runs the test suite in the background (as CI may) hands its
    children SIGINT *ignored*, and Python then never turns Ctrl-C into KeyboardInterrupt."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "verl_trace.demo", "--quick", "--out", str(out), "--no-progress", *extra]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _server_port(out: Path) -> int:
    line = next(x for x in (out / "retrieval_server.log").read_text().splitlines() if "serving" in x)
    return int(line.rsplit(":", 1)[1].split()[0].strip("/"))


@pytest.mark.slow
def test_quick_demo_interrupted_then_resumed(tmp_path):
    """``--quick`` end to end: Ctrl-C after the first RL step leaves a partial report and stops
    the server; ``--resume`` finishes the run; every step spent exactly its leaf budget. The first
    run is given far more steps than it gets to, so the Ctrl-C always lands inside the RL phase
    (quick steps of an untrained model take a fraction of a second); the resumed run stops two
    steps after the interruption."""
    out = tmp_path / "demo"
    proc = _demo(out, "--steps", "1000")
    deadline = time.monotonic() + 240
    while not checkpoint.exists(out / "checkpoint"):
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "no checkpoint after 240 s"
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    log = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, log
    partial = json.loads((out / "report.json").read_text())
    done = partial["steps"]
    assert partial["status"] == "interrupted" and 1 <= done < partial["planned_steps"] == 1000
    assert partial["start_accuracy"] is not None
    with pytest.raises(httpx.TransportError):  # the server went down with the demo
        httpx.get(f"http://127.0.0.1:{_server_port(out)}/health", timeout=2)

    proc = _demo(out, "--resume", "--steps", str(done + 2))
    log = proc.communicate(timeout=240)[0]
    assert proc.returncode == 0, log
    assert "reusing" in log  # the warm start was not rebuilt
    rep = json.loads((out / "report.json").read_text())
    assert rep["status"] == "completed" and rep["steps"] == rep["planned_steps"] == done + 2
    budget = rep["budget"]["leaves_per_step"]
    assert budget == 16 and all(r["leaves"] == budget == r["plan/launched"] for r in rep["curves"]["train"])
    assert [r["step"] for r in rep["curves"]["train"]] == list(range(1, done + 3))  # resumed, not restarted
    assert rep["generated_tokens"] == sum(r["tokens"] for r in rep["curves"]["train"]) > 0
    for key in ("start_accuracy", "final_accuracy"):
        assert 0.0 <= rep[key] <= 1.0
    assert rep["curves"]["eval"][0]["step"] == 0 and rep["curves"]["eval"][-1]["step"] == done + 2
    assert rep["warm_start"]["demonstrations"] > 0 and 0 < rep["warm_start"]["teacher_accuracy"] < 1
    for name in ("accuracy.png", "training.png", "rollout_tree.png", "rollout_tree.html", "rollout_tree.json"):
        assert (out / name).stat().st_size > 0, name


def test_evaluation_names_where_a_trajectory_left_the_chain(train):
    from verl_trace.demo.evaluate import outcome

    q = three_hop(train)
    hop = [h["query"] for h in q.chain]
    right = "".join(search_text(x) for x in hop) + answer_text(q.answers[0])
    assert outcome(q, right, 1.0) == "correct"
    assert outcome(q, search_text(hop[0]) + search_text("Nobody") + answer_text("x"), 0.0) == "off_chain_query"
    assert outcome(q, search_text(hop[0]) + answer_text(q.chain[0]["finds"]), 0.0) == "premature_answer"
    assert outcome(q, "".join(search_text(x) for x in hop) + answer_text("x"), 0.0) == "wrong_answer"
    assert outcome(q, "".join(search_text(x) for x in hop), 0.0) == "no_answer"
