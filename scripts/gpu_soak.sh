#!/usr/bin/env bash
# The reliability issue's GPU soak (from the repository root on the lent GPU machine): 8 minutes
# of 2 x max_num_seqs chaos streams against infer-serve on a random Llama-3.2-1B-shaped
# checkpoint, with a KV pool small enough to preempt (docs/reliability.md). Carry .whl
# (scripts/gpu_bench.sh prepare). The report lands in $OUT/soak-gpu (default ./gpu-soak-out).
#
#   scripts/gpu_soak.sh [DURATION_S]     (default 480; one device command may run 600 s)
set -u
OUT=${OUT:-$PWD/gpu-soak-out}
mkdir -p "$OUT"
DURATION=${1:-480}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
source scripts/device_install.sh
[ -f benchmarks/.assets/commit ] && export INFER_BENCH_COMMIT="$(cat benchmarks/.assets/commit)"
MODEL=/tmp/llama1b
[ -f $MODEL/model.safetensors ] || python3 -m infer_core.bench.cli checkpoint llama-3.2-1b --out $MODEL || exit 1
python3 -m infer_core.bench.cli soak --model $MODEL --duration "$DURATION" --model.device cuda \
  --model.dtype bfloat16 --model.max_model_len 2048 --scheduler.max_num_seqs 64 --cache.backend prefix \
  --cache.num_blocks "${SOAK_NUM_BLOCKS:-128}" --out "$OUT/soak-gpu" 2>&1 | tail -60
