#!/usr/bin/env bash
# Search-R1 with TRACE on a multi-node Ray cluster, submitted as a Ray job (verl's
# docs/start/multinode.rst flow with the module name changed to verl_trace.main_trace).
#
# 1. Start the cluster: on the head node `ray start --head --dashboard-host=0.0.0.0`, on every
#    other node `ray start --address=<head-ip>:6379`. Each node needs verl-trace installed
#    (`pip install -e .[gpu]`) or gets it through the job's working_dir (runtime_env.yaml).
# 2. From the repository root (shipped as the job's working_dir):
#
#    RAY_ADDRESS=http://<head-ip>:8265 NNODES=2 MODEL=qwen3_14b METHOD=trace \
#        bash recipes/search_r1/run_multinode.sh [hydra overrides ...]
#
# DATA_DIR must exist on the node that runs the trainer (the head, by default); checkpoints go
# to CKPT_DIR, which should be on shared storage so a resumed job finds them.
set -xeuo pipefail

RECIPE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RAY_ADDRESS=${RAY_ADDRESS:-http://127.0.0.1:8265}
NNODES=${NNODES:-2}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
MODEL=${MODEL:-qwen3_14b}
METHOD=${METHOD:-trace}
DATA_DIR=${DATA_DIR:-$HOME/data/search_r1}
CKPT_DIR=${CKPT_DIR:-$HOME/checkpoints/verl_trace_search_r1/${MODEL}_${METHOD}}

# Paths inside the job's working_dir are expanded by the job's shell on the cluster (\$PWD).
ray job submit --address="$RAY_ADDRESS" \
    --runtime-env="$RECIPE_DIR/runtime_env.yaml" \
    --no-wait \
    -- python3 -m verl_trace.main_trace \
    --config-path="\$PWD/recipes/search_r1/config" \
    --config-name="$MODEL" \
    method="$METHOD" \
    data.train_files="$DATA_DIR/train.parquet" \
    data.val_files="$DATA_DIR/test.parquet" \
    trainer.nnodes="$NNODES" \
    trainer.n_gpus_per_node="$GPUS_PER_NODE" \
    trainer.default_local_dir="$CKPT_DIR" \
    trainer.resume_mode=auto \
    "$@"
