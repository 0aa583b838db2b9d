#!/usr/bin/env bash
# The GPU checks and figures still to be taken (README, "Benchmarks"), one stage per device call, so
# that a lent GPU machine's few minutes go to measuring.  Here, first:
#   bash ../shared/device/make-wheels.sh fsspec pytest pluggy iniconfig
# then the device tool's `run` with carry [".whl"] and the command `bash benchmarks/gpu_figures.sh STAGE`:
#   check    the CUDA side of data.decode: device | hybrid (nvJPEG, the side stream), before any figure
#   resnet18 (a)-(e) and the hybrid columns for resnet18, the issue's 11,000 img/s goal
#   models   the same for the other architectures, eager and compiled
#   loaders  loader_throughput.py and eval_throughput.py
# Each stage's JSON goes to $OUT (the device tool brings it back), else to benchmarks/results/gpu.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ]; then  # the GPU machine has torch but no Ray: the wheels make-wheels.sh built
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD"
fi
export RAY_AUTH_MODE=disabled
out="${OUT:-benchmarks/results/gpu}"
mkdir -p "$out"
case "${1:-}" in
  check) python3 -m pytest -q -rs tests/test_device_decode.py ;;
  resnet18) python3 benchmarks/train_throughput.py --archs resnet18 --compile off > "$out/train_throughput_resnet18.json" ;;
  models) python3 benchmarks/train_throughput.py --archs resnet50 vgg_d alexnet googlenet wm_model_a wm_model_b \
            > "$out/train_throughput_models.json" ;;
  loaders) python3 benchmarks/loader_throughput.py --images 12000 --workers 12 --batch 64 > "$out/loader_throughput.json"
           python3 benchmarks/eval_throughput.py > "$out/eval_throughput.json" ;;
  *) echo "usage: bash benchmarks/gpu_figures.sh check|resnet18|models|loaders" >&2; exit 2 ;;
esac
