#!/usr/bin/env bash
# The CUDA probes of a Hopper-specific decode layer (benchmarks/hopper/, from the repository root on
# the lent GPU machine): the GPU tests of the probes and of the run-time CUDA C++ kernels
# (kernels.nvrtc, kernels.cuda_launch, kernels.decode_layer_cuda; the project is installed for them, as by the other GPU
# scripts), then benchmarks/hopper_programs.py for each program (nvcc and python3 only).
# Everything lands under $OUT (default ./gpu-hopper-out).
#
#   scripts/gpu_hopper.sh [tests] [handoffs] [gemv_stages] [decode_layer]   (default: all four)
#
# HANDOFFS_ARGS / GEMV_ARGS / LAYER_ARGS go to the programs (e.g. GEMV_ARGS="--stages 4 --chunk 8192").
set -u
OUT=${OUT:-$PWD/gpu-hopper-out}
mkdir -p "$OUT"
WHAT=${*:-tests handoffs gemv_stages decode_layer}
want() { [[ " $WHAT " == *" $1 "* ]]; }
export PYTHONUNBUFFERED=1
status=0
if want tests; then
  source scripts/device_install.sh
  timeout "${TEST_TIMEOUT:-300}" python3 -m pytest -m gpu -q -p no:cacheprovider -rfE \
    tests/bench/test_hopper_programs.py tests/kernels/test_cuda_source.py tests/kernels/test_decode_layer_cuda.py 2>&1 | tee "$OUT/gpu_tests.log" | tail -15
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
fi
if want handoffs; then
  timeout "${RUN_TIMEOUT:-240}" python3 benchmarks/hopper_programs.py handoffs --out "$OUT" -- ${HANDOFFS_ARGS:-} \
    || status=1
fi
if want gemv_stages; then
  timeout "${RUN_TIMEOUT:-240}" python3 benchmarks/hopper_programs.py gemv_stages --out "$OUT" -- ${GEMV_ARGS:-} \
    || status=1
fi
if want decode_layer; then
  timeout "${RUN_TIMEOUT:-240}" python3 benchmarks/hopper_programs.py decode_layer --out "$OUT" -- ${LAYER_ARGS:-} \
    || status=1
fi
exit $status
