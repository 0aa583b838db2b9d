#!/usr/bin/env bash
# The GPU checks and figures still to be taken (README, "Benchmarks"), sized for a lent GPU machine's
# few minutes (15 of device time a task, machine start included, so one call of up to ~9 minutes does
# the work).  Here, first:
#   bash ../shared/device/make-wheels.sh fsspec pytest pluggy iniconfig
# then the device tool's `run` with carry [".whl"], timeout_s 590 and the command
#   bash benchmarks/gpu_figures.sh            (every stage below, in this order)
#   bash benchmarks/gpu_figures.sh STAGE ...  (the named ones: what a cut-short run left)
# Stages, most wanted first:
#   check     the CUDA side of data.decode: device | hybrid (nvJPEG, the side stream), before any figure
#   resnet18  (a)-(e) with the CPU, GPU and hybrid decode columns: the issue's 11,000 img/s goal
#   goals     (a), (b), (d), (e) for resnet50 and vgg_d: the (d)/(a) >= 0.95 goal
#   wm        torch.compile of wm_model_b with relay: compiled vs eager, relay vs bp (model_step.py)
#   rest      (a)-(e) for alexnet, googlenet and wm_model_b, (c) for resnet50 and vgg_d
#   loaders   loader_throughput.py and eval_throughput.py
#   compiled  (a) and (b) compiled for the six architectures
# Each stage writes its JSON to $OUT as soon as it has it (train_throughput.py after each architecture),
# else to benchmarks/results/gpu, so what a run finished before its time limit still comes back; each
# stage's stderr goes to STAGE.log beside it.  A failed stage is reported and the next one runs.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ]; then  # the GPU machine has torch but no Ray: the wheels make-wheels.sh built
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD"
fi
export RAY_AUTH_MODE=disabled
out="${OUT:-benchmarks/results/gpu}"
data="${TMPDIR:-/tmp}/places-gpu-figures"  # generated shards, made once and shared by the stages
mkdir -p "$out" "$data"
train=(python3 benchmarks/train_throughput.py --data "$data" --compile off)

run_stage() {
  case "$1" in
    check) python3 -m pytest -q -rs -p no:cacheprovider tests/test_device_decode.py ;;
    resnet18) "${train[@]}" --archs resnet18 --out "$out/train_throughput_resnet18.json" ;;
    goals) "${train[@]}" --archs resnet50 vgg_d --columns a b d e --out "$out/train_throughput_goals.json" ;;
    wm) python3 benchmarks/model_step.py --archs wm_model_b --rounds 1 > "$out/model_step_wm.json" ;;
    rest) "${train[@]}" --archs alexnet googlenet wm_model_b --out "$out/train_throughput_rest.json" &&
          "${train[@]}" --archs resnet50 vgg_d --columns c --out "$out/train_throughput_goals_c.json" ;;
    loaders) python3 benchmarks/loader_throughput.py --images 12000 --loader-workers 12 --batch-size 64 \
               > "$out/loader_throughput.json" &&
             python3 benchmarks/eval_throughput.py > "$out/eval_throughput.json" ;;
    compiled) python3 benchmarks/train_throughput.py --compile on --columns a b \
                --archs resnet18 resnet50 vgg_d alexnet googlenet wm_model_b --out "$out/train_throughput_compiled.json" ;;
  esac
}

all=(check resnet18 goals wm rest loaders compiled)
stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=("${all[@]}")
for stage in "${stages[@]}"; do  # a misspelt stage is refused before any other runs
  [[ " ${all[*]} " == *" $stage "* ]] || { echo "unknown stage $stage: one of ${all[*]}" >&2; exit 2; }
done
failed=0
for stage in "${stages[@]}"; do
  start=$(date +%s)
  echo "== $stage: started $(date +%T)"
  if run_stage "$stage" 2> >(tee "$out/$stage.log" >&2); then
    echo "== $stage: done in $(( $(date +%s) - start )) s"
  else
    echo "== $stage: FAILED after $(( $(date +%s) - start )) s (see $stage.log)"
    failed=1
  fi
done
exit $failed
