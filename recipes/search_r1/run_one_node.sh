#!/usr/bin/env bash
# Search-R1 with TRACE (or a baseline at equal sampling cost) on one node.
#
#   MODEL=qwen3_8b METHOD=trace bash recipes/search_r1/run_one_node.sh [hydra overrides ...]
#
# MODEL:  qwen3_8b (8 GPUs) | qwen3_14b (its config asks for 2 nodes; add trainer.nnodes=1 to try
#         one) | qwen3_0.6b_smoke (1 GPU, a few steps)
# METHOD: trace | grpo | tree_grpo
# Needs: `pip install -e .[gpu]` (verl-trace with verl[vllm]), the data under DATA_DIR, and the
# retrieval server named in config/tool_config/search_tool_config.yaml (retrieval_service_url).
set -xeuo pipefail

RECIPE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MODEL=${MODEL:-qwen3_8b}
METHOD=${METHOD:-trace}
DATA_DIR=${DATA_DIR:-$HOME/data/search_r1}
TOOL_CONFIG=${TOOL_CONFIG:-$RECIPE_DIR/config/tool_config/search_tool_config.yaml}
CKPT_DIR=${CKPT_DIR:-$PWD/checkpoints/verl_trace_search_r1/${MODEL}_${METHOD}}

ulimit -n 65535 || true

CONFIG=(
    --config-path="$RECIPE_DIR/config"
    --config-name="$MODEL"
    method="$METHOD"
)

DATA=(
    data.train_files="$DATA_DIR/train.parquet"
    data.val_files="$DATA_DIR/test.parquet"
)

ROLLOUT=(
    actor_rollout_ref.rollout.multi_turn.tool_config_path="$TOOL_CONFIG"
)

TRAINER=(
    trainer.default_local_dir="$CKPT_DIR"
    trainer.resume_mode=auto
)

python3 -m verl_trace.main_trace \
    "${CONFIG[@]}" \
    "${DATA[@]}" \
    "${ROLLOUT[@]}" \
    "${TRAINER[@]}" \
    "$@"
