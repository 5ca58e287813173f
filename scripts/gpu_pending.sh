#!/usr/bin/env bash
# The measurements of levers built without device time, in one call on the lent GPU machine,
# from the repository root (carry .whl and benchmarks/.assets, made by scripts/gpu_bench.sh
# prepare). Everything lands under $OUT (default ./gpu-pending-out), one level deep (deeper folders
# do not come back from the device).
#
#   scripts/gpu_pending.sh [smoke] [kernels] [tests2] [longtests] [longctx] [longw1]   (default: smoke;
#                                       each of smoke / longtests / longctx / longw1 fits one device call)
#
# smoke:    after the twenty-fifth session's change (2026-12-05, no device: the levers measured slower removed
#           from the persistent layer, the layer split into a package; sm_90 SASS byte-identical offline): the
#           layer's GPU tests at both real shapes (one launch, graph replay, three launches on one workspace,
#           group_sync over launches) and the engine's persistent-decode tests
#
# Measured in the twenty-second session (2026-12-04, benchmarks/reports/multi-layer-launch-2026-12-04-h200):
# the placeholder fill in the gather and the final norm in the head (a tie, opt-in).
# kernels:  benchmarks/kernels.py --benches gather_rows (with the fill against fill_ids + gather)
# tests2:   the engine tests of the placeholder fill in the gather and of the final norm in the head, with
#           the gather kernel's and the LM head's GPU tests (passed in the twenty-third session:
#           benchmarks/reports/o-heads-chain-l2next-2026-12-04-h200)
#
# Measured in the twenty-fifth session (2026-12-05, benchmarks/reports/long-context-levers-2026-12-05-h200;
# longtests 37 passed, smoke passed; both levers stay off: long contexts gain, W1 loses with min_splits).
# Built in the twenty-fourth session (2026-12-04, no device): kv_ahead, each
# attention item asking L2 for its split's later key tiles at its start (INFER_DECODE_KV_AHEAD=1), and
# min_splits, each step using the fewest key splits from N up that give each split at most one key tile
# (INFER_DECODE_MIN_SPLITS=N; with INFER_DECODE_SPLITS=32 up to 32 splits).
# longtests: their GPU tests (both shapes, one launch and stage by stage, up to 9,000 keys; the engine's
#           greedy tokens of 1,500-token prompts against the usual path; about 20 compiles of the layer)
# longctx:  chains at 384 / 2,000 / 4,000 / 8,000 keys: the default, kv_ahead, 8 splits (W1 0.642 against 0.647
#           ms per token, 42.6 against 30.9 µs per layer at 4,000 keys), 8 splits + kv_ahead, min_splits 8,
#           min_splits 8 of 32 + kv_ahead (Qwen3-0.6B one launch; Llama-3.2-1B stage by stage at 4,000),
#           and the timeline at 4,000 keys
# longw1:   W1 at 2,048 + 2,048 tokens (--scale 8): off, kv_ahead, min_splits 8 of 32 + kv_ahead; the usual W1:
#           off, min_splits 8 (of 16), min_splits 8 of 32 +
#           kv_ahead (Qwen3-0.6B; AB_MODELS adds Llama-3.2-1B; each mode starts an engine, about 30 s)
set -u
export OUT=${OUT:-$PWD/gpu-pending-out}
mkdir -p "$OUT"
WHAT=${*:-smoke}
want() { [[ " $WHAT " == *" $1 "* ]]; }
export PYTHONUNBUFFERED=1
source scripts/device_install.sh
status=0
P=layer-persistent
if want tests2; then
  timeout "${TEST_TIMEOUT:-300}" python3 -m pytest -m gpu -q -p no:cacheprovider -rfE \
    tests/kernels/test_kernels_gpu.py tests/kernels/test_engine_gpu.py \
    -k "gather_rows or placeholder or final_norm" 2>&1 | tee "$OUT/gpu_tests2.log" | tail -6
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
  timeout "${TEST_TIMEOUT:-300}" python3 -m pytest -m gpu -q -p no:cacheprovider -rfE tests/kernels/test_lm_head_gpu.py \
    2>&1 | tee "$OUT/gpu_tests_lm_head.log" | tail -4
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
fi
if want kernels; then
  timeout "${KERNELS_TIMEOUT:-180}" python3 benchmarks/kernels.py --benches gather_rows --models qwen3-1.7b \
    --out "$OUT/kernels" 2>&1 | tail -8
fi
if want smoke; then
  timeout "${TEST_TIMEOUT:-420}" python3 -m pytest -m gpu -q -p no:cacheprovider -rfE \
    tests/kernels/test_decode_layer_gpu.py tests/kernels/test_engine_gpu.py \
    -k "(test_real_shapes and not configs) or graph_of_layers or launches_with_different_inputs or group_sync_over_launches or persistent_decode_equals_usual_path" \
    2>&1 | tee "$OUT/gpu_tests_smoke.log" | tail -4
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
fi
if want longtests; then
  timeout "${TEST_TIMEOUT:-420}" python3 -m pytest -m gpu -q -p no:cacheprovider -rfE \
    tests/kernels/test_decode_layer_gpu.py tests/kernels/test_engine_gpu.py -k "long_context" \
    2>&1 | tee "$OUT/gpu_tests_long.log" | tail -4
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
fi
if want longctx; then
  G=$P-groupsync2-s2,$P-groupsync2-kvahead-s2,$P-groupsync2-splits8-s2,$P-groupsync2-splits8-kvahead-s2
  G=$G,$P-groupsync2-minsplits8-s2,$P-groupsync2-splits32-minsplits8-kvahead-s2
  for ctx in 384 2000 4000 8000; do
    timeout "${CHAIN_TIMEOUT:-240}" python3 benchmarks/decode_chain.py --shape qwen3-0.6b --pdl 1 --context $ctx \
      --chains "$G,$G" --out "$OUT/chains-q$ctx" 2>&1 | grep -E "^\| layer|Error|error" | tail -14
  done
  L=$P-stages411444-s4,$P-stages411444-kvahead-s4,$P-stages411444-minsplits8-kvahead-s4
  timeout "${CHAIN_TIMEOUT:-240}" python3 benchmarks/decode_chain.py --shape llama-3.2-1b --pdl 1 --context 4000 \
    --chains "$L,$L" --out "$OUT/chains-l4000" 2>&1 | grep -E "^\| layer|Error|error" | tail -8
  timeout "${TIMELINE_TIMEOUT:-180}" python3 benchmarks/decode_layer_timeline.py --shape qwen3-0.6b \
    --variants groupsync2,groupsync2-kvahead,groupsync2-splits32-minsplits8-kvahead --programs-per-sm 2 --context 4000 --out "$OUT/timeline-4000" 2>&1 | tail -1
  grep -E "^\| (2|3a|barrier 2|whole)" "$OUT/timeline-4000/timeline.md"
fi
if want longw1; then
  AB_MODES=${AB_MODES:-scale8 scale8+kv-ahead scale8+splits32+min-splits8+kv-ahead default min-splits8 splits32+min-splits8+kv-ahead} \
    AB_MODELS=${AB_MODELS:-qwen3-0.6b} AB_WORKLOADS=W1 AB_REPEATS=${AB_REPEATS:-3} \
    scripts/gpu_speed.sh ab 2>&1 | grep "^offline"
  mkdir -p "$OUT/longw1"
  cp -r "$OUT"/ab/*/* "$OUT/longw1/" 2>/dev/null
  rm -rf "$OUT/ab"
fi
exit $status
