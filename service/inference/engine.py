"""The seam between adapterd and an inference engine.

`InferenceEngine` is everything the service asks of an engine. `VllmEngine` implements it for
production; `FakeEngine` deterministically, for unit tests of the logic around it. The serving
issue adds adapter loading to this protocol.
"""

import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol


class EngineState(enum.Enum):
    """Lifecycle of the engine inside the server; mirrors adapterd.v1.EngineState."""

    STARTING = "starting"
    READY = "ready"
    FAILED = "failed"
    STOPPING = "stopping"


class EngineError(Exception):
    """The engine failed to start, died, or rejected a request it should have taken."""


@dataclass(frozen=True)
class GenerationRequest:
    """One completion request, engine-neutral."""

    request_id: str
    """Unique per request; the engine uses it to abort."""
    prompt: str
    """Raw prompt text (chat formatting happens before the engine)."""
    max_tokens: int = 16
    """Upper bound on generated tokens."""
    temperature: float = 0.0
    """0 means greedy."""
    seed: int | None = None
    """Sampling seed, for reproducible non-greedy output."""


@dataclass(frozen=True)
class GenerationChunk:
    """A piece of a streamed completion."""

    text: str
    """Text generated since the previous chunk."""
    token_ids: tuple[int, ...]
    """Token ids generated since the previous chunk."""
    finish_reason: str | None = None
    """Set on the last chunk: "stop", "length" or "abort"."""


class InferenceEngine(Protocol):
    """An inference engine running one base model."""

    async def start(self) -> None:
        """Loads the base model and makes the engine ready to generate.

        Not idempotent: call once. Blocks the caller until loaded, not the event loop.

        Raises:
            EngineError: when the engine cannot start.
        """

    async def check_health(self) -> None:
        """Returns when the engine is alive and able to serve.

        Raises:
            EngineError: when the engine has died or was never started.
        """

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Streams the completion of `request` as deltas; the last chunk has a finish_reason.

        Closing the iterator early aborts the request in the engine.

        Raises:
            EngineError: when the engine is not running.
        """

    async def shutdown(self) -> None:
        """Stops the engine and every process it started. Idempotent; safe before start."""
