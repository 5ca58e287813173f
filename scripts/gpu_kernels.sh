#!/usr/bin/env bash
# The kernels' GPU run, for the lent GPU machine (run from the repository root there):
# installs the project (carried wheels from .whl/ for what the image lacks), runs the
# GPU-marked kernel tests and the kernel micro-benchmark, and leaves the logs, the parity
# figures and the benchmark report under $OUT (default ./gpu-out).
#
#   scripts/gpu_kernels.sh [tests|bench|all] [--sweep]
set -u
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
what=${1:-all}
sweep=${2:-}
export PYTHONUNBUFFERED=1
source scripts/device_install.sh
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,power.draw --format=csv
status=0
if [ "$what" = bench ] || [ "$what" = all ]; then
  timeout "${BENCH_TIMEOUT:-420}" python3 benchmarks/kernels.py --out "$OUT/kernels" $sweep 2>&1 \
    | tee "$OUT/bench.log" | tail -70
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
fi
if [ "$what" = tests ] || [ "$what" = all ]; then
  rm -f "$OUT/parity.jsonl"
  INFER_PARITY_REPORT="$OUT/parity.jsonl" timeout "${TEST_TIMEOUT:-400}" python3 -m pytest -m gpu \
    tests/kernels/test_kernels_gpu.py tests/kernels/test_model_parity_gpu.py tests/kernels/test_engine_gpu.py \
    -v -rfE -p no:cacheprovider --durations=8 2>&1 | tee "$OUT/gpu_tests.log" \
    | grep -E "FAILED|ERROR|Error|passed|failed|^[0-9.]+s " | tail -40
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
fi
exit $status
