"""Per-step predictor calibration of a training run: Brier, ECE and AUC of the predictions made
before each update, and their means after the first third of training (issue 11 §4: AUC >= 0.75).

    python benchmarks/predictor_quality.py outputs/demo/report.json [more reports...] [--prefix predictor/shared_]

Reads the demo's ``report.json`` (``curves.train``), whose step records carry what
``Predictor.update`` logs; ``verl_trace.predictor.calibration.quality_by_step`` does the work.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from verl_trace.predictor.calibration import quality_by_step  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("reports", nargs="+", help="demo report.json files")
    ap.add_argument("--prefix", default="predictor/hybrid_", help="metric prefix (hybrid_, shared_ or beta_)")
    args = ap.parse_args(argv)
    for path in args.reports:
        report = json.loads(Path(path).read_text())
        records = report.get("curves", {}).get("train")
        if records is None:
            print(f"{path}: no curves.train (not a demo report.json)", file=sys.stderr)
            return 2
        q = quality_by_step(records, args.prefix)
        print(f"{path} ({report.get('allocator', '?')}, {q['steps']} steps)")
        print("step  brier   ece    auc")
        for r in q["per_step"]:
            print(f"{r['step']:4d}  {r['brier']:.3f}  {r['ece']:.3f}  {r['auc']:.3f}")
        s = q["after_first_third"]
        print(f"after the first third: brier {s['brier']:.3f}  ece {s['ece']:.3f}  auc {s['auc']:.3f}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
