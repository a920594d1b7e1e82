"""The start-up freeze (verl_trace.gcfreeze), in a child process: it is process-wide, and freezing
pytest's own objects would change what later tests' collections see."""

import subprocess
import sys

CHILD = """
import gc
from verl_trace.gcfreeze import freeze_startup_objects

startup = [[i] for i in range(1000)]  # start-up state: lists, tracked by the collector
n = freeze_startup_objects()
assert n >= 1000 and gc.get_freeze_count() == n, n
assert not any(o is startup for o in gc.get_objects()), "start-up objects are frozen, not scanned"
step = [[i] for i in range(1000)]  # a step's objects: created after the freeze
assert freeze_startup_objects() == n, "only the first call freezes"
assert any(o is step for o in gc.get_objects()), "later objects stay with the collector"
print("ok", n)
"""


def test_freeze_once_keeps_later_objects_collectable():
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok ")
