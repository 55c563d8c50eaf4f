"""A deterministic in-process engine for unit tests of the logic around the engine seam.

Never used to demonstrate a feature: the real engine is `VllmEngine`.
"""

import asyncio
import hashlib
from collections.abc import AsyncIterator

from service.inference.engine import AdapterSlot, EngineError, GenerationChunk, GenerationRequest


class FakeEngine:
    """Echoes a hash of the prompt and adapter id, one word per token.

    `fail_start` makes start() raise; `step` (an Event) paces generation when a test needs
    requests to stay in flight; `adapters` is the engine's adapter cache.
    """

    def __init__(self, start_delay: float = 0.0, fail_start: bool = False) -> None:
        self.start_delay = start_delay
        self.fail_start = fail_start
        self.running = False
        self.shutdown_calls = 0
        self.adapters: dict[int, AdapterSlot] = {}
        self.loads = 0
        self.step: asyncio.Event | None = None
        self.asleep = False

    async def start(self) -> None:
        await asyncio.sleep(self.start_delay)
        if self.fail_start:
            raise EngineError("fake engine told to fail")
        self.running = True

    async def check_health(self) -> None:
        if not self.running:
            raise EngineError("fake engine is not running")

    async def add_adapter(self, adapter: AdapterSlot) -> None:
        self.adapters[adapter.engine_id] = adapter
        self.loads += 1

    async def remove_adapter(self, engine_id: int) -> None:
        self.adapters.pop(engine_id, None)

    async def sleep(self) -> None:
        self.asleep = True

    async def wake_up(self) -> None:
        self.asleep = False

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        if not self.running or self.asleep:
            raise EngineError("fake engine is not running or asleep")
        adapter = request.adapter
        if adapter is not None and adapter.engine_id not in self.adapters:
            raise EngineError(f"adapter {adapter.ref} is not in the engine")
        seed = f"{request.prompt_token_ids}/{adapter.engine_id if adapter else 0}"
        digest = hashlib.sha256(seed.encode()).hexdigest()
        for i in range(request.sampling.max_tokens):
            if self.step is not None:
                await self.step.wait()
            await asyncio.sleep(0)
            last = i == request.sampling.max_tokens - 1
            yield GenerationChunk(
                text=f" {digest[i % 60 : i % 60 + 4]}",
                token_ids=(i,),
                finish_reason="length" if last else None,
            )

    async def shutdown(self) -> None:
        self.shutdown_calls += 1
        self.running = False
        self.adapters.clear()  # a dead or stopped engine holds no adapters

    def crash(self) -> None:
        """What a dead engine core looks like from the server: health checks fail."""
        self.running = False
