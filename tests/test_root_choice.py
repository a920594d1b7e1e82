"""On the allocation simulator, roots chosen once over the whole pool (the TRACE manager's path)
are a single planner's choice, for any number of rollout workers (benchmarks/root_choice.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_global_choice_equals_a_single_planner_on_the_simulator(tmp_path: Path) -> None:
    out = tmp_path / "root_choice.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "root_choice.py"), "--out", str(out), "--quick",
         "--regimes", str(ROOT / "benchmarks" / "regimes" / "default.yaml"), "--workers", "2", "4"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())["regimes"]["default"]
    for w in ("2", "4"):
        assert res[w]["steps"] == 2 * 3  # 2 seeds x 3 quick steps
        assert res[w]["global_equals_single"] == 1.0 and res[w]["first_chains_equal"] == 1.0, res[w]
        assert 0.0 <= res[w]["per_worker_overlap_median"] <= 1.0
        assert 0.0 <= res[w]["value_single_median"] <= 1.0
