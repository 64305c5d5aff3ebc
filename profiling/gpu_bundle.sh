#!/usr/bin/env bash
# Prepares .gpu/ (git-ignored) for profiling/gpu_checks.sh: the device machine has torch and triton but
# neither gymnasium, mujoco, minari nor nvtx, and no internet. Downloads Python 3.12 x86-64 wheels of
# those (the versions installed in this checkout's .venv) and copies the local halfcheetah-medium-replay
# Minari dataset, if generated, for the train stage. About 50 MB; carry it: run(..., carry=[".gpu"]).
#   bash profiling/gpu_bundle.sh
set -euo pipefail
cd "$(dirname "$0")/.."
packages="gymnasium farama-notifications mujoco mujoco-core mujoco-studio glfw pyopengl websockets minari nvtx"
pins=$(.venv/bin/python - $packages <<'PY'
import sys
from importlib.metadata import version
print(" ".join(f"{name}=={version(name)}" for name in sys.argv[1:]))
PY
)
rm -rf .gpu && mkdir -p .gpu/whl .gpu/datasets
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 --platform any -d .gpu/whl $pins
dataset=${MINARI_DATASETS_PATH:-$HOME/.minari/datasets}/fastbdm/halfcheetah
if [ -d "$dataset/medium-replay-v0" ]; then
    mkdir -p .gpu/datasets/fastbdm && cp -r "$dataset" .gpu/datasets/fastbdm/
else
    echo "no local halfcheetah-medium-replay dataset: the train stage would generate it first (~10 min)"
fi
du -sh .gpu
