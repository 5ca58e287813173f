#!/usr/bin/env bash
# The measurements of levers built without device time, in one call on the lent GPU machine,
# from the repository root (carry .whl and benchmarks/.assets, made by scripts/gpu_bench.sh
# prepare). Everything lands under $OUT (default ./gpu-pending-out), one level deep (deeper folders
# do not come back from the device).
#
#   scripts/gpu_pending.sh [tests] [chains] [timeline] [kernels] [w1] [trace]     (default: the first five)
#
# Pending since the twenty-first session (2026-12-04; group_sync 2, the PDL gathers and the LM
# head's early block were measured and made defaults then: benchmarks/reports/group-sync-2026-12-04-h200):
# tests:    the GPU tests of the placeholder fill in the block-table gather (kernel and engine),
#           the final norm folded into the LM head (engine), group_sync in the engine and the kernel
# chains:   Qwen3-0.6B chains at context 384: the engine's configuration (group_sync 2) against the
#           barriers, and the step chains with and without l2_ahead (still: why W1 punishes it)
# timeline: per-stage timeline of the engine's configuration (groupsync2) against balanced16k
# kernels:  benchmarks/kernels.py --benches gather_rows (with the fill against fill_ids + gather)
# w1:       W1 Qwen3-0.6B, default / fill-in-gather / head-norm / both (AB_MODES overrides)
# trace:    the engine's batch-1 decode steps of Qwen3-0.6B (28 layers) under a device trace, with and
#           without INFER_DECODE_L2_AHEAD=1: which kernel or gap gets slower in the engine when the
#           chains call l2_ahead faster
set -u
export OUT=${OUT:-$PWD/gpu-pending-out}
mkdir -p "$OUT"
WHAT=${*:-tests chains timeline kernels w1}
want() { [[ " $WHAT " == *" $1 "* ]]; }
export PYTHONUNBUFFERED=1
source scripts/device_install.sh
status=0
P=layer-persistent
S=step-persistent
if want tests; then
  timeout "${TEST_TIMEOUT:-300}" python3 -m pytest -m gpu -q -p no:cacheprovider -rfE \
    tests/kernels/test_decode_layer_gpu.py tests/kernels/test_kernels_gpu.py tests/kernels/test_engine_gpu.py \
    -k "group_sync or gather_rows or placeholder or final_norm or persistent_decode" 2>&1 | tee "$OUT/gpu_tests.log" | tail -6
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
  timeout "${TEST_TIMEOUT:-300}" python3 -m pytest -m gpu -q -p no:cacheprovider -rfE tests/kernels/test_lm_head_gpu.py \
    2>&1 | tee "$OUT/gpu_tests_lm_head.log" | tail -4
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
fi
if want chains; then
  C=$P,$P-balanced16k-s2,$P-groupsync2-s2
  D=$S,$S-headnorm,$S-bal-l2gu-s2,$S-balanced16k-s2
  timeout "${CHAIN_TIMEOUT:-240}" python3 benchmarks/decode_chain.py --shape qwen3-0.6b --pdl 1 --context 384 \
    --chains "$C,$C,$D,$D" --out "$OUT/chains" 2>&1 | grep -E "^\| (layer|step)" | tail -14
fi
if want timeline; then
  timeout "${TIMELINE_TIMEOUT:-180}" python3 benchmarks/decode_layer_timeline.py --shape qwen3-0.6b \
    --variants balanced16k,groupsync2 --programs-per-sm 2 --context 384 --out "$OUT/timeline" 2>&1 | tail -1
  grep -E "^\| (interval|pdl|[0-9]|barrier|whole)" "$OUT/timeline/timeline.md"
fi
if want kernels; then
  timeout "${KERNELS_TIMEOUT:-180}" python3 benchmarks/kernels.py --benches gather_rows --models qwen3-1.7b \
    --out "$OUT/kernels" 2>&1 | tail -8
fi
if want w1; then
  AB_MODES=${AB_MODES:-default fill-in-gather head-norm fill-in-gather+head-norm default} AB_MODELS=${AB_MODELS:-qwen3-0.6b} \
    AB_WORKLOADS=W1 AB_REPEATS=${AB_REPEATS:-3} scripts/gpu_speed.sh ab 2>&1 | grep "^offline"
  mkdir -p "$OUT/w1"
  cp -r "$OUT"/ab/*/* "$OUT/w1/" 2>/dev/null
  rm -rf "$OUT/ab"
fi
if want trace; then
  for l2a in 0 1; do
    INFER_DECODE_L2_AHEAD=$l2a timeout "${TRACE_TIMEOUT:-150}" python3 benchmarks/profile_step.py --device cuda \
      --dtype bfloat16 --shape qwen3-0.6b --layers 28 --hidden 0 --vocab 0 --batch-sizes 1 --steps 20 --repeats 1 \
      --prompt-len 256 --clock wall --device-trace 20 --label "trace-l2ahead$l2a" \
      --checkpoint-dir /tmp/infer-profile-step-qwen3-0.6b --out "$OUT/trace" 2>&1 | grep -v "profiler_st" | tail -4
  done
  mkdir -p "$OUT/traces"
  for f in "$OUT"/trace/*/summary.md; do cp "$f" "$OUT/traces/$(basename "$(dirname "$f")").md"; done
  rm -rf "$OUT/trace"
fi
exit $status
