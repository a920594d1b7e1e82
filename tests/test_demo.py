"""The CPU demo's parts (verl_trace.demo): the teacher's mistakes, settings, the model class that
shares name updates, the Hydra overrides main_trace runs with (composed with verl's real config),
reading verl's metrics and validation files, the tree rendering. The whole ``--quick`` job
through verl's trainer is tests/test_demo_job.py (slow)."""

from __future__ import annotations

import random

import pytest

from verl_trace.demo import render
from verl_trace.demo.demonstrations import Teacher, answer_text, search_text
from verl_trace.demo.settings import ALLOCATORS, TeacherSettings, first_difference, make_settings
from verl_trace.demo.world import load_split
from verl_trace.tree import LeafStatus, RolloutTree

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


def test_settings_only_offer_what_main_trace_runs():
    assert ALLOCATORS == ["uniform", "prompt", "tree_random", "trace"]
    for name, why in (("oracle", "cannot run in the demo"), ("entropy", "cannot run in the demo")):
        with pytest.raises(ValueError, match=why):
            make_settings(allocator=name)
    assert make_settings(allocator="uniform").estimator == "grpo"  # verl's own GRPO, as method=grpo
    assert make_settings(allocator="tree_random").estimator == "tree_grpo"


def test_resume_refuses_other_settings_by_field():
    a = make_settings().model_dump()
    b = make_settings(overrides={"rl": {"lr": 1e-3}}).model_dump()
    assert first_difference(a, a) is None
    assert first_difference(a, b) == "rl.lr"
    longer = make_settings(overrides={"rl": {"steps": 40}}).model_dump()
    assert first_difference(a, longer) is None  # a resumed run may be given more steps


def test_name_tokens_share_their_updates_in_any_loaded_copy(tmp_path):
    """Every name row gets the mean of the name rows' gradients (the others keep their own), the
    outputs are a plain Qwen2's, and the class survives saving: verl's actor loads it with
    ``trust_remote_code`` (transformers builds it on the meta device first), the rollout server
    loads the same directory as a plain Qwen2."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from verl_trace.demo import shared_names

    cfg = Qwen2Config(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    torch.manual_seed(0)
    plain = Qwen2ForCausalLM(cfg)
    rows = [3, 5, 7]
    ids = torch.randint(0, 40, (2, 9))
    expected = plain(input_ids=ids).logits.detach()
    shared = shared_names.configure(plain, rows)
    path = shared_names.save_with_code(shared, tmp_path / "m")
    for model in (shared, AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)):
        assert type(model).__name__ == "SharedNameQwen2ForCausalLM"
        torch.testing.assert_close(model(input_ids=ids).logits, expected)
        model(input_ids=ids, labels=ids).loss.backward()
        grad = model.get_input_embeddings().weight.grad
        for r in rows[1:]:
            torch.testing.assert_close(grad[r], grad[rows[0]])
        assert not torch.allclose(grad[0], grad[1])  # other tokens keep their own gradient
    rollout = AutoModelForCausalLM.from_pretrained(path)  # without trust_remote_code: verl's hf rollout server
    assert type(rollout) is Qwen2ForCausalLM
    torch.testing.assert_close(rollout(input_ids=ids).logits, expected)


@pytest.mark.parametrize("allocator", ["uniform", "tree_random", "trace"])
def test_demo_settings_become_main_trace_config(allocator, tmp_path, monkeypatch):
    """The overrides compose with cpu_tiny.yaml and pass main_trace's own checks, and say what the
    settings say (verl's config is the real one)."""
    from omegaconf import OmegaConf

    from verl_trace.cpu.job import RECIPE_CONFIG_DIR
    from verl_trace.cpu.prepare import ASSETS_ENV, Assets
    from verl_trace.demo import trainer
    from verl_trace.trainer.config_check import prepare_trace_config
    from verl_trace.trainer.hydra_config import compose_config

    monkeypatch.setenv(ASSETS_ENV, str(tmp_path))
    s = make_settings(allocator=allocator, seed=2, overrides={"rl": {"steps": 7}, "eval": {"every": 3}})
    over = trainer.overrides(s, Assets(tmp_path), tmp_path / "model", tmp_path / "out", resume=False)
    cfg = compose_config("cpu_tiny", RECIPE_CONFIG_DIR, [f"method={trainer.method(s)}", *over])
    prepare_trace_config(cfg)
    sel = lambda key: OmegaConf.select(cfg, key)  # noqa: E731
    assert sel("algorithm.adv_estimator") == s.estimator and sel("trace.allocator") == allocator
    assert sel("data.train_batch_size") == 16 and sel("actor_rollout_ref.rollout.n") == 8
    assert sel("trace.allocation.pool_factor") == (2.0 if allocator == "trace" else 1.0)
    assert sel("trace.seed") == 2 and sel("data.seed") == 2
    assert sel("trace.tree_dump_dir") == str((tmp_path / "out" / "trees").resolve())
    assert sel("trainer.total_training_steps") == 7 and sel("trainer.test_freq") == 3
    assert sel("trainer.resume_mode") == "disable" and sel("trainer.val_before_train") is True
    assert sel("actor_rollout_ref.model.trust_remote_code") is True
    assert sel("reward.custom_reward_function.reward_kwargs.format_score") == 0.0  # reward = exact match
    mini = sel("actor_rollout_ref.actor.ppo_mini_batch_size")
    assert mini == 8 and (mini * 8) % sel("actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu") == 0
    resumed = trainer.overrides(s, Assets(tmp_path), tmp_path / "model", tmp_path / "out", resume=True)
    assert "trainer.resume_mode=auto" in resumed and "trainer.val_before_train=false" in resumed


def test_metrics_of_a_resumed_job_merge_by_step(tmp_path, monkeypatch):
    """verl's file logger (the real class) truncates its file, so each start of the job writes its
    own; the rows of the steps a resumed start redid replace the first start's."""
    from verl.utils.tracking import FileLogger

    from verl_trace.demo import trainer

    for attempt, rows in ((1, [(0, {"val-aux/mini/em/mean@1": 0.25}), (1, {"actor/grad_norm": 1.0}),
                               (2, {"actor/grad_norm": 2.0})]),
                          (2, [(2, {"actor/grad_norm": 3.0}), (3, {"actor/grad_norm": float("nan")})])):
        monkeypatch.setenv("VERL_FILE_LOGGER_PATH", str(tmp_path / f"metrics.{attempt}.jsonl"))
        logger = FileLogger("p", "e")
        for step, data in rows:
            logger.log(data, step)
        logger.finish()
    (tmp_path / "metrics.10.jsonl").write_text("")  # attempts sort by number, not by name
    merged = trainer.read_metrics(tmp_path)
    assert [r["step"] for r in merged] == [0, 1, 2, 3]
    assert [r.get("actor/grad_norm") for r in merged[1:3]] == [1.0, 3.0]
    assert merged[3]["actor/grad_norm"] is None  # NaN comes back as null
    assert [p.name for p in trainer.metrics_files(tmp_path)] == ["metrics.1.jsonl", "metrics.2.jsonl", "metrics.10.jsonl"]


def test_validation_dump_gives_accuracy_by_hops_and_failure_kinds(train, tmp_path):
    """verl's own writer of validation generations (decoded prompt and response, the reward's
    ``em``) read back into the evaluator's numbers."""
    from verl.trainer.ppo.v1.trainer_base import PPOTrainer

    from verl_trace.demo.evaluate import read_validation

    qs = [q for q in train if q.hops == 2][:2] + [three_hop(train)]
    outputs = ["".join(search_text(h["query"]) for h in qs[0].chain) + answer_text(qs[0].answers[0]),
               search_text(qs[1].chain[0]["query"]) + answer_text(qs[1].chain[0]["finds"]),
               search_text("Nobody") + answer_text("x")]
    inputs = [f"system\nTools: search\nuser\nQuestion: {q.question}\nassistant\n" for q in qs]
    PPOTrainer._write_generations(inputs, outputs, [None] * 3, [1.0, 0.0, 0.0], {"em": [1.0, 0.0, 0.0]},
                                      str(tmp_path), 5)
    m = read_validation(tmp_path / "5.jsonl", qs)
    assert m["accuracy"] == pytest.approx(1 / 3) and m["questions"] == 3
    assert m["standard_error"] == pytest.approx((1 / 3 * 2 / 3 / 3) ** 0.5)
    assert m["accuracy_2hop"] == 0.5 and m["accuracy_3hop"] == 0.0
    assert m["outcome/premature_answer"] == m["outcome/off_chain_query"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="no held-out question"):
        read_validation(tmp_path / "5.jsonl", qs[:1])


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


@pytest.mark.parametrize("task", ["bfcl", "math"])
def test_task_families_point_main_trace_at_the_tasks_reward_and_loop(task, tmp_path, monkeypatch):
    """``--task bfcl|math``: the same overrides plus the Task's reward function and agent-loop
    settings compose with cpu_tiny.yaml and pass main_trace's checks (verl's real config)."""
    from omegaconf import OmegaConf

    from verl_trace.cpu.job import RECIPE_CONFIG_DIR
    from verl_trace.cpu.prepare import ASSETS_ENV, Assets
    from verl_trace.demo import trainer
    from verl_trace.demo.family import demo_task
    from verl_trace.tasks import get_task
    from verl_trace.trainer.config_check import prepare_trace_config
    from verl_trace.trainer.hydra_config import compose_config

    monkeypatch.setenv(ASSETS_ENV, str(tmp_path))
    s = make_settings(task=task, quick=True)
    t, family = get_task(task), demo_task(s)
    over = trainer.overrides(s, Assets(tmp_path, f"{task}_tool.yaml"), tmp_path / "model", tmp_path / "out",
                             resume=False, task=family)
    cfg = compose_config("cpu_tiny", RECIPE_CONFIG_DIR, [f"method={trainer.method(s)}", *over])
    prepare_trace_config(cfg)
    sel = lambda key: OmegaConf.select(cfg, key)  # noqa: E731
    assert sel("reward.custom_reward_function.path") == t.reward_path
    assert sel("reward.custom_reward_function.name") == t.reward_name
    for key, value in t.rollout["multi_turn"].items():
        if key != "max_assistant_turns":
            assert sel(f"actor_rollout_ref.rollout.multi_turn.{key}") == value, key
    assert sel("actor_rollout_ref.rollout.multi_turn.max_assistant_turns") == s.task.max_turns
    assert sel("actor_rollout_ref.rollout.multi_turn.tool_config_path") == str(tmp_path / f"{task}_tool.yaml")
    assert sel("trainer.total_training_steps") >= 2 and sel("trainer.val_before_train") is True
    # the held-out accuracy is verl's per-data-source metric, weighted by held-out rows
    keys = family.accuracy_keys()
    assert sum(keys.values()) == len(family.held_out()) and family.accuracy({}) is None
    assert family.accuracy(dict.fromkeys(keys, 0.5)) == pytest.approx(0.5)


def test_task_choice_is_checked_and_search_stays_the_default(capsys):
    from verl_trace.demo import cli
    from verl_trace.demo.warm_start import fingerprint

    with pytest.raises(SystemExit) as exc:
        cli.parse_args(["--task", "chess"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'chess'" in err and all(f"'{t}'" in err for t in ("search", "bfcl", "math"))
    with pytest.raises(ValueError, match="choose one of"):
        make_settings(task="chess")
    assert cli.parse_args([]).task == "search"
    search = make_settings(quick=True)
    assert search.task_name == "search" and search == make_settings(task="search", quick=True)
    # the search warm start's fingerprint ignores the task families' teacher knob (and vice versa)
    other = make_settings(quick=True, overrides={"family": {"mistake_rate": 0.9, "train_rows": 2}})
    assert fingerprint(search) == fingerprint(other)
    assert fingerprint(make_settings(task="math")) != fingerprint(make_settings(task="math", overrides=
                                                                                {"family": {"mistake_rate": 0.9}}))


def test_resume_accepts_settings_saved_before_task_families_and_refuses_another_task(tmp_path):
    import json

    from verl_trace.demo import cli

    search = make_settings(quick=True)
    old = search.model_dump(mode="json")
    del old["task_name"], old["family"]  # a settings.json written before --task existed
    (tmp_path / cli.SETTINGS_FILE).write_text(json.dumps(old))
    assert cli.prepare_out(tmp_path, search, resume=True) is False  # accepted (no checkpoint yet)
    with pytest.raises(cli.ResumeError, match="task_name"):
        cli.prepare_out(tmp_path, make_settings(quick=True, overrides={"task_name": "math"}), resume=True)
