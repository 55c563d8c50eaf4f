"""The production engine: vLLM's AsyncLLM embedded in the server process.

vLLM is imported only when this engine starts, so nothing else in the service pays for it.
The engine core runs in a process vLLM spawns; `shutdown` stops it.
"""

import asyncio
import contextlib
import gc
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.inference.engine import (
    AdapterSlot,
    EngineError,
    EngineStats,
    GenerationChunk,
    GenerationRequest,
    PromptLogprob,
    StatsListener,
)
from trainer.hardware import Dtype

MAX_BATCHED_TOKENS = 2048
"""Tokens the engine schedules per step (prefill chunks included): vLLM's server default."""
MAX_SEQUENCES = 128
"""Requests the engine runs per step: vLLM's server default."""


@dataclass(frozen=True)
class VllmEngineConfig:
    """What the vLLM engine is built from; derived from ServerSettings by the app."""

    model_path: Path
    """Hugging Face checkpoint directory of the base model."""
    max_loras: int
    """LoRA slots in one batch."""
    max_cpu_loras: int
    """Adapters the engine's cache holds (adapterd keeps within it and evicts itself)."""
    max_lora_rank: int
    """Largest LoRA rank accepted."""
    max_model_len: int
    """Longest sequence in tokens."""
    cpu_ids: tuple[int, ...]
    """CPUs the engine's OpenMP threads are bound to (CPU builds)."""
    kv_cache_gib: int
    """KV-cache size in GiB (CPU builds)."""
    lora_target_modules: tuple[str, ...]
    """The linear layers adapters may target (service.basemodel.lora_target_modules)."""
    gpu_memory_fraction: float = 0.5
    """Share of the GPU's memory the engine takes (GPU builds); the trainer has the rest."""
    sleep_mode: bool = False
    """Build the engine able to sleep while a job trains (CUDA only)."""
    dtype: Dtype = "bfloat16"
    """Weight and activation dtype (service.app.engine_precision picks it)."""


def pick_engine_cpus(available: list[int], threads: int) -> tuple[int, ...]:
    """The CPUs for an engine of `threads` threads: the last ones, leaving the first to training.

    Args:
        available: CPU ids this process may run on, ascending.
        threads: how many the engine gets (1 <= threads <= len(available)).
    """
    return tuple(available[-threads:])


def bind_engine_cpus(config: VllmEngineConfig) -> None:
    """Binds the engine's OpenMP threads to `config.cpu_ids`: vLLM's CPU backend reads the
    binding from the environment of the engine-core process it is about to start."""
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(str(c) for c in config.cpu_ids)


def engine_arguments(config: VllmEngineConfig) -> dict[str, Any]:
    """The AsyncEngineArgs keyword arguments for `config` (values validated by the settings)."""
    return {
        "model": str(config.model_path),
        "dtype": config.dtype,
        "max_model_len": config.max_model_len,
        # An explicit KV-cache size: without one, vLLM's CPU backend wants 92% of the machine's
        # memory free at start-up, which fails while a trainer runs beside it.
        "kv_cache_memory_bytes": config.kv_cache_gib * 2**30,
        # vLLM's batch limits for a server, stated: its defaults depend on who builds the
        # engine (on the CPU, `LLM(...)` gets 4096 tokens and 256 sequences per step, AsyncLLM
        # 2048 and 128), and a benchmark driving the engine directly must batch as we do.
        "max_num_batched_tokens": MAX_BATCHED_TOKENS,
        "max_num_seqs": MAX_SEQUENCES,
        "gpu_memory_utilization": config.gpu_memory_fraction,
        "enable_sleep_mode": config.sleep_mode,
        "enable_lora": True,
        "max_loras": config.max_loras,
        "max_cpu_loras": config.max_cpu_loras,
        "max_lora_rank": config.max_lora_rank,
        # LoRA only where adapterd lets adapters go. Without this, vLLM also wraps the output
        # head, and its CPU LoRA logits path crashes the engine core on prompt log-probabilities
        # of more than one request in a batch (vllm-project/vllm#29955, #17766).
        "lora_target_modules": list(config.lora_target_modules),
        # vLLM's default stat loggers (its log lines and vllm:* series) stay off; adapterd's own
        # stat logger still receives every step's stats.
        "disable_log_stats": True,
        # Client traffic (priority 0) goes ahead of evaluations (GenerationRequest.priority).
        "scheduling_policy": "priority",
        # Constrained JSON is compact, so a small model cannot pad it with whitespace until
        # max_tokens runs out. An engine setting (vLLM ignores it per request) that needs a
        # named backend: llguidance, which honours it everywhere (vLLM notes that its xgrammar
        # still emits a space after commas) and covers more of JSON Schema.
        "structured_outputs_config": {"backend": "guidance", "disable_any_whitespace": True},
        "seed": 0,
    }


def _stat_logger_factory(listener: StatsListener) -> Any:
    """A vLLM StatLoggerFactory whose loggers hand scheduler stats to `listener`."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class _Forwarder(StatLoggerBase):
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            lora = vllm_config.lora_config
            self.max_loras = lora.max_loras if lora is not None else 0

        def record(
            self,
            scheduler_stats: Any,
            iteration_stats: Any,
            mm_cache_stats: Any = None,
            engine_idx: int = 0,
        ) -> None:
            if scheduler_stats is not None:
                listener(
                    EngineStats(
                        running=scheduler_stats.num_running_reqs,
                        waiting=scheduler_stats.num_waiting_reqs,
                        kv_cache_usage=scheduler_stats.kv_cache_usage,
                        # Request counts by LoRA name (the adapter's ref), filled by vLLM's
                        # output processor before the stat loggers run.
                        running_adapters=tuple(scheduler_stats.running_lora_adapters),
                        waiting_adapters=tuple(scheduler_stats.waiting_lora_adapters),
                        max_loras=self.max_loras,
                    )
                )

        def log_engine_initialized(self) -> None:
            pass

    return _Forwarder


def _prompt_logprobs(output: Any) -> tuple[PromptLogprob, ...]:
    """vLLM's per-position {token id: Logprob} (None first) as one entry per prompt token."""
    entries = []
    for position, token_id in enumerate(output.prompt_token_ids):
        ranked = output.prompt_logprobs[position] if output.prompt_logprobs else None
        if ranked is None:  # the first token has no context
            entries.append(PromptLogprob(token_id, "", 0.0, True))
            continue
        own = ranked[token_id]
        entries.append(PromptLogprob(token_id, own.decoded_token or "", own.logprob, own.rank == 1))
    return tuple(entries)


class VllmEngine:
    """InferenceEngine over vllm.v1.engine.async_llm.AsyncLLM."""

    def __init__(self, config: VllmEngineConfig, stats: StatsListener | None = None) -> None:
        self._config = config
        self._stats = stats
        self._llm: Any = None
        self._building: asyncio.Future[None] | None = None

    async def start(self) -> None:
        bind_engine_cpus(self._config)
        # Importing vLLM and building the engine (weights, compilation) take ~30 s: all of it
        # runs in a thread so the event loop keeps answering health checks meanwhile. The build
        # is shielded: if start() is cancelled, shutdown() still gets the engine to stop.
        self._building = asyncio.ensure_future(asyncio.to_thread(self._build))
        try:
            await asyncio.shield(self._building)
        except Exception as exc:
            raise EngineError(f"vLLM engine failed to start: {exc}") from exc

    def _build(self) -> None:
        # Runs in a worker thread. The engine is stored here, not returned: a future that
        # holds it as its result would keep it alive past shutdown.
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        loggers = [_stat_logger_factory(self._stats)] if self._stats is not None else None
        self._llm = AsyncLLM.from_engine_args(
            AsyncEngineArgs(**engine_arguments(self._config)), stat_loggers=loggers
        )

    async def check_health(self) -> None:
        if self._llm is None:
            raise EngineError("engine not started")
        try:
            await self._llm.check_health()
        except Exception as exc:
            raise EngineError(f"engine unhealthy: {exc}") from exc

    def _running(self) -> Any:
        if self._llm is None:
            raise EngineError("engine not started")
        return self._llm

    @staticmethod
    def _lora_request(adapter: AdapterSlot) -> Any:
        from vllm.lora.request import LoRARequest

        return LoRARequest(adapter.ref, adapter.engine_id, str(adapter.path))

    async def add_adapter(self, adapter: AdapterSlot) -> None:
        llm = self._running()
        try:
            await llm.add_lora(self._lora_request(adapter))
        except Exception as exc:  # vLLM raises plain ValueError/RuntimeError for bad adapters
            raise EngineError(f"engine could not load adapter {adapter.ref}: {exc}") from exc

    async def remove_adapter(self, engine_id: int) -> None:
        await self._running().remove_lora(engine_id)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        llm = self._running()
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        sampling = request.sampling
        params = SamplingParams(
            max_tokens=sampling.max_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k,
            stop=list(sampling.stop),
            seed=sampling.seed,
            ignore_eos=sampling.ignore_eos,
            # 1: the most likely token at each position as well as the actual one (is_top).
            prompt_logprobs=1 if request.prompt_logprobs else None,
            structured_outputs=(
                StructuredOutputsParams(json=request.json_schema)
                if request.json_schema is not None
                else None
            ),
            output_kind=RequestOutputKind.DELTA,
        )
        stream = llm.generate(
            TokensPrompt(prompt_token_ids=list(request.prompt_token_ids)),
            params,
            request.request_id,
            lora_request=self._lora_request(request.adapter) if request.adapter else None,
            priority=request.priority,
        )
        first = True
        try:
            async for output in stream:
                completion = output.outputs[0]
                yield GenerationChunk(
                    text=completion.text,
                    token_ids=tuple(completion.token_ids),
                    finish_reason=completion.finish_reason if output.finished else None,
                    prompt_logprobs=(
                        _prompt_logprobs(output) if first and request.prompt_logprobs else ()
                    ),
                )
                first = False
        except (asyncio.CancelledError, GeneratorExit):
            raise
        except Exception as exc:  # vLLM's own errors (EngineDeadError, ...) cross the seam typed
            raise EngineError(f"generation {request.request_id} failed: {exc}") from exc
        finally:
            await stream.aclose()  # aborts the request in the engine if we stopped early

    async def sleep(self) -> None:
        try:
            await self._running().sleep(level=1)
        except Exception as exc:
            raise EngineError(f"engine could not sleep: {exc}") from exc

    async def wake_up(self) -> None:
        try:
            await self._running().wake_up()
        except Exception as exc:
            raise EngineError(f"engine could not wake up: {exc}") from exc

    async def shutdown(self) -> None:
        building, self._building = self._building, None
        if building is not None and not building.done():
            # Cancelled mid-start: the engine core process exists or is about to; wait for it.
            with contextlib.suppress(Exception):
                await building
        llm, self._llm = self._llm, None
        if llm is not None:
            # Called on the loop thread on purpose: vLLM cancels its output-handler task after
            # stopping the core, and a free loop would let that task log the core's death.
            llm.shutdown()
            # Let the cancelled output-handler task finish and drop the last references now:
            # otherwise AsyncLLM.__del__ runs again during interpreter teardown and fails there.
            await asyncio.sleep(0)
            del llm
            gc.collect()
