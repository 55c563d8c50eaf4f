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

from service.inference.engine import EngineError, GenerationChunk, GenerationRequest


@dataclass(frozen=True)
class VllmEngineConfig:
    """What the vLLM engine is built from; derived from ServerSettings by the app."""

    model_path: Path
    """Hugging Face checkpoint directory of the base model."""
    max_loras: int
    """LoRA slots in one batch."""
    max_lora_rank: int
    """Largest LoRA rank accepted."""
    max_model_len: int
    """Longest sequence in tokens."""
    cpu_ids: tuple[int, ...]
    """CPUs the engine's OpenMP threads are bound to (CPU builds)."""
    kv_cache_gib: int
    """KV-cache size in GiB (CPU builds)."""
    dtype: str = "bfloat16"
    """Weight and activation dtype."""


def pick_engine_cpus(available: list[int], threads: int) -> tuple[int, ...]:
    """The CPUs for an engine of `threads` threads: the last ones, leaving the first to training.

    Args:
        available: CPU ids this process may run on, ascending.
        threads: how many the engine gets (1 <= threads <= len(available)).
    """
    return tuple(available[-threads:])


def engine_arguments(config: VllmEngineConfig) -> dict[str, Any]:
    """The AsyncEngineArgs keyword arguments for `config` (values validated by the settings)."""
    return {
        "model": str(config.model_path),
        "dtype": config.dtype,
        "max_model_len": config.max_model_len,
        # An explicit KV-cache size: without one, vLLM's CPU backend wants 92% of the machine's
        # memory free at start-up, which fails while a trainer runs beside it.
        "kv_cache_memory_bytes": config.kv_cache_gib * 2**30,
        "enable_lora": True,
        "max_loras": config.max_loras,
        "max_lora_rank": config.max_lora_rank,
        # adapterd exports its own metrics; vLLM's periodic stats log would only add noise.
        "disable_log_stats": True,
        "seed": 0,
    }


class VllmEngine:
    """InferenceEngine over vllm.v1.engine.async_llm.AsyncLLM."""

    def __init__(self, config: VllmEngineConfig) -> None:
        self._config = config
        self._llm: Any = None
        self._building: asyncio.Future[None] | None = None

    async def start(self) -> None:
        config = self._config
        # vLLM's CPU backend reads its thread binding from the engine-core process's environment.
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(str(c) for c in config.cpu_ids)
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

        self._llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**engine_arguments(self._config)))

    async def check_health(self) -> None:
        if self._llm is None:
            raise EngineError("engine not started")
        try:
            await self._llm.check_health()
        except Exception as exc:
            raise EngineError(f"engine unhealthy: {exc}") from exc

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        if self._llm is None:
            raise EngineError("engine not started")
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        params = SamplingParams(
            max_tokens=request.max_tokens,
            temperature=request.temperature,
            seed=request.seed,
            output_kind=RequestOutputKind.DELTA,
        )
        stream = self._llm.generate(request.prompt, params, request.request_id)
        try:
            async for output in stream:
                completion = output.outputs[0]
                yield GenerationChunk(
                    text=completion.text,
                    token_ids=tuple(completion.token_ids),
                    finish_reason=completion.finish_reason if output.finished else None,
                )
        except (asyncio.CancelledError, GeneratorExit):
            raise
        except Exception as exc:  # vLLM's own errors (EngineDeadError, ...) cross the seam typed
            raise EngineError(f"generation {request.request_id} failed: {exc}") from exc
        finally:
            await stream.aclose()  # aborts the request in the engine if we stopped early

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
