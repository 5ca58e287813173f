"""``LLMEngine``: the synchronous engine. ``step()`` schedules, runs the model once over the
flat batch, samples, detokenizes and finishes requests; it does no network I/O."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from infer_core.attention.backend import AttentionBackend
from infer_core.attention.kv_tensors import (
    FP8_KV_DTYPE,
    allocate_kv_caches,
    check_fp8_kv,
    kv_bytes_per_token,
)
from infer_core.config import EngineConfig
from infer_core.engine.cuda_graphs import default_capture_sizes
from infer_core.engine.detokenizer import OutputState
from infer_core.engine.metrics import EngineMetrics
from infer_core.engine.processor import InputProcessor
from infer_core.engine.runner import LaunchedStep, ModelRunner, ModelRunnerOutput
from infer_core.engine.scheduler import Scheduler, SchedulerLimits, SchedulerOutput
from infer_core.errors import ConfigError, RequestError
from infer_core.layers.linear import enable_small_m_gemm
from infer_core.layers.persistent_decode import enable_persistent_decode
from infer_core.loader.hf_config import read_hf_config
from infer_core.loader.model import DTYPES, load_model
from infer_core.loader.tokenizer import Tokenizer
from infer_core.models.base import ModelContext
from infer_core.parallel.executor import TPRunner, WorkerGroup
from infer_core.parallel.group import TPGroup
from infer_core.parallel.worker import RankSpec
from infer_core.plugins import InferPluginManager, make_plugin_manager
from infer_core.request import (
    CompletionOutput,
    Logprob,
    Request,
    RequestOutput,
    RequestStatus,
    SamplingParams,
)
from infer_core.selection import select_plugins

GIB = 1 << 30
log = logging.getLogger(__name__)


FINISH_STATUS = {"length": RequestStatus.FINISHED_LENGTH, "stop": RequestStatus.FINISHED_STOPPED}


def _has_penalties(params: SamplingParams) -> bool:
    return params.repetition_penalty != 1.0 or params.presence_penalty != 0.0 or params.frequency_penalty != 0.0


@dataclass(slots=True)
class _DeferredToken:
    request: Request
    token: int
    logprob: Logprob | None


@dataclass(frozen=True)
class RuntimeLayout:
    """Values derived at start-up (the config itself is never changed)."""

    device: torch.device
    dtype: torch.dtype
    kv_dtype: torch.dtype
    max_model_len: int
    block_size: int
    num_blocks: int
    attention_backend: str
    served_model_name: str


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"model.device is '{name}' but no CUDA device is available; use 'cpu' or 'auto'.")
    return device


def _need_triton_device(device: torch.device, option: str) -> None:
    """An option that runs a Triton kernel needs a CUDA device (or the Triton interpreter)."""
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ConfigError(f"{option} runs a Triton kernel and needs a CUDA device; turn it off on the CPU.")


class LLMEngine:
    def __init__(self, config: EngineConfig, pm: InferPluginManager | None = None) -> None:
        self.config = config
        self.pm = pm or make_plugin_manager(blocked=config.plugins.disable)
        selection = select_plugins(config, self.pm)
        if config.model.path is None:
            raise ConfigError("model.path is not set; point it at a Hugging Face model directory.")
        model_dir = Path(config.model.path).expanduser()
        hf_config = read_hf_config(model_dir)
        device = resolve_device(config.model.device)
        dtype = DTYPES.get(config.model.dtype) or (torch.bfloat16 if device.type == "cuda" else torch.float32)
        kv_dtype = FP8_KV_DTYPE if config.cache.kv_dtype == "fp8" else DTYPES.get(config.cache.kv_dtype, dtype)
        max_model_len = config.model.max_model_len or hf_config.get("max_position_embeddings") or 2048
        attention_name = self._attention_name(config, device)
        attention = self.pm.attention_backends.get(attention_name)
        backend = attention.load()(selection.attention.options if selection.attention else None)
        if kv_dtype == FP8_KV_DTYPE:
            check_fp8_kv(backend, attention_name, device)

        # tensor parallelism: this process is rank 0; ranks 1..N-1 run in worker processes
        self.workers = WorkerGroup(config, device) if config.parallel.tensor_parallel_size > 1 else None
        try:
            self._start(config, model_dir, hf_config, device, dtype, kv_dtype, max_model_len,
                        selection, backend, attention_name)
        except BaseException:
            self.shutdown()
            raise

    def _start(self, config: EngineConfig, model_dir: Path, hf_config: dict, device: torch.device,
               dtype: torch.dtype, kv_dtype: torch.dtype, max_model_len: int, selection, backend: AttentionBackend,
               attention_name: str) -> None:
        tp = self.workers.tp if self.workers is not None else TPGroup()
        torch.manual_seed(config.model.seed)
        self.model = load_model(model_dir, self.pm, ModelContext(backend, max_model_len, tp), dtype=dtype, device=device)
        small_m = config.model.small_m_gemm
        prologues = None
        if small_m or (small_m is None and device.type == "cuda"):
            _need_triton_device(device, "model.small_m_gemm")
            prologues, epilogue = config.model.small_m_prologues, config.model.small_m_gated_epilogue
            log.info("small-M GEMM on for %d linear layers (prologues: %s, gated epilogue: %s)",
                     enable_small_m_gemm(self.model, prologues, epilogue), prologues, epilogue)
        persistent = config.model.persistent_decode
        if persistent or (persistent is None and device.type == "cuda"):
            if persistent:
                _need_triton_device(device, "model.persistent_decode")
            paths = enable_persistent_decode(self.model, explicit=bool(persistent))
            if paths:
                log.info("persistent decode layers on for batch-1 decode steps")
            elif persistent:
                log.warning("model.persistent_decode: this model has no persistent decode path "
                            "(Llama and Qwen 3 have); batch-1 decode takes the usual path")
        self.tokenizer = Tokenizer.from_dir(model_dir)
        cache_cls = selection.cache.spec.load()
        block_size = cache_cls.block_size_for(config.cache.block_size, max_model_len)
        num_blocks = config.cache.num_blocks or self._num_blocks(block_size, kv_dtype, device)
        if num_blocks * block_size < max_model_len:
            raise ConfigError(
                f"the KV cache holds {num_blocks * block_size} tokens ({num_blocks} blocks of "
                f"{block_size}), fewer than model.max_model_len ({max_model_len}), so a long "
                f"request could never run; give the cache more memory or lower max_model_len."
            )
        self.cache = cache_cls(num_blocks, block_size, selection.cache.options)
        allocate_kv_caches(self.model, num_blocks, block_size, kv_dtype, device)
        policy = selection.scheduler.spec.load()(selection.scheduler.options)
        s = config.scheduler
        self.scheduler = Scheduler(
            SchedulerLimits(s.max_num_seqs, s.max_num_batched_tokens, max_model_len,
                            s.chunked_prefill, s.prefill_chunk_size),
            self.cache, policy,
        )
        self.vocab_size = hf_config["vocab_size"]
        self.eos_token_ids = frozenset(self.tokenizer.eos_token_ids)
        runner_args = dict(
            block_size=block_size, max_num_seqs=s.max_num_seqs, max_num_batched_tokens=s.max_num_batched_tokens,
            max_model_len=max_model_len, vocab_size=self.vocab_size, eos_token_ids=self.eos_token_ids,
            graph_sizes=self._graph_sizes(config, backend, device),
        )
        if self.workers is not None:  # every worker builds the same rank over its shard
            self.workers.setup(RankSpec(
                str(model_dir), dtype, kv_dtype, max_model_len, attention_name,
                selection.attention.options if selection.attention else None, num_blocks, block_size,
                prologues, runner_args, config.model.small_m_gated_epilogue))
        self.runner = ModelRunner(self.model, device=device, **runner_args)
        if self.workers is not None:
            self.runner = TPRunner(self.runner, self.workers)
        if self.runner.graphs is not None:
            self.runner.capture_cuda_graphs()
        self.layout = RuntimeLayout(
            device, dtype, kv_dtype, max_model_len, block_size, num_blocks, attention_name,
            config.model.served_model_name or model_dir.name,
        )
        self.metrics = EngineMetrics()
        self._outputs: dict[str, OutputState] = {}
        self._prompts: dict[str, str | None] = {}
        self._logprobs: dict[str, list] = {}
        self._deferred: list[_DeferredToken] = []  # sampled ids whose text the next step makes
        self._async = config.scheduler.async_scheduling
        self._inflight: tuple[SchedulerOutput, LaunchedStep] | None = None  # async: launched, not read
        self.processor = InputProcessor(self.tokenizer, self.vocab_size, max_model_len, self.eos_token_ids)
        # validation and tokenization (safe from any thread): InputProcessor.make_request
        self.make_request = self.processor.make_request
        self.new_request_id = self.processor.new_request_id
        if device.type == "cuda":
            self.warm_up()

    def warm_up(self) -> float:
        """Run two short requests through the step once (a mixed prefill step, then decodes),
        then forget them: cache blocks back, prefix cache and metrics reset. On CUDA this runs
        at start-up so that Triton compiles the kernels' prefill and mixed-step variants here
        and not on the first user requests (a compile takes about a second). Returns seconds."""
        start = time.perf_counter()
        params = SamplingParams(temperature=0, max_tokens=3, ignore_eos=True)
        longest = max(1, self.layout.max_model_len - params.max_tokens)
        for i, length in enumerate((64, 8)):
            try:
                self.add_request(self.make_request([1] * min(length, longest), params, request_id=f"warm-up-{i}"))
            except RequestError as exc:  # a cache too small for it: serve without the warm-up
                log.warning("warm-up skipped: %s", exc)
                break
        while self.has_unfinished_requests():
            self.step(finished_only=True)
        self.cache.reset_prefix_cache()
        self.metrics = EngineMetrics(prefix_baseline=self.cache.prefix_cache_stats)
        seconds = time.perf_counter() - start
        log.info("warm-up (kernels' prefill and mixed-step variants) took %.1f s", seconds)
        return seconds

    def _attention_name(self, config: EngineConfig, device: torch.device) -> str:
        if config.attention.backend != "auto":
            return config.attention.backend
        if device.type == "cuda" and "triton" in self.pm.attention_backends:
            return "triton"
        return "torch"

    @staticmethod
    def _graph_sizes(config: EngineConfig, backend: AttentionBackend, device: torch.device) -> list[int]:
        """Decode batch sizes to capture as CUDA graphs (none on the CPU, with enforce_eager,
        or with an attention backend that cannot be captured)."""
        if device.type != "cuda" or config.model.enforce_eager or not backend.supports_cuda_graphs:
            return []
        top = config.scheduler.max_num_seqs
        sizes = config.model.cuda_graph_sizes or default_capture_sizes(top)
        return sorted({s for s in sizes if s <= top})

    def _num_blocks(self, block_size: int, kv_dtype: torch.dtype, device: torch.device) -> int:
        per_block = kv_bytes_per_token(self.model, kv_dtype) * block_size
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            budget = free * self.config.cache.memory_fraction
        else:
            budget = self.config.cache.cpu_kv_cache_gib * GIB
        return max(1, int(budget // per_block))

    # -- requests ----------------------------------------------------------------------------

    @property
    def model_class(self) -> type:
        """The loaded model's class (the chat-template family and logs use it)."""
        return type(self.model)

    @property
    def failure(self) -> str | None:
        """Why the engine cannot step any more (a tensor-parallel rank died), else None."""
        return self.workers.failure if self.workers is not None else None

    def shutdown(self) -> None:
        """Stop the tensor-parallel worker processes (nothing with one rank). Also done at
        interpreter exit; the engine takes no steps afterwards."""
        if self.workers is not None:
            self.workers.shutdown()

    def add_request(self, request: Request, prompt_text: str | None = None) -> None:
        if self.workers is not None:
            self.workers.check()  # a dead rank ends the engine: new requests get its error
        if request.request_id in self.scheduler.requests:
            raise RequestError(f"request id '{request.request_id}' is already in use.")
        self._outputs[request.request_id] = OutputState(
            self.tokenizer, request.sampling_params, request.prompt_token_ids,
            request.eos_token_ids, request.max_tokens,
        )
        self._prompts[request.request_id] = prompt_text
        self._logprobs[request.request_id] = []
        self.scheduler.add_request(request)
        self.metrics.on_arrival(request)

    def abort_request(self, request_id: str) -> RequestOutput | None:
        """End a request now (its KV blocks go back to the pool); None if it is not running."""
        request = self.scheduler.finish_request(request_id, RequestStatus.FINISHED_ABORTED)
        if request is None:
            return None
        self._drop_deferred({request_id})
        return self._finish(request)

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.num_unfinished > 0 or bool(self._deferred) or self._inflight is not None

    def _drop_deferred(self, request_ids: set[str]) -> None:
        if self._deferred:
            self._deferred = [d for d in self._deferred if d.request.request_id not in request_ids]

    def reset_prefix_cache(self) -> bool:
        """Forget every cached prefix (benchmarks between runs); True when the backend did."""
        return self.cache.reset_prefix_cache()

    # -- the step -----------------------------------------------------------------------------

    def step(self, *, finished_only: bool = False) -> list[RequestOutput]:
        """One engine step: returns the outputs of the requests that made progress, or with
        ``finished_only`` only of those that finished (no per-token output objects, for
        callers that need final results only, such as ``LLM.generate``).

        Requests without stop strings have their finish decided from the sampled ids alone
        (stop token ids, EOS, ``max_tokens``) when the ids arrive — their blocks go back then —
        and their detokenization and output objects are made during the next step, while the
        device computes it: their outputs come one step later, in order."""
        if self._async:
            return self._step_async(finished_only)
        sched_out = self._schedule()
        deferred: list[RequestOutput] = []
        while_running = self._take_deferred(deferred, finished_only)
        try:
            runner_out = self.runner.execute_model(sched_out, while_running)
        except Exception as exc:  # a failing step fails its requests, never the engine
            while_running()  # (a no-op if the runner got to it)
            self.cache.reset_prefix_cache()  # blocks hashed for this step may hold no valid KV
            return deferred + self.fail_requests(list(sched_out.num_scheduled_tokens), f"{type(exc).__name__}: {exc}")
        while_running()
        self.scheduler.update_from_output(sched_out)
        outputs = deferred + self._process_outputs(runner_out, finished_only)
        self.metrics.on_step(self.scheduler, len(sched_out.preempted_req_ids))
        return outputs

    def _schedule(self) -> SchedulerOutput:
        """The scheduler's next step, with the first-scheduled time of the requests it admits."""
        sched_out = self.scheduler.schedule()
        now = time.monotonic()
        for new in sched_out.scheduled_new_reqs:
            self.metrics.on_scheduled(self.scheduler.requests[new.request_id], now)
        return sched_out

    def _take_deferred(self, into: list[RequestOutput], finished_only: bool) -> Callable[[], None]:
        """Take the deferred tokens now; the returned ``while_running`` processes them into
        ``into`` on its first call (the runner calls it while the device computes; later calls,
        after a failure or a launch that never got to it, are no-ops)."""
        todo, self._deferred = self._deferred, []

        def while_running() -> None:
            nonlocal todo
            taken, todo = todo, []
            into.extend(self._process_deferred(taken, finished_only))

        return while_running

    def _step_async(self, finished_only: bool) -> list[RequestOutput]:
        """``step`` with async scheduling: a step launched by the previous call (or now) is
        read back after the next one is scheduled and launched, so the host's scheduling and
        input preparation overlap the device's work. Each request's sampled token becomes a
        placeholder (``Request.num_placeholders``) that the next step computes on the device
        until its id is read. Steps run in order while a running request has penalties
        (they need the ids on the host); waiting requests are admitted with a step in
        flight (a request that finishes in it frees its blocks one step later)."""
        outputs: list[RequestOutput] = []
        while_running = self._take_deferred(outputs, finished_only)
        current, self._inflight = self._inflight, None
        if current is None:
            current = self._launch(while_running, outputs)
        if current is not None and self._can_pipeline():
            self._inflight = self._launch(while_running, outputs)
        while_running()  # (a no-op if a launch ran it)
        if current is None:
            return outputs
        sched_out, launched = current
        try:
            runner_out = self.runner.finish(launched)
        except Exception as exc:  # this step and the one reading its ids fail, never the engine
            ids = list(sched_out.num_scheduled_tokens)
            if self._inflight is not None:
                ids += list(self._inflight[0].num_scheduled_tokens)
                self._inflight = None
            self.cache.reset_prefix_cache()
            return outputs + self.fail_requests(list(dict.fromkeys(ids)), f"{type(exc).__name__}: {exc}")
        outputs += self._process_outputs(runner_out, finished_only)
        self.metrics.on_step(self.scheduler, len(sched_out.preempted_req_ids))
        return outputs

    def _launch(self, while_running, outputs: list[RequestOutput]) -> tuple[SchedulerOutput, LaunchedStep] | None:
        """Schedule and launch a step (async scheduling); None if nothing was scheduled or the
        launch failed (its requests' failures are added to ``outputs``)."""
        sched_out = self._schedule()
        if sched_out.is_empty and not sched_out.finished_req_ids and not sched_out.preempted_req_ids:
            return None
        try:
            launched = self.runner.launch(sched_out, while_running)
        except Exception as exc:
            self.cache.reset_prefix_cache()
            outputs += self.fail_requests(list(sched_out.num_scheduled_tokens), f"{type(exc).__name__}: {exc}")
            return None
        for request in self.scheduler.update_from_output(sched_out):
            request.num_placeholders += 1  # its token is sampled on the device; the id comes later
        return sched_out, launched

    def _can_pipeline(self) -> bool:
        return not any(_has_penalties(r.sampling_params) for r in self.scheduler.running)

    def _process_outputs(self, runner_out: ModelRunnerOutput, finished_only: bool) -> list[RequestOutput]:
        outputs = []
        now = time.monotonic()
        for request_id, token, logprob in zip(
            runner_out.req_ids, runner_out.sampled_token_ids,
            runner_out.logprobs or [None] * len(runner_out.req_ids), strict=True,
        ):
            request = self.scheduler.requests.get(request_id)
            if request is None:
                continue
            request.output_token_ids.append(token)
            if request.num_placeholders:  # async scheduling: the placeholder becomes this id
                request.num_placeholders -= 1
            state = self._outputs[request_id]
            if not state.needs_text_to_stop:  # decided by the ids now, text during the next step
                self._deferred.append(_DeferredToken(request, token, logprob))
                rule = state.token_rule(token, len(request.output_token_ids))
                if rule is not None:
                    request.stop_reason = rule[1]
                    self.scheduler.finish_request(request_id, FINISH_STATUS[rule[0]])
                continue
            delta = state.append(token)
            if logprob is not None:
                self._logprobs[request_id].append(logprob)
            self.metrics.on_token(request, now)
            if delta.finished:
                request.stop_reason = delta.stop_reason
                self.scheduler.finish_request(request_id, FINISH_STATUS[delta.finish_reason])
                outputs.append(self._finish(request, delta.text, delta.token_ids))
            elif not finished_only:
                outputs.append(self._output(request, state, delta.text, delta.token_ids))
        return outputs

    def _process_deferred(self, taken: list[_DeferredToken], finished_only: bool) -> list[RequestOutput]:
        """Detokenize the ids a past step sampled for requests without stop strings and build
        their outputs (their finishes were applied when the ids arrived)."""
        outputs = []
        now = time.monotonic()
        for item in taken:
            request = item.request
            state = self._outputs.get(request.request_id)
            if state is None:  # aborted or failed since
                continue
            try:
                delta = state.append(item.token)
            except Exception as exc:  # never lose a request's terminal output
                log.exception("output processing failed for %s", request.request_id)
                outputs.append(self._fail(request, f"{type(exc).__name__}: {exc}"))
                continue
            if item.logprob is not None:
                self._logprobs[request.request_id].append(item.logprob)
            self.metrics.on_token(request, now)
            if delta.finished:
                outputs.append(self._finish(request, delta.text, delta.token_ids))
            elif not finished_only:
                outputs.append(self._output(request, state, delta.text, delta.token_ids))
        return outputs

    def unfinished_request_ids(self) -> list[str]:
        """Requests that have not had their final output yet (running, waiting, or finished
        with their last output still to be made)."""
        ids = dict.fromkeys(self.scheduler.requests)
        ids.update(dict.fromkeys(item.request.request_id for item in self._deferred
                                 if item.request.request_id in self._outputs))
        return list(ids)

    def fail_requests(self, request_ids: list[str], error: str) -> list[RequestOutput]:
        """End ``request_ids`` as failed with ``error`` (their blocks go back), also those
        finished whose last output was not made yet."""
        deferred = {item.request.request_id: item.request for item in self._deferred}
        outputs = []
        for request_id in request_ids:
            request = self.scheduler.requests.get(request_id)
            if request is None and request_id in self._outputs:
                request = deferred.get(request_id)
            if request is not None:
                outputs.append(self._fail(request, error))
        self._drop_deferred(set(request_ids))
        return outputs

    def _fail(self, request: Request, error: str) -> RequestOutput:
        self.scheduler.finish_request(request.request_id, RequestStatus.FAILED)  # if still there
        request.status = RequestStatus.FAILED
        request.error = error
        return self._finish(request)

    def _output(self, request: Request, state: OutputState, delta_text: str,
                delta_ids: list[int]) -> RequestOutput:
        completion = CompletionOutput(
            index=0,
            text=state.text,
            token_ids=list(state.token_ids),
            finish_reason=request.status.finish_reason,
            stop_reason=request.stop_reason,
            logprobs=(list(self._logprobs.get(request.request_id, ()))
                      if request.sampling_params.logprobs is not None else None),
            delta_text=delta_text,
            delta_token_ids=delta_ids,
        )
        return RequestOutput(
            request_id=request.request_id,
            prompt=self._prompts.get(request.request_id),
            prompt_token_ids=request.prompt_token_ids,
            outputs=[completion],
            finished=request.finished,
            error=request.error,
            metrics=self.metrics.request_metrics(request.request_id),
        )

    def _finish(self, request: Request, delta_text: str = "", delta_ids: list[int] | None = None) -> RequestOutput:
        state = self._outputs.pop(request.request_id)
        output = self._output(request, state, delta_text, delta_ids or [])
        self._prompts.pop(request.request_id, None)
        self._logprobs.pop(request.request_id, None)
        self.metrics.on_finished(request, time.monotonic())
        return output
