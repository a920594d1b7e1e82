"""``python -m verl_trace doctor`` shows what verl would swallow (plugin load errors are logged by
verl at DEBUG level). Registration itself is tested in tests/trainer/test_plugin_registration.py."""

import subprocess
import sys


def test_doctor_reports_the_registered_estimators():
    doc = subprocess.run([sys.executable, "-m", "verl_trace", "doctor"], capture_output=True, text=True, timeout=300)
    assert doc.returncode == 0, doc.stdout + doc.stderr
    assert "entry point: trace -> verl_trace.plugin: loads" in doc.stdout
    assert "advantage estimator 'trace': registered" in doc.stdout
    assert "advantage estimator 'tree_grpo': registered" in doc.stdout
