#!/usr/bin/env bash
# Single-GPU smoke run (Qwen3-0.6B, 3 steps, one checkpoint): checks the whole TRACE pipeline on
# real hardware before a long run. METHOD=trace|grpo|tree_grpo as in run_one_node.sh.
set -xeuo pipefail
RECIPE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MODEL=qwen3_0.6b_smoke exec bash "$RECIPE_DIR/run_one_node.sh" "$@"
