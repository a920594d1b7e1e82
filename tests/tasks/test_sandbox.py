"""The code sandbox against hostile programs: each one gets an error observation and the caller
(this test process, standing in for a rollout worker) carries on. The fork bomb runs only after a
single fork was shown to fail, so a broken sandbox cannot take down the shared machine."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from verl_trace.tools.python_tool import PythonTool
from verl_trace.tools.sandbox import SandboxLimits, landlock_abi, run_python

FAST = SandboxLimits(wall_s=5, cpu_s=1, memory_mb=512, file_mb=1, output_chars=500)


def test_runs_code_and_prints_the_last_expression():
    r = run_python("x = 6 * 7\nprint('x is', x)\nx + 1", FAST)
    assert r.ok and r.output == "x is 42\n43\n" and r.observation() == "x is 42\n43"


def test_infinite_loop_is_killed_by_the_cpu_limit():
    r = run_python("while True:\n    pass", FAST)
    assert not r.ok and r.signal in ("SIGXCPU", "SIGKILL") and "killed" in r.observation()


def test_sleeping_forever_is_killed_at_the_wall_clock_deadline():
    start = time.monotonic()
    r = run_python("import time\ntime.sleep(60)", SandboxLimits(wall_s=1.5, cpu_s=1))
    assert r.timed_out and time.monotonic() - start < 10 and "time limit" in r.observation()


def test_memory_bomb_fails_inside_the_sandbox():
    r = run_python("blocks = []\nwhile True:\n    blocks.append(bytearray(50 * 2**20))", FAST)
    assert not r.ok and ("MemoryError" in r.output or r.signal is not None)


def test_fork_bomb_cannot_fork():
    probe = run_python("import os\nos.fork()\nprint('forked')", FAST)
    assert "forked" not in probe.output and "Operation not permitted" in probe.output
    r = run_python("import os\nwhile True:\n    os.fork()", FAST)  # the real thing, only after the probe
    assert not r.ok and "PermissionError" in r.output
    threads = run_python("import threading\nthreading.Thread(target=print).start()", FAST)
    assert "can't start new thread" in threads.output
    shell = run_python("import subprocess\nsubprocess.run(['true'])", FAST)
    assert not shell.ok and "PermissionError" in shell.output


def test_huge_output_is_cut():
    r = run_python("while True:\n    print('x' * 10000)", FAST)
    assert r.truncated and len(r.output) <= FAST.output_chars and "output truncated" in r.observation()
    big = run_python("print('y' * 100000)", FAST)  # fits the file limit, not the returned text
    assert big.truncated and len(big.output) <= FAST.output_chars and big.output.startswith("yyy")
    assert "[... output cut ...]" in big.output and big.output.endswith("yyy\n")


@pytest.mark.skipif(landlock_abi() == 0, reason="the kernel has no Landlock: writes are confined by nothing else")
def test_writes_outside_its_directory_fail(tmp_path):
    target = tmp_path / "escaped.txt"
    code = (
        f"open('inside.txt', 'w').write('ok')\nprint(open('inside.txt').read())\n"
        f"open({str(target)!r}, 'w').write('escaped')"
    )
    r = run_python(code, FAST)
    assert r.output.startswith("ok\n") and "PermissionError" in r.output and not target.exists()
    r = run_python("import os\nos.mkdir('/tmp/verl-trace-sbx-escape')", FAST)
    assert "PermissionError" in r.output and not os.path.exists("/tmp/verl-trace-sbx-escape")
    r = run_python("import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)", FAST)
    assert "PermissionError" in r.output  # no TCP either


def test_fresh_directory_and_no_inherited_environment(monkeypatch):
    monkeypatch.setenv("VERL_TRACE_SECRET_TOKEN", "hunter2")
    r = run_python("import os\nprint(os.getcwd())\nprint(sorted(os.environ))\nprint(os.listdir('.'))", FAST)
    cwd, env, listing = r.output.splitlines()
    assert "hunter2" not in r.output and "VERL_TRACE_SECRET_TOKEN" not in env and listing == "[]"
    assert not os.path.exists(cwd)  # removed after the run
    again = run_python("import os\nprint(os.getcwd())", FAST)
    assert again.output.strip() != cwd


def test_sys_exit_and_segfault_are_reported():
    r = run_python("import sys\nprint('bye')\nsys.exit(3)", FAST)
    assert r.exit_code == 3 and r.observation() == "bye\n[exit code 3]"
    r = run_python("import ctypes\nctypes.string_at(0)", FAST)
    assert r.signal == "SIGSEGV" and r.observation() == "[crashed: SIGSEGV]"
    r = run_python("raise ValueError('nope')", FAST)
    assert r.exit_code == 1 and "ValueError: nope" in r.output and "boot.py" not in r.output


def test_python_tool_turns_every_outcome_into_an_observation():
    tool = PythonTool({"type": "native", "max_concurrency": 2, "limits": FAST.model_dump()})
    assert tool.name == "python" and tool.tool_schema.function.parameters.required == ["code"]

    async def go():
        calls = [{"code": "print(2 ** 20)"}, {"code": "import ctypes; ctypes.string_at(0)"}, {"code": ""}, {}]
        return await asyncio.gather(*(tool.execute("i", c) for c in calls))

    (ok, _, m), (crash, _, _), (empty, _, _), (missing, _, _) = asyncio.run(go())
    assert ok.text == "1048576" and m["exit_code"] == 0
    assert crash.text == "[crashed: SIGSEGV]"
    assert empty.text.startswith("Error") and missing.text.startswith("Error")
    with pytest.raises(ValueError, match="PythonTool config"):
        PythonTool({"type": "native", "limits": {"wall_s": -1}})
