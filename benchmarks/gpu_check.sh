#!/bin/bash
# The GPU checks in one run, for a machine with a CUDA GPU and a Python whose torch sees it
# (PYTHON, default python3; its environment needs pytest, hypothesis, scipy, expecttest and timm):
# build the extension in place with its CUDA kernels, run every CUDA-marked test, then the GPU
# benchmarks (operators; training step eager and CUDA-graphed). Logs and tables go to
# $OUT (default ./gpu-check). A step that runs past its time limit is stopped and reported.
#
#   bash benchmarks/gpu_check.sh            # TORCH_CUDA_ARCH_LIST defaults to 9.0 (H100/H200)
set -u
PYTHON=${PYTHON:-python3}
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

step() {  # step NAME LIMIT_S COMMAND...: runs COMMAND into $OUT/NAME, prints its status and time
  local name=$1 limit=$2 start=$SECONDS
  shift 2
  timeout "$limit" "$@" >"$OUT/$name" 2>&1
  local rc=$?
  echo "== $name: exit $rc in $((SECONDS - start)) s$([ $rc = 124 ] && echo ' (time limit)')"
  return $rc
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/env.txt"
SMOOTHPRUNE_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16} \
  step build.log 300 "$PYTHON" setup.py build_ext --inplace || { tail -30 "$OUT/build.log"; exit 1; }
"$PYTHON" -c "import smoothprune as sp, torch; print(torch.__version__, sp._native.build_info())" | tee -a "$OUT/env.txt"
step tests.log 300 "$PYTHON" -m pytest -m cuda tests/ops tests/test_bench.py -q -p no:cacheprovider -rf
grep -E "passed|skipped|failed|FAILED|rror" "$OUT/tests.log" | tail -20
step ops.md 120 "$PYTHON" benchmarks/bench_ops.py --device cuda --repeats 15 && grep -A20 "^bars:" "$OUT/ops.md"
step step.md 90 "$PYTHON" benchmarks/bench_pruning_step.py --device cuda --repeats 15 && grep "^|" "$OUT/step.md"
step step_graph.md 90 "$PYTHON" benchmarks/bench_pruning_step.py --device cuda --repeats 15 --cuda-graph \
  && grep "^|" "$OUT/step_graph.md"
