#!/usr/bin/env bash
# The measurements of levers built without device time, in one call on the lent GPU machine,
# from the repository root (carry .whl and benchmarks/.assets, made by scripts/gpu_bench.sh
# prepare). Everything lands under $OUT (default ./gpu-pending-out), one level deep (deeper folders
# do not come back from the device).
#
#   scripts/gpu_pending.sh [tests] [chains] [timeline] [kernels] [w1] [trace] [tests2]     (default: the first five)
#
# For the twenty-third session (2026-12-04): group_sync 3 (INFER_DECODE_GROUP_SYNC=3: no merge stage, the last
# of a KV group's attention items merges the group's heads).
# tests:    the GPU tests of group_sync 3 (kernel: against the reference, over launches; engine: greedy tokens)
# chains:   Qwen3-0.6B chains at context 384: groupsync2 (the default) against groupsync3, and the step chains
# timeline: per-stage timeline of groupsync2 against groupsync3
# kernels:  benchmarks/kernels.py --benches gather_rows (with the fill against fill_ids + gather)
# w1:       W1 Qwen3-0.6B, default / group-sync3 (AB_MODES overrides)
# trace:    the engine's batch-1 decode steps of Qwen3-0.6B (28 layers) under a device trace, one launch
#           per layer and all layers in one (INFER_DECODE_LAYERS=0)
# tests2:   not yet run on the GPU: the engine tests of the placeholder fill in the gather and of the final
#           norm in the head, with the gather kernel's and the LM head's GPU tests
set -u
export OUT=${OUT:-$PWD/gpu-pending-out}
mkdir -p "$OUT"
WHAT=${*:-tests chains w1 timeline}
want() { [[ " $WHAT " == *" $1 "* ]]; }
export PYTHONUNBUFFERED=1
source scripts/device_install.sh
status=0
P=layer-persistent
S=step-persistent
if want tests; then
  T=tests/kernels/test_engine_gpu.py::test_persistent_decode_equals_usual_path_fp32
  timeout "${TEST_TIMEOUT:-300}" python3 -m pytest -m gpu -q -p no:cacheprovider -rfE \
    "$T[-3--qwen3-overrides1]" "tests/kernels/test_decode_layer_gpu.py::test_group_sync[3-2-300-qwen3-0.6b]" \
    "tests/kernels/test_decode_layer_gpu.py::test_group_sync_over_launches[3]" \
    2>&1 | tee "$OUT/gpu_tests.log" | tail -6
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
fi
if want tests2; then
  timeout "${TEST_TIMEOUT:-300}" python3 -m pytest -m gpu -q -p no:cacheprovider -rfE \
    tests/kernels/test_kernels_gpu.py tests/kernels/test_engine_gpu.py \
    -k "gather_rows or placeholder or final_norm" 2>&1 | tee "$OUT/gpu_tests2.log" | tail -6
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
  timeout "${TEST_TIMEOUT:-300}" python3 -m pytest -m gpu -q -p no:cacheprovider -rfE tests/kernels/test_lm_head_gpu.py \
    2>&1 | tee "$OUT/gpu_tests_lm_head.log" | tail -4
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
fi
if want chains; then
  C=$P-groupsync2-s2,$P-groupsync3-s2
  D=$S,$S-groupsync3-s2
  timeout "${CHAIN_TIMEOUT:-240}" python3 benchmarks/decode_chain.py --shape qwen3-0.6b --pdl 1 --context 384 \
    --chains "$C,$C,$D,$D" --out "$OUT/chains" 2>&1 | grep -E "^\| (layer|step)|fit|Error|error" | tail -16
fi
if want timeline; then
  timeout "${TIMELINE_TIMEOUT:-180}" python3 benchmarks/decode_layer_timeline.py --shape qwen3-0.6b \
    --variants groupsync2,groupsync3 --programs-per-sm 2 --context 384 --out "$OUT/timeline" 2>&1 | tail -1
  grep -E "^\| (interval|pdl|[0-9]|barrier|whole)" "$OUT/timeline/timeline.md"
fi
if want kernels; then
  timeout "${KERNELS_TIMEOUT:-180}" python3 benchmarks/kernels.py --benches gather_rows --models qwen3-1.7b \
    --out "$OUT/kernels" 2>&1 | tail -8
fi
if want w1; then
  AB_MODES=${AB_MODES:-default group-sync3 default group-sync3} AB_MODELS=${AB_MODELS:-qwen3-0.6b} \
    AB_WORKLOADS=W1 AB_REPEATS=${AB_REPEATS:-3} scripts/gpu_speed.sh ab 2>&1 | grep "^offline"
  mkdir -p "$OUT/w1"
  cp -r "$OUT"/ab/*/* "$OUT/w1/" 2>/dev/null
  rm -rf "$OUT/ab"
fi
if want trace; then
  for lay in 1 0; do
    INFER_DECODE_LAYERS=$lay timeout "${TRACE_TIMEOUT:-150}" python3 benchmarks/profile_step.py --device cuda \
      --dtype bfloat16 --shape qwen3-0.6b --layers 28 --hidden 0 --vocab 0 --batch-sizes 1 --steps 20 --repeats 1 \
      --prompt-len 256 --clock wall --device-trace 20 --label "trace-layers$lay" \
      --checkpoint-dir /tmp/infer-profile-step-qwen3-0.6b --out "$OUT/trace" 2>&1 | grep -v "profiler_st" | tail -4
  done
  mkdir -p "$OUT/traces"
  for f in "$OUT"/trace/*/summary.md; do cp "$f" "$OUT/traces/$(basename "$(dirname "$f")").md"; done
  rm -rf "$OUT/trace"
fi
exit $status
