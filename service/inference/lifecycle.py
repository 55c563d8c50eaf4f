"""Engine lifecycle: start, warm up, watch health, stop; the state everyone else reads."""

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

from service.inference.engine import (
    EngineError,
    EngineState,
    GenerationRequest,
    InferenceEngine,
    Sampling,
)
from service.metrics import Metrics

logger = logging.getLogger(__name__)

HEALTH_INTERVAL_SECONDS = 10.0

StateListener = Callable[[EngineState], Awaitable[None]]


class EngineLifecycle:
    """Owns the engine's state; the only writer of it.

    The engine counts as ready ("warm") once it has started and completed a first generation.
    Listeners (the health service) hear every state change.
    """

    def __init__(
        self,
        engine: InferenceEngine,
        metrics: Metrics,
        listener: StateListener,
        warmup_prompt: tuple[int, ...],
    ) -> None:
        self.engine = engine
        self._warmup_prompt = warmup_prompt
        self._metrics = metrics
        self._listener = listener
        self.state = EngineState.STARTING
        self._monitor: asyncio.Task[None] | None = None

    async def _set(self, state: EngineState) -> None:
        if state is not self.state:
            logger.info("engine state %s -> %s", self.state.value, state.value)
        self.state = state
        self._metrics.engine_ready.set(1 if state is EngineState.READY else 0)
        await self._listener(state)

    async def start(self) -> None:
        """Starts and warms the engine, then watches its health until `stop`.

        Does not raise: a failed start is the FAILED state, visible in health and metrics.
        """
        began = time.monotonic()
        await self._set(EngineState.STARTING)
        try:
            await self.engine.start()
            request = GenerationRequest(
                f"warmup-{uuid.uuid4().hex}", self._warmup_prompt, Sampling(max_tokens=2)
            )
            async for _ in self.engine.generate(request):
                pass
        except EngineError:
            logger.exception("engine failed to start")
            await self._set(EngineState.FAILED)
            return
        self._metrics.engine_start_seconds.set(time.monotonic() - began)
        logger.info("engine warm after %.1f s", time.monotonic() - began)
        await self._set(EngineState.READY)
        self._monitor = asyncio.create_task(self._watch(), name="engine-health")

    async def sleep(self) -> None:
        """Puts a READY engine to sleep (SLEEPING: not ready, health NOT_SERVING) to lend its
        accelerator memory to a trainer; does nothing in any other state.

        Raises:
            EngineError: when the engine cannot sleep (it stays READY).
        """
        if self.state is not EngineState.READY:
            return
        await self.engine.sleep()
        await self._set(EngineState.SLEEPING)

    async def wake(self) -> None:
        """Wakes a SLEEPING engine back to READY; a failure is the FAILED state."""
        if self.state is not EngineState.SLEEPING:
            return
        try:
            await self.engine.wake_up()
        except EngineError:
            logger.exception("engine failed to wake up")
            await self._set(EngineState.FAILED)
            return
        await self._set(EngineState.READY)

    @contextlib.asynccontextmanager
    async def lent(self) -> AsyncIterator[None]:
        """The engine asleep for the duration of the block (a job training on its GPU)."""
        await self.sleep()
        try:
            yield
        finally:
            await self.wake()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_INTERVAL_SECONDS)
            if self.state is EngineState.SLEEPING:
                continue
            try:
                await self.engine.check_health()
            except EngineError:
                logger.exception("engine health check failed")
                await self._set(EngineState.FAILED)
                return

    async def stop(self) -> None:
        """Marks the engine STOPPING, stops watching it and shuts it down."""
        await self._set(EngineState.STOPPING)
        if self._monitor is not None:
            self._monitor.cancel()
        await self.engine.shutdown()
