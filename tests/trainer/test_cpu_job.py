"""The driver-side pieces of ``verl_trace.cpu.job`` without a training run (the runs themselves are
in test_main_trace_cpu.py): metrics as verl's own file logger writes them, the child's process
tree killed by PID and nothing else, the command line."""

from __future__ import annotations

import math
import subprocess
import sys
import time

import psutil
import pytest

from verl_trace.cpu.job import kill_tree, main_trace_command, read_step_metrics


def test_reads_verls_file_logger(tmp_path, monkeypatch):
    from verl.utils.tracking import FileLogger

    path = tmp_path / "metrics.jsonl"
    monkeypatch.setenv("VERL_FILE_LOGGER_PATH", str(path))
    logger = FileLogger("project", "experiment")
    logger.log({"actor/grad_norm": 0.5, "predictor/auc": math.nan, "trace/leaves": 8}, step=1)
    logger.log({"actor/grad_norm": 0.25}, step=2)
    logger.finish()
    rows = read_step_metrics(path)
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[0]["actor/grad_norm"] == 0.5 and rows[0]["trace/leaves"] == 8
    assert rows[0]["predictor/auc"] is None  # orjson writes NaN as null
    assert read_step_metrics(tmp_path / "missing.jsonl") == []


def test_kill_tree_kills_the_child_and_its_descendants_only(tmp_path):
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    tree = "import subprocess, sys, time\n" \
           "[subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']) for _ in range(2)]\n" \
           "time.sleep(60)\n"
    child = subprocess.Popen([sys.executable, "-c", tree], start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while len(psutil.Process(child.pid).children()) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        pids = kill_tree(child.pid)
        assert len(pids) == 3 and child.pid in pids and bystander.pid not in pids
        child.wait(timeout=10)
        assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids)
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_command_line():
    cmd = main_trace_command("tree_grpo", ["trainer.total_training_steps=5"])
    assert cmd[1:3] == ["-m", "verl_trace.main_trace"] and "--config-name=cpu_tiny" in cmd
    assert cmd[-2:] == ["method=tree_grpo", "trainer.total_training_steps=5"]
    with pytest.raises(ValueError, match="method"):
        main_trace_command("ppo")
