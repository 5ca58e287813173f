#!/usr/bin/env bash
# infer's GPU benchmark run (issue 9), for the lent H200, from the repository root there.
#
#   scripts/gpu_bench.sh prepare            # HERE, once: Qwen 3 tokenizer + device wheels
#   scripts/gpu_bench.sh [PHASE ...]        # THERE: default all phases, in this order:
#
#   offline-llama  W1, W4, W2 through LLM.generate, Llama-3.2-1B shape (random bf16 weights)
#   offline-qwen   W1, W2, Qwen3-0.6B shape (the real Qwen 3 tokenizer when carried)
#   hf-llama       the same W1, W4, W2 through transformers (generate with a static cache
#                  for W1, first: the cheap ratio lands before a cap; continuous batching for
#                  the rest), same machine, same call
#   hf-qwen        W1, W2 through transformers
#   w2-subset      W2's first GPU_BENCH_W2_SUBSET (32) requests through infer and transformers
#                  (not in the default set; GPU_BENCH_HF_LLAMA / _HF_QWEN pick the hf workloads)
#   serve          W3 (concurrency 1/8/32/128), W4, W5, W6 over HTTP against infer-serve
#                  (GPU_BENCH_SERVE_WORKLOADS picks others, e.g. W3-c32; GPU_BENCH_SERVE_MODES="thread
#                  process" serves them with server.engine_process off, then on)
#   matrix         configuration matrix + policy sweep (W4/W5/W6, 32 requests each)
#
# Every phase has a time cap and the whole run a budget (GPU_BENCH_BUDGET_S, default 480 s);
# a phase that would start with too little budget left is skipped, a phase that hits its cap
# keeps what it finished (each result is written as it lands). The end of the output lists
# what ran, what timed out and what was skipped, then prints summary.md.
#
# Repeats (the report quotes the median of each figure, with the spread): offline phases
# GPU_BENCH_REPEATS (default 3), hf phases GPU_BENCH_REPEATS_HF (default 1: transformers is
# slow), serve GPU_BENCH_REPEATS_SERVE (default 1). The matrix runs once.
#
# Output ($OUT, default ./gpu-bench-out): <date>-<device>/ with report.json, summary.md and
# the plots (copy it to benchmarks/reports/ and commit), and gpu_bench.log. Two runs (e.g.
# "offline-llama offline-qwen hf-llama hf-qwen", then "serve matrix") merge with:
#   infer-bench report benchmarks/reports/<dir> --add <other run's dir>
set -uo pipefail

PY=${PYTHON:-python3}
BUDGET_S=${GPU_BENCH_BUDGET_S:-480}
MIN_PHASE_S=${GPU_BENCH_MIN_PHASE_S:-45}   # do not start a phase with less than this left
WORK=${GPU_BENCH_WORK:-/tmp/infer-bench}
CONFIG=${GPU_BENCH_CONFIG:-benchmarks/configs/h200.toml}
EXTRA=(${GPU_BENCH_EXTRA:-})                # e.g. "--scale 0.05 --num-prompts 4" for a smoke run
ASSETS=benchmarks/.assets
PORT=${GPU_BENCH_PORT:-8011}
ALL_PHASES="offline-llama offline-qwen hf-llama hf-qwen serve matrix"
REPEATS=${GPU_BENCH_REPEATS:-3} REPEATS_HF=${GPU_BENCH_REPEATS_HF:-1} REPEATS_SERVE=${GPU_BENCH_REPEATS_SERVE:-1}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

# ---- here: prepare what the GPU machine cannot fetch ----------------------------------------
if [ "${1:-}" = prepare ]; then
  set -e
  mkdir -p "$ASSETS/qwen3-tokenizer"
  tok=$(.venv/bin/python -m infer_core.testing.fixtures qwen3-tokenizer)
  cp "$tok/tokenizer.json" "$tok/tokenizer_config.json" "$ASSETS/qwen3-tokenizer/"
  # the copied tree there may have no .git: the reports take the commit from here
  echo "$(git rev-parse HEAD)$([ -n "$(git status --porcelain --untracked-files=no)" ] && echo ' dirty')" \
    > "$ASSETS/commit"
  wheels=${DEVICE_WHEELS:-../shared/tools/device-wheels}
  [ -x "$wheels" ] && "$wheels" pydantic-settings litestar uvicorn openai
  du -sh "$ASSETS" .whl 2>/dev/null
  cat <<'EOF'
Now run on the device (one call, ~8 minutes):
  run(command="scripts/gpu_bench.sh", carry=[".whl", "benchmarks/.assets"], timeout_s=600)
EOF
  exit 0
fi

# ---- there --------------------------------------------------------------------------------
OUT=${OUT:-$PWD/gpu-bench-out}
mkdir -p "$OUT" "$WORK"
LOG="$OUT/gpu_bench.log"
PHASES=${*:-$ALL_PHASES}
RAN=() TIMED_OUT=() FAILED=() SKIPPED=()
SERVER_PID=""
trap '[ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null' EXIT

say() { echo "[gpu_bench $(date -u +%T) +${SECONDS}s] $*" | tee -a "$LOG"; }
want() { [[ " $PHASES " == *" $1 "* ]]; }

# phase NAME CAP_S COMMAND...: run under a time cap cut to the budget left.
phase() {
  local name=$1 cap=$2; shift 2
  local left=$((BUDGET_S - SECONDS))
  if (( left < MIN_PHASE_S )); then
    SKIPPED+=("$name (${left}s of budget left)"); say "skip $name: only ${left}s of the budget left"; return 1
  fi
  (( cap > left - 5 )) && cap=$((left - 5))
  say "start $name (cap ${cap}s)"
  timeout -k 15 "$cap" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  case $rc in
    0) RAN+=("$name") ;;
    124|137) TIMED_OUT+=("$name (cap ${cap}s; finished workloads kept)") ;;
    *) FAILED+=("$name (exit $rc)") ;;
  esac
  say "end $name: exit $rc"
  return 0
}

BENCH=("$PY" -m infer_core.bench.cli)
[ -f "$ASSETS/commit" ] && export INFER_BENCH_COMMIT="$(cat "$ASSETS/commit")"

say "phases: $PHASES; budget ${BUDGET_S}s; repeats offline $REPEATS, hf $REPEATS_HF, serve $REPEATS_SERVE"
# -- install (no registry there: carried wheels for what the image lacks, our packages editable)
if [ -n "${GPU_BENCH_SKIP_INSTALL:-}" ]; then
  say "GPU_BENCH_SKIP_INSTALL set: using the installed packages"
elif ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl >>"$LOG" 2>&1 || { say "installing .whl/ failed"; tail -20 "$LOG"; exit 1; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
else
  say "no .whl/ carried: infer-serve needs pydantic-settings, litestar, uvicorn (scripts/gpu_bench.sh prepare)"
fi
[ -n "${GPU_BENCH_SKIP_INSTALL:-}" ] || "$PY" -m pip install -q --no-index --no-deps --no-build-isolation \
  -e infer_core -e infer_models_llama -e infer_models_qwen3 -e infer_models_gemma3 -e infer_cache_paged \
  -e infer_sched_policies >>"$LOG" 2>&1 || { say "pip install -e of the project failed"; tail -20 "$LOG"; exit 1; }
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 | tee -a "$LOG"
"$PY" -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())" 2>&1 | tee -a "$LOG"
"$PY" -m infer_core.cli plugins 2>&1 | grep -E "cache backend|scheduler policy|attention backend" | tee -a "$LOG"
DEVICE=$("$PY" -c "from infer_core.bench.report import device_name, slug; print(slug(device_name()))" 2>/dev/null || echo gpu)
REPORT="$OUT/$(date -u +%F)-$DEVICE"
say "report directory: $REPORT"

# -- random-weight checkpoints at real shapes (on the GPU: seconds)
LLAMA=${GPU_BENCH_LLAMA:-$WORK/llama-3.2-1b} QWEN=${GPU_BENCH_QWEN:-$WORK/qwen3-0.6b}
if want offline-llama || want hf-llama || want serve || want matrix || want w2-subset; then
  [ -f "$LLAMA/model.safetensors" ] || phase checkpoint-llama 120 "${BENCH[@]}" checkpoint llama-3.2-1b --out "$LLAMA"
fi
if want offline-qwen || want hf-qwen; then
  QTOK=()
  if [ -f "$ASSETS/qwen3-tokenizer/tokenizer.json" ]; then QTOK=(--tokenizer "$ASSETS/qwen3-tokenizer")
  else say "note: $ASSETS/qwen3-tokenizer not carried: Qwen3-0.6B gets a synthetic tokenizer"; fi
  [ -f "$QWEN/model.safetensors" ] || phase checkpoint-qwen 120 "${BENCH[@]}" checkpoint qwen3-0.6b --out "$QWEN" "${QTOK[@]}"
fi

L=(--label llama-3.2-1b-random --out "$REPORT" "${EXTRA[@]}")
Q=(--label qwen3-0.6b-random --out "$REPORT" "${EXTRA[@]}")
want offline-llama && phase offline-llama 150 "${BENCH[@]}" offline --config "$CONFIG" --model "$LLAMA" --workload W1,W4,W2 \
  --repeats "$REPEATS" "${L[@]}"
want offline-qwen && phase offline-qwen 120 "${BENCH[@]}" offline --config "$CONFIG" --model "$QWEN" --workload W1,W2 \
  --repeats "$REPEATS" "${Q[@]}"
want hf-llama && phase hf-llama 200 "${BENCH[@]}" hf --model "$LLAMA" --workload "${GPU_BENCH_HF_LLAMA:-W1,W4,W2}" --repeats "$REPEATS_HF" "${L[@]}"
want hf-qwen && phase hf-qwen 120 "${BENCH[@]}" hf --model "$QWEN" --workload "${GPU_BENCH_HF_QWEN:-W1,W2}" --repeats "$REPEATS_HF" "${Q[@]}"
# W2 side by side on its first N requests (transformers needs minutes for all 256): both
# engines, same requests, their own label so the table pairs them
N2=${GPU_BENCH_W2_SUBSET:-32}
S=(--label "llama-3.2-1b-random (W2 first $N2)" --out "$REPORT" --num-prompts "$N2" "${EXTRA[@]}")
want w2-subset && phase w2-subset-infer 90 "${BENCH[@]}" offline --config "$CONFIG" --model "$LLAMA" --workload W2 \
  --repeats "$REPEATS" "${S[@]}"
want w2-subset && phase w2-subset-hf 150 "${BENCH[@]}" hf --model "$LLAMA" --workload W2 --repeats "$REPEATS_HF" "${S[@]}"

start_server() {  # infer-serve in the background (extra arguments: "$@"); true once /health answers
  "$PY" -m infer_core.server.cli --config "$CONFIG" --model.path "$LLAMA" --server.port "$PORT" \
    --model.served_model_name llama-3.2-1b-random --server.log_level warning "$@" >>"$LOG" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 240); do
    "$PY" -c "import httpx,sys; sys.exit(httpx.get('http://127.0.0.1:$PORT/health', timeout=1).status_code != 200)" \
      2>/dev/null && return 0
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.5
  done
  return 1
}
stop_server() { [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null; SERVER_PID=""; }
if want serve; then
  if (( BUDGET_S - SECONDS < MIN_PHASE_S + 30 )); then
    SKIPPED+=("serve ($((BUDGET_S - SECONDS))s of budget left)"); say "skip serve: too little budget left"
  else
    # GPU_BENCH_SERVE_MODES: "default" (the config as is), "thread" / "process"
    # (server.engine_process false / true), each its own server and its own report entries
    for mode in ${GPU_BENCH_SERVE_MODES:-default}; do
      args=(); name=()
      case $mode in
        thread) args=(--server.engine_process false); name=(--name thread) ;;
        process) args=(--server.engine_process true); name=(--name process) ;;
      esac
      say "starting infer-serve on 127.0.0.1:$PORT ($mode)"
      if start_server "${args[@]}"; then
        phase "serve-$mode" 200 "${BENCH[@]}" serve --base-url "http://127.0.0.1:$PORT" \
          --workload "${GPU_BENCH_SERVE_WORKLOADS:-W3,W4,W5,W6}" --tokenizer "$LLAMA" --model-dir "$LLAMA" \
          --no-progress --repeats "$REPEATS_SERVE" "${name[@]}" "${L[@]}"
      else
        FAILED+=("serve $mode (infer-serve did not answer /health; its log is in gpu_bench.log)"); say "infer-serve did not come up"
      fi
      stop_server
    done
  fi
fi
want matrix && phase matrix 200 "${BENCH[@]}" matrix --config "$CONFIG" --model "$LLAMA" --num-prompts "${GPU_BENCH_MATRIX_PROMPTS:-32}" "${L[@]}"

[ -f "$REPORT/report.json" ] && "${BENCH[@]}" report "$REPORT" >>"$LOG" 2>&1
say "ran: ${RAN[*]:-none}"
say "timed out: ${TIMED_OUT[*]:-none}"
say "failed: ${FAILED[*]:-none}"
say "skipped: ${SKIPPED[*]:-none}"
for p in $ALL_PHASES; do want "$p" || say "not asked for: $p"; done
[ -f "$REPORT/summary.md" ] && cat "$REPORT/summary.md"
ls -la "$REPORT" 2>/dev/null
[ ${#FAILED[@]} -eq 0 ]
