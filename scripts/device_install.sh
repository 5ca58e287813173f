# Sourced by the GPU scripts (scripts/gpu_speed.sh, gpu_soak.sh, gpu_kernels.sh) on the device
# machine, from the repository root: installs the carried wheels (.whl/, made by
# `scripts/gpu_bench.sh prepare`) for what the image lacks, then our packages editable.
# Logs to $OUT/pip.log; exits on failure.
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl >"$OUT/pip.log" 2>&1 || { tail "$OUT/pip.log"; exit 1; }
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e infer_core -e infer_models_llama \
  -e infer_models_qwen3 -e infer_models_gemma3 -e infer_cache_paged -e infer_sched_policies \
  >>"$OUT/pip.log" 2>&1 || { tail -20 "$OUT/pip.log"; exit 1; }
