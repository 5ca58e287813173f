#!/usr/bin/env bash
# The CUDA probes of a Hopper-specific decode layer (benchmarks/hopper/, from the repository root on
# the lent GPU machine): the GPU tests of the probes and of the run-time CUDA C++ kernels
# (kernels.nvrtc, kernels.cuda_launch, kernels.decode_layer_cuda; the project is installed for them, as by the other GPU
# scripts), then benchmarks/hopper_programs.py for each program (nvcc and python3 only).
# Everything lands under $OUT (default ./gpu-hopper-out).
#
#   scripts/gpu_hopper.sh [tests] [handoffs] [gemv_stages] [decode_layer] [layer-matrix]
#                                                       (default: the first four)
#
# HANDOFFS_ARGS / GEMV_ARGS / LAYER_ARGS go to the programs (e.g. GEMV_ARGS="--stages 4 --chunk 8192").
# layer-matrix: decode_layer built once per kernel switch (decode_layer.cuh's DL_REDUCE, DL_KEEP_RES,
# DL_MERGE, DL_EARLY; LAYER_BUILDS="name=-DFLAG,-DFLAG2 ..." picks others) with per-stage timelines, grid and clusters
# of 16 at 2 CTAs per SM (MATRIX_ARGS), into $OUT/matrix/ (decode_layer.json / .md).
set -u
OUT=${OUT:-$PWD/gpu-hopper-out}
mkdir -p "$OUT"
WHAT=${*:-tests handoffs gemv_stages decode_layer}
LAYER_BUILDS=${LAYER_BUILDS:-atomics=-DDL_REDUCE=0,-DDL_KEEP_RES=0 reloadres=-DDL_KEEP_RES=0 serialmerge=-DDL_MERGE=0 early=-DDL_EARLY=1}
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
if want layer-matrix; then
  builds=(); for b in $LAYER_BUILDS; do builds+=(--build "$b"); done
  timeout "${MATRIX_TIMEOUT:-400}" python3 benchmarks/hopper_programs.py decode_layer --out "$OUT/matrix" --timeline \
    --timeout 60 "${builds[@]}" -- ${MATRIX_ARGS:---poll-ns 100 --ctas-per-sm 2 --clusters 16} || status=1
fi
exit $status
