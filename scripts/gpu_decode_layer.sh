#!/usr/bin/env bash
# The persistent decode-layer kernel on the lent GPU machine (from the repository root; carry
# .whl and benchmarks/.assets, made by scripts/gpu_bench.sh prepare): its GPU tests, then the
# batch-1 layer chains (benchmarks/decode_chain.py) against the engine's unfused layer.
#
#   scripts/gpu_decode_layer.sh [quick] [chain] [sweep] [llama] [tests] [timeline] [sync] [e2e]
#
#   quick   the real-shape and CUDA-graph tests only (fast, before timing anything)
#   chain   Qwen3-0.6B chains layer-prologues (today's engine path), layer-persistent and the
#           launch cut after each stage (persistent-stages)
#   sweep   Qwen3-0.6B persistent config sweep (weight elements per step x warps x prefetch)
#   llama   the same chains for Llama-3.2-1B (llama-sweep: its config sweep)
#   tests   every GPU test of the kernel
#   timeline where each stage's time goes (benchmarks/decode_layer_timeline.py: per-program clock
#           stamps at the stage boundaries; TIMELINE_VARIANTS, TIMELINE_SHAPE)
#   sync    chains of the barrier variants (no sleep, nanosleeps of 32-400 ns before each poll,
#           arriving before the next stage's first tiles; SYNC_SHAPE, SYNC_CHAINS)
#   e2e     Qwen3-0.6B engine step profiles (async scheduling, pipelined, device time of the
#           batch-1 graph) with model.persistent_decode off and on (E2E_RUNS): does the step
#           wait for the device or the host, and does the graph get shorter by what the chain
#           says?
#   barrier benchmarks/grid_barrier.py: what one grid-wide exchange costs (the counter barrier
#           with and without a vector; flags)
#           for BARRIER_WORDS (default 1024) at BARRIER_PER_SM programs per SM (default 2)
#   ncu     Nsight Compute on one layer's launch of the Qwen3-0.6B chain (benchmarks/ncu_decode_layer.py,
#           --set full, warp-stall sampling every 32 cycles) for each of NCU_VARIANTS (default: the
#           launch's own configuration; else decode_chain variants); per-PC stall samples extracted
#           (benchmarks/ncu_stalls.py extract) and summed per stage (summarize); NCU_OPTS: more ncu
#           options (--cache-control none: keep the caches, the instruction cache too, warm)
#   stages  each stage its own launch (PDL between them, no grid barrier): the stage-by-stage GPU test,
#           the engine's (INFER_DECODE_STAGES) and the chains of both shapes against the one-launch
#           layer (balanced16k: the balanced stages a launch picks for itself) at 2 / 3 / 4 programs
#           per SM, and with each stage at its own programs per SM
#           (stages<qkv><attention><merge><o><gate/up><down>; STAGES_CHAINS overrides)
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
# chains_both_shapes NAME TIMEOUT CHAINS [ARGS...]: the chains (PDL on) for Qwen3-0.6B and Llama-3.2-1B, into
# $OUT/NAME-<shape>; ARGS: more decode_chain.py arguments (e.g. --context 500)
chains_both_shapes() {
  local name=$1 limit=$2 chains=$3
  shift 3
  for shape in qwen3-0.6b llama-3.2-1b; do
    timeout "$limit" python3 benchmarks/decode_chain.py --shape "$shape" --pdl 1 --chains "$chains" "$@" \
      --out "$OUT/$name-$shape" 2>&1 | grep -v "^|" | tail -8
  done
}
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
    --variants "${TIMELINE_VARIANTS:-sleep100,arrivefirst}" --out "$OUT/timeline-${TIMELINE_SHAPE:-qwen3-0.6b}" \
    --programs-per-sm "${TIMELINE_PER_SM:-4,2}" 2>&1 | tail -30
  if [ -n "${TIMELINE_SHARED:-}" ]; then  # the same variants with every layer reading layer 0's weights (L2)
    timeout "${TIMELINE_TIMEOUT:-200}" python3 benchmarks/decode_layer_timeline.py --shape "${TIMELINE_SHAPE:-qwen3-0.6b}" \
      --shared-weights --variants "${TIMELINE_VARIANTS:-sleep100,arrivefirst}" \
      --out "$OUT/timeline-shared-${TIMELINE_SHAPE:-qwen3-0.6b}" 2>&1 | tail -30
  fi
fi
if want sync; then
  timeout "${SYNC_TIMEOUT:-240}" python3 benchmarks/decode_chain.py --shape "${SYNC_SHAPE:-qwen3-0.6b}" --pdl 1 ${SYNC_ARGS:-} \
    --chains "${SYNC_CHAINS:-layer-prologues,layer-persistent,persistent-sync}" --out "$OUT/sync-${SYNC_SHAPE:-qwen3-0.6b}" 2>&1 \
    | grep -v "^|" | tail -20
fi
if want barrier; then
  timeout "${BARRIER_TIMEOUT:-150}" python3 benchmarks/grid_barrier.py --programs-per-sm "${BARRIER_PER_SM:-2}" \
    --words "${BARRIER_WORDS:-1024}" ${BARRIER_ARGS:-} --out "$OUT/barrier" 2>&1 | tail -30
fi
if want llama; then
  timeout "${CHAIN_TIMEOUT:-150}" python3 benchmarks/decode_chain.py --shape llama-3.2-1b \
    --chains layer-prologues,layer-persistent,persistent-stages --out "$OUT/chain-llama-3.2-1b" 2>&1 \
    | grep -v "^|" | tail -20
fi
if want stages; then
  timeout "${STAGES_TEST_TIMEOUT:-200}" python3 -m pytest -m gpu -q -x -p no:cacheprovider -rfE \
    tests/kernels/test_decode_layer_gpu.py tests/kernels/test_engine_gpu.py -k "stage_by_stage or own_program_count or persistent_decode_equals" \
    2>&1 | tee "$OUT/stages-tests.log" | tail -4
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
  chains_both_shapes stages "${STAGES_CHAIN_TIMEOUT:-120}" \
    "${STAGES_CHAINS:-layer-persistent-balanced16k-s2,layer-persistent-stages-s2,layer-persistent-stages-s3,layer-persistent-stages-s4,layer-persistent-stages211444-s2,layer-persistent-stages211244-s2,layer-persistent-stages411444-s2,layer-persistent-stages222444-s2,layer-persistent-balanced16k-s2,layer-persistent-stages-s2}"
fi
if want tests; then
  timeout "${TEST_TIMEOUT:-240}" python3 -m pytest -m gpu -q -p no:cacheprovider -rfE $T 2>&1 \
    | tee "$OUT/tests.log" | tail -15
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
fi
if want e2e; then
  for run in ${E2E_RUNS:-off on}; do
    flag=; [ "$run" = off ] || flag=--persistent-decode
    timeout "${E2E_TIMEOUT:-200}" python3 benchmarks/profile_step.py --device cuda --dtype bfloat16 \
      --shape qwen3-0.6b --layers 28 --hidden 0 --vocab 0 --batch-sizes 1 --steps 20 --repeats 2 \
      --prompt-len 256 --clock wall --async-scheduling --pipelined --device-time $flag \
      --label "qwen3-0.6b-async-$run" --checkpoint-dir /tmp/infer-profile-step-qwen3-0.6b \
      --out "$OUT/profiles" 2>&1 | grep -v "profiler_st" | grep -E "persistent|batch|^\|" | tail -6
  done
fi
if want ncu; then
  mkdir -p "$OUT/ncu"
  NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)
  "$NCU" --version | tail -1
  for v in ${NCU_VARIANTS:-default}; do
    timeout "${NCU_TIMEOUT:-240}" "$NCU" --clock-control none ${NCU_OPTS:-} -k regex:_decode_layer_kernel \
      --launch-skip "${NCU_SKIP:-40}" --launch-count 1 --set full --import-source yes --warp-sampling-interval 0 \
      -f -o "$OUT/ncu/$v" python3 benchmarks/ncu_decode_layer.py --variant "$v" ${NCU_ARGS:-} 2>&1 | tail -4
    python3 benchmarks/ncu_stalls.py extract "$OUT/ncu/$v.ncu-rep" "$OUT/ncu/$v.json" 2>&1 | tail -4
    "$NCU" -i "$OUT/ncu/$v.ncu-rep" --page details --csv > "$OUT/ncu/$v-details.csv" 2>&1
    "$NCU" -i "$OUT/ncu/$v.ncu-rep" --page source --csv --print-source sass > "$OUT/ncu/$v-source.csv" 2>&1
    python3 benchmarks/ncu_stalls.py summarize "$OUT/ncu/$v.json" --top 30 > "$OUT/ncu/$v-stalls.txt" 2>&1 \
      || python3 benchmarks/ncu_stalls.py summarize "$OUT/ncu/$v-source.csv" --top 30 > "$OUT/ncu/$v-stalls.txt" 2>&1
    head -c 5000 "$OUT/ncu/$v-stalls.txt"; head -3 "$OUT/ncu/$v-source.csv" | cut -c1-600
  done
fi
exit $status
