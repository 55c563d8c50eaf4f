"""The seam between adapterd and an inference engine.

`InferenceEngine` is everything the service asks of an engine. `VllmEngine` implements it for
production; `FakeEngine` deterministically, for unit tests of the logic around it. Prompts
cross the seam as token ids: chat templates and tokenization happen before it, once.
"""

import enum
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


class EngineState(enum.Enum):
    """Lifecycle of the engine inside the server; mirrors adapterd.v1.EngineState."""

    STARTING = "starting"
    READY = "ready"
    FAILED = "failed"
    STOPPING = "stopping"
    SLEEPING = "sleeping"
    """Weights offloaded and cache freed while a job trains on the same GPU."""


class EngineError(Exception):
    """The engine failed to start, died, or rejected a request it should have taken."""


@dataclass(frozen=True)
class AdapterSlot:
    """A LoRA adapter as the engine knows it."""

    engine_id: int
    """Integer id, unique per adapter version for the engine's lifetime."""
    ref: str
    """"name@version", for the engine's own logs and stats."""
    path: Path
    """Checked adapter directory (peft format)."""


@dataclass(frozen=True)
class Sampling:
    """How tokens are chosen (validated before the engine)."""

    max_tokens: int = 16
    temperature: float = 0.0
    """0 means greedy."""
    top_p: float = 1.0
    top_k: int = 0
    """0 means no top-k cut."""
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False


@dataclass(frozen=True)
class GenerationRequest:
    """One completion request, engine-neutral."""

    request_id: str
    """Unique per request; the engine uses it to abort."""
    prompt_token_ids: tuple[int, ...]
    """The prompt, tokenized (chat template already applied)."""
    sampling: Sampling = field(default_factory=Sampling)
    adapter: AdapterSlot | None = None
    """The adapter to apply, resident in the engine; None for the base model."""
    json_schema: dict[str, Any] | None = None
    """Constrain decoding to this JSON Schema."""
    prompt_logprobs: bool = False
    """Return the log-probability of every prompt token with the first chunk."""
    priority: int = 0
    """Scheduling priority: lower runs first (client traffic 0, evaluations above)."""


@dataclass(frozen=True)
class PromptLogprob:
    """A prompt token and log P(token | the tokens before it)."""

    token_id: int
    text: str
    logprob: float
    """0.0 for the first token, which has no context."""
    is_top: bool
    """Whether the token was the most likely one at its position."""


@dataclass(frozen=True)
class GenerationChunk:
    """A piece of a streamed completion."""

    text: str
    """Text generated since the previous chunk."""
    token_ids: tuple[int, ...]
    """Token ids generated since the previous chunk."""
    finish_reason: str | None = None
    """Set on the last chunk: "stop", "length" or "abort"."""
    prompt_logprobs: tuple[PromptLogprob, ...] = ()
    """On the first chunk, when requested."""


@dataclass(frozen=True)
class EngineStats:
    """The scheduler's state after an engine step."""

    running: int
    """Requests in the running batch."""
    waiting: int
    """Requests queued for a slot."""
    kv_cache_usage: float
    """Fraction of the KV cache in use, 0 to 1."""
    running_adapters: tuple[str, ...] = ()
    """The adapter versions ("tenant/name@N") of the requests in the running batch."""
    waiting_adapters: tuple[str, ...] = ()
    """The adapter versions of the queued requests."""
    max_loras: int = 0
    """How many adapters one batch may hold (the engine's `max_loras`)."""


StatsListener = Callable[[EngineStats], None]


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

    async def add_adapter(self, adapter: AdapterSlot) -> None:
        """Loads `adapter` into the engine's adapter cache (the caller keeps within its capacity).

        Raises:
            EngineError: when the engine refuses or fails to load it.
        """

    async def remove_adapter(self, engine_id: int) -> None:
        """Drops an adapter from the engine's cache, freeing its slot. Idempotent.

        Raises:
            EngineError: when the engine is not running.
        """

    async def sleep(self) -> None:
        """Frees the accelerator's memory (weights offloaded, KV cache dropped) until
        `wake_up`; requests in flight are aborted.

        Raises:
            EngineError: when the engine cannot sleep (sleep mode needs a CUDA GPU).
        """

    async def wake_up(self) -> None:
        """Restores what `sleep` freed; the engine serves again.

        Raises:
            EngineError: when the engine cannot wake.
        """

    async def shutdown(self) -> None:
        """Stops the engine and every process it started. Idempotent; safe before start."""
