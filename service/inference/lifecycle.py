"""Engine lifecycle: start, warm up, watch health, restart after a crash, stop; the state
everyone else reads.

A failed first start is FAILED at once (a bad model or setting would fail again). A crash of a
warm engine (its health check fails) is restarted with backoff (`RestartPolicy`): the state is
STARTING meanwhile (readiness NOT_SERVING, inference UNAVAILABLE), `on_restarted` runs once it
is warm again (the adapter manager forgets what the dead engine held, so adapters reload on
their next request), and past the policy's limit the engine stays FAILED and `on_give_up` runs
(liveness NOT_SERVING).
"""

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
from service.inference.restarts import RestartPolicy
from service.metrics import Metrics

logger = logging.getLogger(__name__)

HEALTH_INTERVAL_SECONDS = 10.0

StateListener = Callable[[EngineState], Awaitable[None]]
Hook = Callable[[], Awaitable[None]]


async def _nothing() -> None:
    return None


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
        *,
        policy: RestartPolicy | None = None,
        on_restarted: Hook = _nothing,
        on_give_up: Hook = _nothing,
        clock: Callable[[], float] = time.monotonic,
        health_interval: float = HEALTH_INTERVAL_SECONDS,
    ) -> None:
        self.engine = engine
        self._warmup_prompt = warmup_prompt
        self._metrics = metrics
        self._listener = listener
        self._policy = policy or RestartPolicy()
        self._on_restarted = on_restarted
        self._on_give_up = on_give_up
        self._clock = clock
        self._health_interval = health_interval
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
        if not await self._warm_up():
            await self._set(EngineState.FAILED)
            return
        self._monitor = asyncio.create_task(self._watch(), name="engine-health")

    async def _warm_up(self) -> bool:
        """Starts the engine and runs a first generation; READY on success."""
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
            return False
        self._metrics.engine_start_seconds.set(time.monotonic() - began)
        logger.info("engine warm after %.1f s", time.monotonic() - began)
        await self._set(EngineState.READY)
        return True

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
            await asyncio.sleep(self._health_interval)
            if self.state is EngineState.SLEEPING:
                continue
            try:
                await self.engine.check_health()
            except EngineError:
                logger.exception("engine health check failed")
                if not await self._restart():
                    return

    async def _restart(self) -> bool:
        """Restarts a crashed engine with backoff until it is warm (True) or the policy gives
        up (False: FAILED, and `on_give_up`)."""
        while True:
            delay = self._policy.after_crash(self._clock())
            if delay is None:
                logger.error("engine crashed too often; giving up (liveness NOT_SERVING)")
                await self._set(EngineState.FAILED)
                await self._on_give_up()
                return False
            await self._set(EngineState.STARTING)
            await self.engine.shutdown()  # whatever is left of the dead engine
            self._metrics.engine_restarts.inc()
            logger.warning("engine crashed; restarting in %.0f s", delay)
            await asyncio.sleep(delay)
            if await self._warm_up():
                await self._on_restarted()
                return True

    async def stop(self) -> None:
        """Marks the engine STOPPING, stops watching it and shuts it down."""
        await self._set(EngineState.STOPPING)
        if self._monitor is not None:
            self._monitor.cancel()
        await self.engine.shutdown()
