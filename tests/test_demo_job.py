"""``python -m verl_trace.demo --quick`` end to end: verl's trainer (main_trace on CPU) as the
demo's RL phase, with a real retrieval server, warm start, rollouts, updates, validation and
checkpoints.

One job, run twice (module fixture), serves every assertion: the first start is stopped with
Ctrl-C once verl has checkpointed a step (partial report, exit 130, trainer and server gone); the
second continues it with ``--resume`` through verl's ``trainer.resume_mode`` to two steps past
the interruption (report, files, metrics, checkpoints). The warm start's validation at step 0
is then compared with the demo's own evaluator on the same model and questions.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import httpx
import psutil
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2700)]

ROOT = Path(__file__).resolve().parents[1]


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


def _processes_of(out: Path) -> list[psutil.Process]:
    """Processes of the demo's trainer job still alive: its driver names the output folder, and
    Ray's GCS, raylet and workers name the job's private Ray folder (only read here, never killed)."""
    marks = (str(out / "checkpoints"), f"vt-demo-{zlib.crc32(str(out).encode()):08x}")
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(p.info["cmdline"] or [])
        if any(m in cmdline for m in marks):
            found.append(p)
    return found


def _logged_a_step(out: Path) -> bool:
    """verl's metrics file of the first start has a training step's row."""
    path = out / "metrics.1.jsonl"
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            if json.loads(line)["step"] >= 1:
                return True
        except ValueError:  # the line being written
            pass
    return False


def _stop(proc: subprocess.Popen) -> None:
    """Ctrl-C for a demo the test gave up on (it stops its trainer and server), then SIGKILL."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    out = (tmp_path_factory.mktemp("demo") / "run").resolve()
    proc = _demo(out, "--steps", "1000")
    try:
        deadline = time.monotonic() + 900
        # verl saves a step's checkpoint before it logs the step's metrics (what the partial report
        # counts): wait for both, or a loaded machine lets Ctrl-C land between the two
        while not ((out / "checkpoints" / "latest_checkpointed_iteration.txt").is_file() and _logged_a_step(out)):
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "no checkpointed and logged step after 900 s"
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        first_log = proc.communicate(timeout=180)[0]
    finally:
        _stop(proc)
    first = {"returncode": proc.returncode, "log": first_log, "report": json.loads((out / "report.json").read_text()),
             "alive": _processes_of(out)}
    done = first["report"]["steps"]
    proc = _demo(out, "--resume", "--steps", str(done + 2))
    try:
        log = proc.communicate(timeout=1200)[0]
    finally:
        _stop(proc)
    assert proc.returncode == 0, log
    return {"out": out, "first": first, "log": log, "report": json.loads((out / "report.json").read_text())}


def test_ctrl_c_leaves_a_partial_report_and_nothing_running(job):
    first, out = job["first"], job["out"]
    assert first["returncode"] == 130, first["log"]
    partial = first["report"]
    assert partial["status"] == "interrupted" and 1 <= partial["steps"] < partial["planned_steps"] == 1000
    assert partial["start_accuracy"] is not None and partial["trainer"] == "verl_trace.main_trace"
    assert first["alive"] == [], first["alive"]  # verl's driver, Ray and its workers were stopped
    with pytest.raises(httpx.TransportError):  # the server went down with the demo
        httpx.get(f"http://127.0.0.1:{_server_port(out)}/health", timeout=2)


def test_resume_continues_through_verls_checkpoint(job):
    rep, out, done = job["report"], job["out"], job["first"]["report"]["steps"]
    assert "reusing" in job["log"]  # the warm start was not rebuilt
    assert rep["status"] == "completed" and rep["steps"] == rep["planned_steps"] == done + 2
    assert [r["step"] for r in rep["curves"]["train"]] == list(range(1, done + 3))  # resumed, not restarted
    second = [json.loads(x) for x in (out / "metrics.2.jsonl").read_text().splitlines()]
    assert min(r["step"] for r in second) == done + 1  # verl itself continued after its checkpoint
    ckpt = rep["checkpoints"]
    assert ckpt["latest_step"] == done + 2 and ckpt["dir"] == str(out / "checkpoints")
    # verl's max_actor_ckpt_to_keep (2) counts the checkpoints its own process saved: a resumed
    # start keeps its last two and does not delete the one it resumed from
    assert ckpt["steps"][-3:] == [done, done + 1, done + 2]
    last = out / "checkpoints" / f"global_step_{done + 2}"
    assert (last / "trace_predictor.pt").is_file() and (last / "actor").is_dir()


def test_report_has_verls_and_traces_metrics_per_step(job):
    rep, out = job["report"], job["out"]
    assert rep["trainer"] == "verl_trace.main_trace" and rep["allocator"] == "trace" and rep["estimator"] == "trace"
    assert len(rep["step_metrics"]) == rep["steps"]
    for row in rep["step_metrics"]:
        assert row["actor/grad_norm"] is not None and row["actor/grad_norm"] >= 0
        assert 0 <= row["training/rollout_probs_diff_max"] < 1e-4  # the rollout served the trained weights
        assert row["trace/leaves"] == rep["budget"]["leaves_per_step"] == 16 == row["plan/launched"]
        assert any(k.startswith("trace/adv/") for k in row) and "predictor/brier" in row
    assert rep["generated_tokens"] == sum(r["tokens"] for r in rep["curves"]["train"]) > 0
    evals = rep["curves"]["eval"]
    assert evals[0]["step"] == 0 and evals[-1]["step"] == rep["steps"] and evals[0]["questions"] == 16
    for e in evals:
        assert 0.0 <= e["accuracy"] <= 1.0 and e["outcome/correct"] == pytest.approx(e["accuracy"])
    assert rep["warm_start"]["demonstrations"] > 0 and 0 < rep["warm_start"]["teacher_accuracy"] < 1
    for name in ("accuracy.png", "training.png", "rollout_tree.png", "rollout_tree.html", "rollout_tree.json"):
        assert (out / name).stat().st_size > 0 and name in rep["files"], name
    tree = json.loads((out / "rollout_tree.json").read_text())
    assert tree["nodes"][0]["parent"] is None and any(n["terminal"] for n in tree["nodes"])


def test_verls_validation_matches_the_demos_evaluator(job):
    """Same model (the warm start), same questions, greedy: verl's validation (through its agent
    loop workers, the hf rollout server and the reward loop) and the demo's in-process evaluator
    generate the same responses and score the same accuracy."""
    from verl_trace.demo import evaluate
    from verl_trace.demo.agent import SearchAgent
    from verl_trace.demo.family import held_out_questions
    from verl_trace.demo.settings import DemoSettings
    from verl_trace.demo.warm_start import WarmStart
    from verl_trace.demo.world import MINI_DIR
    from verl_trace.tools.retrieval_server.process import RetrievalServerProcess

    out = job["out"]
    settings = DemoSettings.model_validate(json.loads((out / "settings.json").read_text()))
    questions = held_out_questions(settings)
    theirs = {q.id: (text, em) for q, text, em in evaluate.validation_rows(out / "validation" / "0.jsonl", questions)}
    tok, model = WarmStart(out / "warm_start", {}).load()
    with RetrievalServerProcess(MINI_DIR / "corpus.jsonl", out / "eval_server.log") as server:
        agent = SearchAgent(settings, tok, model, server.retrieve_url)
        try:
            rows = evaluate.chains(agent, questions, 0.0)
        finally:
            agent.close()
    ours = {q.id: (text, reward) for q, text, reward in rows}
    assert sorted(theirs) == sorted(ours) == sorted(q.id for q in questions)
    for qid in ours:
        assert theirs[qid] == ours[qid], qid
    assert job["report"]["curves"]["eval"][0]["accuracy"] == pytest.approx(evaluate.summarize(rows)["accuracy"])


def test_demo_learning_reads_the_runs_gain(job, tmp_path):
    """benchmarks/demo_learning.py on the run's real report: the gain over the warm start up to a
    step, the plot, and a run named with the wrong allocator refused."""
    out, rep = job["out"], job["report"]
    step = rep["curves"]["eval"][-1]["step"]
    cmd = [sys.executable, "benchmarks/demo_learning.py", "--out", str(tmp_path / "r.json"), "--plot",
           str(tmp_path / "r.png"), f"trace:0={out}@{step}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    res = json.loads((tmp_path / "r.json").read_text())["allocators"]["trace"]
    assert res["gain_median"] == pytest.approx(rep["final_accuracy"] - rep["start_accuracy"])
    assert res["goal_met"] is False and res["runs"][0]["eval_questions"] == 16  # one seed cannot meet it
    assert (tmp_path / "r.png").stat().st_size > 0
    wrong = subprocess.run([*cmd[:-1], f"uniform:0={out}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert wrong.returncode == 2 and "allocator 'trace'" in wrong.stderr
