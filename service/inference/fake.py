"""A deterministic in-process engine for unit tests of the logic around the engine seam.

Never used to demonstrate a feature: the real engine is `VllmEngine`.
"""

import asyncio
import hashlib
from collections.abc import AsyncIterator

from service.inference.engine import EngineError, GenerationChunk, GenerationRequest


class FakeEngine:
    """Echoes a hash of the prompt, one word per token; `fail_start` makes start() raise."""

    def __init__(self, start_delay: float = 0.0, fail_start: bool = False) -> None:
        self.start_delay = start_delay
        self.fail_start = fail_start
        self.running = False
        self.shutdown_calls = 0

    async def start(self) -> None:
        await asyncio.sleep(self.start_delay)
        if self.fail_start:
            raise EngineError("fake engine told to fail")
        self.running = True

    async def check_health(self) -> None:
        if not self.running:
            raise EngineError("fake engine is not running")

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        if not self.running:
            raise EngineError("fake engine is not running")
        digest = hashlib.sha256(request.prompt.encode()).hexdigest()
        for i in range(request.max_tokens):
            await asyncio.sleep(0)
            last = i == request.max_tokens - 1
            yield GenerationChunk(
                text=f" {digest[i % 60 : i % 60 + 4]}",
                token_ids=(i,),
                finish_reason="length" if last else None,
            )

    async def shutdown(self) -> None:
        self.shutdown_calls += 1
        self.running = False
