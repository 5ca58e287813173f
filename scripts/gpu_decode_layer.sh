#!/usr/bin/env bash
# The persistent decode-layer kernel on the lent GPU machine (from the repository root; carry
# .whl and benchmarks/.assets, made by scripts/gpu_bench.sh prepare): its GPU tests, then the
# batch-1 layer chains (benchmarks/decode_chain.py) against the engine's unfused layer.
#
#   scripts/gpu_decode_layer.sh [quick] [chain] [sweep] [llama] [tests]
#
#   quick   the real-shape and CUDA-graph tests only (fast, before timing anything)
#   chain   Qwen3-0.6B chains layer-prologues (today's engine path), layer-persistent and the
#           launch cut after each stage (persistent-stages)
#   sweep   Qwen3-0.6B persistent config sweep (weight elements per step x warps x prefetch)
#   llama   the same chains for Llama-3.2-1B (llama-sweep: its config sweep)
#   tests   every GPU test of the kernel
#   timeline where each stage's time goes (benchmarks/decode_layer_timeline.py: per-program clock
#           stamps at the stage boundaries; TIMELINE_VARIANTS, TIMELINE_SHAPE)
#   sync    chains of the synchronisation variants (merge in the attention stage, barrier polls
#           that are loads; SYNC_SHAPE)
#   l2      Qwen3-0.6B chains with the later weights asked into L2 ahead (budgets, first stage,
#           programs per SM; stage cuts), against the engine path and the launch without it
#   l2-llama the same sweep for Llama-3.2-1B
#   e2e     Qwen3-0.6B engine step profiles (async scheduling, pipelined, device time of the
#           batch-1 graph) with model.persistent_decode off, on, and on with E2E_L2_MIB (24)
#           asked into L2 ahead (E2E_RUNS picks): does the step wait for the device or the
#           host, and does the graph get shorter by what the chain says?
# Results under $OUT (default ./gpu-decode-layer-out).
set -u
OUT=${OUT:-$PWD/gpu-decode-layer-out}
mkdir -p "$OUT"
WHAT=${*:-quick chain llama tests}
want() { [[ " $WHAT " == *" $1 "* ]]; }
export PYTHONUNBUFFERED=1
[ -n "${SKIP_INSTALL:-}" ] || source scripts/device_install.sh >/dev/null 2>&1
[ -f benchmarks/.assets/commit ] && export INFER_BENCH_COMMIT="$(cut -c1-12 benchmarks/.assets/commit)"
status=0
T=tests/kernels/test_decode_layer_gpu.py
if want quick; then
  timeout "${QUICK_TIMEOUT:-180}" python3 -m pytest -m gpu -q -x -p no:cacheprovider -rfE $T \
    -k "${QUICK_K:-test_real_shapes and not configs or graph}" 2>&1 | tee "$OUT/quick_tests.log" | tail -15
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
fi
if want chain; then
  timeout "${CHAIN_TIMEOUT:-150}" python3 benchmarks/decode_chain.py --shape qwen3-0.6b \
    --chains layer-prologues,layer-persistent,persistent-stages --out "$OUT/chain-qwen3-0.6b" 2>&1 \
    | grep -v "^|" | tail -20
fi
if want sweep; then
  timeout "${SWEEP_TIMEOUT:-240}" python3 benchmarks/decode_chain.py --shape qwen3-0.6b \
    --chains persistent-sweep --pdl 1 --out "$OUT/sweep-qwen3-0.6b" 2>&1 | grep -v "^|" | tail -40
fi
if want llama-sweep; then
  timeout "${SWEEP_TIMEOUT:-240}" python3 benchmarks/decode_chain.py --shape llama-3.2-1b \
    --chains persistent-sweep --pdl 1 --out "$OUT/sweep-llama-3.2-1b" 2>&1 | grep -v "^|" | tail -40
fi
if want timeline; then
  timeout "${TIMELINE_TIMEOUT:-200}" python3 benchmarks/decode_layer_timeline.py --shape "${TIMELINE_SHAPE:-qwen3-0.6b}" \
    --variants "${TIMELINE_VARIANTS:-base,fused,pollload,fused-pollload}" --out "$OUT/timeline-${TIMELINE_SHAPE:-qwen3-0.6b}" \
    2>&1 | tail -30
fi
if want sync; then
  timeout "${SYNC_TIMEOUT:-240}" python3 benchmarks/decode_chain.py --shape "${SYNC_SHAPE:-qwen3-0.6b}" --pdl 1 \
    --chains "${SYNC_CHAINS:-layer-prologues,layer-persistent,persistent-sync}" --out "$OUT/sync-${SYNC_SHAPE:-qwen3-0.6b}" 2>&1 \
    | grep -v "^|" | tail -20
fi
if want l2; then
  timeout "${L2_TIMEOUT:-240}" python3 benchmarks/decode_chain.py --shape qwen3-0.6b --pdl 1 \
    --chains layer-prologues,layer-persistent,persistent-l2,persistent-stages,persistent-l2-stages \
    --out "$OUT/l2-qwen3-0.6b" 2>&1 | grep -v "^|" | tail -40
fi
if want l2-llama; then
  timeout "${L2_TIMEOUT:-240}" python3 benchmarks/decode_chain.py --shape llama-3.2-1b --pdl 1 \
    --chains layer-persistent,persistent-l2 --out "$OUT/l2-llama-3.2-1b" 2>&1 | grep -v "^|" | tail -40
fi
if want llama; then
  timeout "${CHAIN_TIMEOUT:-150}" python3 benchmarks/decode_chain.py --shape llama-3.2-1b \
    --chains layer-prologues,layer-persistent,persistent-stages --out "$OUT/chain-llama-3.2-1b" 2>&1 \
    | grep -v "^|" | tail -20
fi
if want tests; then
  timeout "${TEST_TIMEOUT:-240}" python3 -m pytest -m gpu -q -p no:cacheprovider -rfE $T 2>&1 \
    | tee "$OUT/tests.log" | tail -15
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
fi
if want e2e; then
  for run in ${E2E_RUNS:-off on on-l2}; do
    flag=; [ "$run" = off ] || flag=--persistent-decode
    l2=0; [ "$run" = on-l2 ] && l2=${E2E_L2_MIB:-24}
    INFER_DECODE_L2_MIB=$l2 timeout "${E2E_TIMEOUT:-200}" python3 benchmarks/profile_step.py --device cuda --dtype bfloat16 \
      --shape qwen3-0.6b --layers 28 --hidden 0 --vocab 0 --batch-sizes 1 --steps 20 --repeats 2 \
      --prompt-len 256 --clock wall --async-scheduling --pipelined --device-time $flag \
      --label "qwen3-0.6b-async-$run" --checkpoint-dir /tmp/infer-profile-step-qwen3-0.6b \
      --out "$OUT/profiles" 2>&1 | grep -v "profiler_st" | grep -E "persistent|batch|^\|" | tail -6
  done
fi
exit $status
