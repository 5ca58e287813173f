#!/usr/bin/env bash
# The Speed issue's GPU run (from the repository root on the lent GPU machine): installs the
# project, runs the GPU engine tests (CUDA-graph replay == eager, model parity), then step
# profiles (eager vs CUDA graphs, Llama-3.2-1B shape, torch.profiler device-time summary) and
# the offline W1/W2 benchmarks. Everything lands under $OUT (default ./gpu-speed-out).
#
#   scripts/gpu_speed.sh [tests] [smoke] [profile] [bench] [ab]   (default: tests profile bench)
#
#   smoke    scripts/gpu_smoke_async.py: async scheduling on CUDA == in order (same tokens)
#   profile  benchmarks/profile_step.py per shape in PROFILE_SHAPES (default llama-3.2-1b; also
#            qwen3-0.6b, all layers) and mode in PROFILE_MODES (default "eager graphs";
#            "async" = CUDA graphs + scheduler.async_scheduling); PROFILE_LAYERS="all 4" profiles
#            those layer counts (default all); PROFILE_ARGS adds flags (e.g. "--pipelined --device-time")
#   ab       offline W1/W2 for Llama-3.2-1B and Qwen3-0.6B shapes, one report per call, once per
#            mode in AB_MODES (default "default in-order"; also "async", "small-m" / "no-small-m" =
#            model.small_m_gemm true / false, "prologues-act" / "prologues-norm" / "prologues-all" =
#            model.small_m_prologues act / norm / all, "gated-epilogue" =
#            model.small_m_gated_epilogue true (the activation in gate/up's epilogue),
#            "persistent" = model.persistent_decode true (one launch per layer at batch 1),
#            "balanced[N]" / "unbalanced" = INFER_DECODE_BALANCED_ELEMENTS=N (default 16384) / 0,
#            "kvbarrier" / "kvstart" = INFER_DECODE_KV_EARLY=1 / 2 (the first key tile requested at
#            barrier 0, or at the launch's start: the default),
#            "pairs<4 digits>" = INFER_DECODE_PAIRS=<digits> (bf16 pair tiles in the persistent
#            layer's GEMM stages qkv, o, gate/up, down whose digit is 1),
#            "graph-fill" / "no-graph-fill" = INFER_GRAPH_FILL=1 / 0 (async scheduling's ids in
#            flight filled by kernels.fill_ids inside the decode graph, or by torch launches
#            outside it),
#            "stages<N>" = INFER_DECODE_STAGES=N (each stage of the persistent layer its own launch, PDL
#            between them, N programs per SM; "stages<six digits>" = per stage: qkv, attention,
#            merge, o, gate/up, down, e.g. "stages211444"),
#            "lm-head" / "no-lm-head" = INFER_LM_HEAD_ARGMAX=1 / 0 (a batch-1 decode graph's logits
#            and argmax in one launch, kernels.lm_head, or cuBLAS + copy + two-stage argmax),
#            "cuda-grid" / "cuda-cluster[N]" = INFER_DECODE_CUDA=grid / cluster (the CUDA C++ decode layer,
#            kernels.decode_layer_cuda; N = INFER_DECODE_CLUSTER, 16 by default; its compile-time
#            switches from INFER_DECODE_CUDA_SWITCHES in the caller's environment, e.g. DL_MERGE=1),
#            "norm-twice" / "norm-once" = INFER_DECODE_NORM_ONCE=0 / 1 (the persistent layer's norm stages
#            load their input row and norm weight again after the reduction / once),
#            "rope-late" / "rope-barrier" / "rope-early" = INFER_DECODE_ROPE_EARLY=0 / 1 / 2 (the attention
#            stage's QK-norm weights loaded in the stage / the k-norm weight requested between barrier 0's
#            arrival and wait / the rotary row and both norm weights there), "splits<N>" = INFER_DECODE_SPLITS=N (key splits per KV head),
#            "small-kv" = --cache.memory_fraction 0.05 (a KV pool of a few GB
#            instead of 0.85 of the device: what the chains and profile_step run with),
#            "group-sync" / "group-sync2" = INFER_DECODE_GROUP_SYNC=1 / 2 (2 the default since 2026-12-04; no barrier 0: each attention
#            item waits for its KV group's qkv rows; 2: no barrier 1 either, each merge waits for its
#            KV group's splits), "gather-rows" = INFER_GATHER_ROWS=1 (the default since 2026-12-04: the embedding lookup and the
#            block-table rows as PDL launches, kernels.gather_rows), "lm-head-early" = INFER_LM_HEAD_EARLY=1 (the default since 2026-12-04)
#            (the LM head's first weight block requested before its PDL wait); "no-group-sync",
#            "no-gather-rows", "lm-head-late" set each to 0, "fill-in-gather" = INFER_GRAPH_FILL_GATHER=1 (the
#            decode graphs' placeholder fill in the block-table gather's launch), "head-norm" =
#            INFER_LM_HEAD_NORM=1 (the stack's final norm folded into the LM head's launch),
#            "kv-ahead" = INFER_DECODE_KV_AHEAD=1 (each attention item asks L2 for its split's later key tiles),
#            "min-splits<N>" = INFER_DECODE_MIN_SPLITS=N (each step uses the fewest key splits from N up that give
#            each split at most one key tile, at most splits<M>'s or the default's),
#            "scale<N>" = --scale N (every workload length times N: "scale8" makes W1 2,048 + 2,048 tokens),
#            "no-pdl" = INFER_PDL=0; "+" joins them: "prologues-all+no-pdl"), AB_REPEATS runs each
#            (default 3) of AB_WORKLOADS (default W1,W2) for AB_MODELS (default both), so the modes pair on one machine
#   gemm     the small-M GEMM kernel (opt-in: model.small_m_gemm): its GPU tests and the act_and_mul ones
#            (they share the activation helper), then benchmarks/kernels_small_m_gemm.py
#            (GEMM_SWEEP=1 adds --sweep for GEMM_MODELS, default llama-3.2-1b; GEMM_MS="1 2 4"
#            the rows; GEMM_TESTS=0 skips the tests)
#
# Carry .whl and benchmarks/.assets (scripts/gpu_bench.sh prepare makes them).
set -u
OUT=${OUT:-$PWD/gpu-speed-out}
mkdir -p "$OUT"
WHAT=${*:-tests profile bench}
want() { [[ " $WHAT " == *" $1 "* ]]; }
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
source scripts/device_install.sh
[ -f benchmarks/.assets/commit ] && export INFER_BENCH_COMMIT="$(cat benchmarks/.assets/commit)"
status=0
if want tests; then
  timeout "${TEST_TIMEOUT:-240}" python3 -m pytest -m gpu -q -x -p no:cacheprovider -rfE \
    ${TEST_FILES:-tests/kernels/test_engine_gpu.py tests/kernels/test_model_parity_gpu.py} 2>&1 \
    | tee "$OUT/gpu_tests.log" | tail -25
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
fi
if want smoke; then
  timeout "${SMOKE_TIMEOUT:-120}" python3 scripts/gpu_smoke_async.py 2>&1 | tee "$OUT/smoke.log" | tail -8
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
fi
if want profile; then
  for shape in ${PROFILE_SHAPES:-llama-3.2-1b}; do
    all=16; [ "$shape" = qwen3-0.6b ] && all=28
    for layers in ${PROFILE_LAYERS:-all}; do
    [ "$layers" = all ] && layers=$all
    tag=$shape; [ "$layers" = "$all" ] || tag=$shape-L$layers
    for mode in ${PROFILE_MODES:-eager graphs}; do
      flag=(); [ $mode = eager ] && flag=(--enforce-eager); [ $mode = async ] && flag=(--async-scheduling)
      timeout "${PROFILE_TIMEOUT:-150}" python3 benchmarks/profile_step.py --device cuda --dtype bfloat16 \
        --shape "$shape" --layers $layers --hidden 0 --vocab 0 --batch-sizes "${PROFILE_BATCHES:-1,64,256}" \
        --steps 20 --repeats 2 --prompt-len 256 --clock wall --torch-profile-ops "${PROFILE_OPS:-14}" \
        --label "$tag-$mode" --checkpoint-dir "/tmp/infer-profile-step-$shape" --out "$OUT/profiles" \
        "${flag[@]}" ${PROFILE_ARGS:-} 2>&1 | grep -v "profiler_st" | tail -6
    done
    done
  done
fi
if want bench; then
  GPU_BENCH_SKIP_INSTALL=1 GPU_BENCH_BUDGET_S=${BENCH_BUDGET_S:-300} OUT="$OUT/bench" \
    scripts/gpu_bench.sh ${BENCH_PHASES:-offline-llama offline-qwen} 2>&1 | tail -40
fi
if want gemm; then
  [ "${GEMM_TESTS:-1}" = 1 ] && timeout "${GEMM_TEST_TIMEOUT:-150}" python3 -m pytest -m gpu -q -x -p no:cacheprovider -rfE \
    tests/kernels/test_small_m_gemm_gpu.py tests/kernels/test_kernels_gpu.py tests/kernels/test_engine_gpu.py \
    -k "small_m or act_and_mul" 2>&1 \
    | tee "$OUT/gemm_tests.log" | tail -8
  [ "${GEMM_TESTS:-1}" != 1 ] || [ "${PIPESTATUS[0]}" = 0 ] || status=1
  sweep=(); [ -n "${GEMM_SWEEP:-}" ] && sweep=(--sweep --models ${GEMM_MODELS:-llama-3.2-1b})
  [ -n "${GEMM_MS:-}" ] && sweep+=(--ms $GEMM_MS)
  timeout "${GEMM_TIMEOUT:-240}" python3 benchmarks/kernels_small_m_gemm.py --out "$OUT/small-m-gemm" "${sweep[@]}" 2>&1 \
    | tail -40
fi
if want ab; then
  AB=${AB_WORK:-/tmp/infer-bench}
  BENCH=(python3 -m infer_core.bench.cli)
  REPORT="$OUT/ab/$(date -u +%F)-$(python3 -c "from infer_core.bench.report import device_name, slug; print(slug(device_name()))")"
  [ -f "$AB/llama-3.2-1b/model.safetensors" ] || "${BENCH[@]}" checkpoint llama-3.2-1b --out "$AB/llama-3.2-1b" | tail -1
  QTOK=(); [ -f benchmarks/.assets/qwen3-tokenizer/tokenizer.json ] && QTOK=(--tokenizer benchmarks/.assets/qwen3-tokenizer)
  [ -f "$AB/qwen3-0.6b/model.safetensors" ] || "${BENCH[@]}" checkpoint qwen3-0.6b --out "$AB/qwen3-0.6b" "${QTOK[@]}" | tail -1
  for mode in ${AB_MODES:-default in-order}; do
    flag=(--name "$mode"); pdl=1; bal=; kve=; prs=; gfill=; stg=; lmh=; cud=; clu=; nrm=; rop=; spl=; gsy=; gat=; lhe=; fgat=; hnorm=; kva=; mns=
    for part in ${mode//+/ }; do
      case $part in
        async) flag+=(--scheduler.async_scheduling true) ;;
        in-order) flag+=(--scheduler.async_scheduling false) ;;
        small-m) flag+=(--model.small_m_gemm true) ;;
        no-small-m) flag+=(--model.small_m_gemm false) ;;
        prologues-*) flag+=(--model.small_m_prologues "${part#prologues-}") ;;
        gated-epilogue) flag+=(--model.small_m_gated_epilogue true) ;;
        persistent) flag+=(--model.persistent_decode true) ;;
        balanced*) bal=${part#balanced}; bal=${bal:-16384} ;;
        unbalanced) bal=0 ;;
        kvstart) kve=2 ;;
        kvbarrier) kve=1 ;;
        pairs[01][01][01][01]) prs=${part#pairs} ;;
        no-graph-fill) gfill=0 ;;
        stages[0-9]) stg=${part#stages} ;;
        stages[0-9][0-9][0-9][0-9][0-9][0-9]) stg=$(echo "${part#stages}" | sed 's/./&,/g; s/,$//') ;;
        graph-fill) gfill=1 ;;
        fill-in-gather) fgat=1 ;;
        head-norm) hnorm=1 ;;
        lm-head) lmh=1 ;;
        no-lm-head) lmh=0 ;;
        cuda-grid) cud=grid ;;
        cuda-cluster) cud=cluster ;;
        cuda-cluster[0-9]*) cud=cluster; clu=${part#cuda-cluster} ;;
        norm-twice) nrm=0 ;;
        norm-once) nrm=1 ;;
        rope-late) rop=0 ;;
        rope-barrier) rop=1 ;;
        rope-early) rop=2 ;;
        splits[0-9]*) spl=${part#splits} ;;
        small-kv) flag+=(--cache.memory_fraction 0.05) ;;
        group-sync) gsy=1 ;;
        group-sync2) gsy=2 ;;
        no-group-sync) gsy=0 ;;
        gather-rows) gat=1 ;;
        no-gather-rows) gat=0 ;;
        lm-head-early) lhe=1 ;;
        lm-head-late) lhe=0 ;;
        kv-ahead) kva=1 ;;
        min-splits[0-9]*) mns=${part#min-splits} ;;
        scale[0-9]*) flag+=(--scale "${part#scale}") ;;
        no-pdl) pdl=0 ;;
        default) ;;
        *) echo "ab: unknown mode part '$part' (of $mode): see the modes above" >&2; exit 2 ;;
      esac
    done
    for m in ${AB_MODELS:-llama-3.2-1b qwen3-0.6b}; do
      INFER_PDL=$pdl INFER_DECODE_BALANCED_ELEMENTS=$bal INFER_DECODE_KV_EARLY=$kve INFER_DECODE_PAIRS=$prs INFER_GRAPH_FILL=$gfill INFER_DECODE_STAGES=$stg INFER_LM_HEAD_ARGMAX=$lmh INFER_DECODE_CUDA=$cud INFER_DECODE_CLUSTER=${clu:-16} INFER_DECODE_NORM_ONCE=$nrm INFER_DECODE_ROPE_EARLY=$rop INFER_DECODE_SPLITS=$spl INFER_DECODE_GROUP_SYNC=$gsy INFER_GATHER_ROWS=$gat INFER_LM_HEAD_EARLY=$lhe INFER_GRAPH_FILL_GATHER=$fgat INFER_LM_HEAD_NORM=$hnorm INFER_DECODE_KV_AHEAD=$kva INFER_DECODE_MIN_SPLITS=$mns timeout "${AB_TIMEOUT:-150}" "${BENCH[@]}" offline --config benchmarks/configs/h200.toml --model "$AB/$m" \
        --workload "${AB_WORKLOADS:-W1,W2}" --repeats "${AB_REPEATS:-3}" --label "$m-random" --out "$REPORT" "${flag[@]}" 2>&1 | tail -4
    done
  done
  "${BENCH[@]}" report "$REPORT" >/dev/null 2>&1; cat "$REPORT/summary.md" 2>/dev/null | head -40
fi
exit $status
