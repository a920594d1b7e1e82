#!/usr/bin/env bash
# BFCL v4 multi-turn function calling with TRACE (or a baseline at equal sampling cost) on one node.
#
#   MODEL=qwen3_8b METHOD=trace bash recipes/bfcl/run_one_node.sh [hydra overrides ...]
#
# MODEL:  qwen3_8b (8 GPUs) | qwen3_14b (its config asks for 2 nodes; add trainer.nnodes=1 to try one)
# METHOD: trace | grpo | tree_grpo
# Needs: `pip install -e .[gpu,bfcl]` plus `pip install --no-deps bfcl-eval==2026.3.23`, and the parquet from prepare_data.py under DATA_DIR.
set -xeuo pipefail

RECIPE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MODEL=${MODEL:-qwen3_8b}
METHOD=${METHOD:-trace}
DATA_DIR=${DATA_DIR:-$HOME/data/bfcl}
CKPT_DIR=${CKPT_DIR:-$PWD/checkpoints/verl_trace_bfcl/${MODEL}_${METHOD}}

ulimit -n 65535 || true

python3 -m verl_trace.main_trace \
    --config-path="$RECIPE_DIR/config" \
    --config-name="$MODEL" \
    method="$METHOD" \
    data.train_files="$DATA_DIR/train.parquet" \
    data.val_files="$DATA_DIR/val.parquet" \
    actor_rollout_ref.rollout.multi_turn.tool_config_path="$RECIPE_DIR/config/tool_config/bfcl_tool_config.yaml" \
    trainer.default_local_dir="$CKPT_DIR" \
    trainer.resume_mode=auto \
    "$@"
