"""Generation as the service offers it: validate, render, route to an adapter, measure.

`GenerateParams` is the validated request (pydantic; errors name the field and value).
`Generator.stream` renders the prompt with the base model's chat template (the trainer's own
rendering), leases the adapter the request names, streams the engine's deltas, records the
per-adapter latency and token metrics, and hands a request its tenant's capture policy chose to
the capture recorder. gRPC and the HTTP API both come through here; the service's own requests
(`complete`: evaluations) never do, so they are neither counted nor captured.
"""

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from eval.schema import check_schema
from service.adapters.manager import AdapterManager
from service.auth import Principal
from service.authz import qualify_read
from service.capture.model import Capture, CapturePolicy, new_request_id
from service.capture.recorder import CaptureRecorder
from service.errors import AdapterdError, InvalidArgumentError, UnavailableError
from service.inference.engine import (
    EngineError,
    EngineState,
    GenerationRequest,
    InferenceEngine,
    PromptLogprob,
    Sampling,
)
from service.metrics import Metrics
from service.quotas import PerTenant
from trainer.config import describe_validation_error
from trainer.masking import prompt_token_ids

MAX_STOP_STRINGS = 8
MAX_PROMPT_CHARS = 1 << 20
"""The longest prompt or chat (all messages) a request may send; the engine's max_model_len
bounds it in tokens, this in the work of tokenizing it."""
MAX_MESSAGES = 1024
INTERNAL_PRIORITY = 10
"""Scheduling priority of the service's own requests (evaluations): after client traffic."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SamplingParams(_Strict):
    """How tokens are chosen; defaults as in the proto."""

    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0)
    max_tokens: int = Field(256, ge=1)
    stop: tuple[Annotated[str, Field(max_length=256)], ...] = Field((), max_length=MAX_STOP_STRINGS)
    seed: int | None = Field(None, ge=-(2**63), lt=2**63)
    ignore_eos: bool = False


class ChatMessage(_Strict):
    """One message of a chat."""

    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=MAX_PROMPT_CHARS)


class GenerateParams(_Strict):
    """A validated generation request."""

    adapter: str = ""
    """`[tenant/]name[@N]` or an alias; empty for the base model."""
    messages: tuple[ChatMessage, ...] | None = Field(None, max_length=MAX_MESSAGES)
    prompt: str | None = Field(None, max_length=MAX_PROMPT_CHARS)
    sampling: SamplingParams = SamplingParams()
    json_schema: dict[str, Any] | None = None
    prompt_logprobs: bool = False

    @field_validator("json_schema", mode="before")
    @classmethod
    def _parse_schema(cls, value: Any) -> Any:
        if value is None or value == "":
            return None
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not valid JSON ({exc})") from None
            except RecursionError:
                raise ValueError("nested too deep") from None
        check_schema(value)  # a dict from HTTP is checked the same way
        return value

    @model_validator(mode="after")
    def _one_input(self) -> "GenerateParams":
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("give exactly one of chat or prompt")
        if self.messages is not None:
            if sum(len(m.content) for m in self.messages) > MAX_PROMPT_CHARS:
                raise ValueError(f"chat.messages: longer than {MAX_PROMPT_CHARS} characters")
            if not self.messages:
                raise ValueError("chat.messages: empty; give at least one message")
            if self.messages[-1].role == "assistant":
                raise ValueError("chat.messages: the last message is the assistant's")
        if self.prompt is not None and not self.prompt:
            raise ValueError("prompt: empty")
        return self

    @classmethod
    def parse(cls, fields: dict[str, Any]) -> "GenerateParams":
        """Validates `fields` (proto field names).

        Raises:
            InvalidArgumentError: one line per problem, naming the field and value.
        """
        try:
            return cls.model_validate(fields)
        except ValidationError as exc:
            raise InvalidArgumentError("; ".join(describe_validation_error(exc))) from None


@dataclass(frozen=True)
class Usage:
    """Tokens a request used."""

    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Delta:
    """A piece of a completion as the service returns it."""

    text: str
    token_ids: tuple[int, ...]
    adapter_version: str
    """"name@N" that answers; "" for the base model."""
    finish_reason: str | None = None
    usage: Usage | None = None
    """On the last delta."""
    prompt_logprobs: tuple[PromptLogprob, ...] = ()
    capture_id: str = ""
    """On the last delta of a captured request: the id its feedback names."""


@dataclass(frozen=True)
class Completion:
    """A whole completion, for the service's own callers."""

    text: str
    finish_reason: str
    prompt_logprobs: tuple[PromptLogprob, ...]


class Generator:
    """Serves generation requests on the engine through the adapter manager."""

    def __init__(
        self,
        *,
        engine: InferenceEngine,
        adapters: AdapterManager,
        tokenizer: Any,
        metrics: Metrics,
        max_model_len: int,
        engine_state: Callable[[], EngineState],
        in_flight: PerTenant,
        capture: CaptureRecorder | None = None,
    ) -> None:
        self._engine = engine
        self._capture = capture
        self._in_flight = in_flight
        self._adapters = adapters
        self._tokenizer = tokenizer
        self._metrics = metrics
        self._max_model_len = max_model_len
        self._engine_state = engine_state

    def ready(self) -> bool:
        """Whether the engine is warm and serving."""
        return self._engine_state() is EngineState.READY

    def engine_state(self) -> EngineState:
        """The engine's state (FAILED: it will not come back in this process)."""
        return self._engine_state()

    def _prompt_ids(self, params: GenerateParams) -> tuple[int, ...]:
        if params.messages is not None:
            messages = [m.model_dump() for m in params.messages]
            return self.chat_prompt_ids(messages, params.sampling.max_tokens)
        ids = self._tokenizer(params.prompt, add_special_tokens=False)["input_ids"]
        return self._fitting(ids, params.sampling.max_tokens)

    def chat_prompt_ids(self, messages: list[dict[str, str]], max_tokens: int) -> tuple[int, ...]:
        """A chat rendered as in training plus the assistant prefix, tokenized.

        Raises:
            InvalidArgumentError: when it leaves no room for `max_tokens` in the engine.
        """
        return self._fitting(prompt_token_ids(self._tokenizer, messages), max_tokens)

    def _fitting(self, ids: list[int], max_tokens: int) -> tuple[int, ...]:
        if len(ids) > self._max_model_len - max_tokens:
            raise InvalidArgumentError(
                f"prompt: {len(ids)} tokens plus sampling.max_tokens {max_tokens} exceed the "
                f"engine's max_model_len {self._max_model_len}"
            )
        return tuple(ids)

    async def stream(
        self, params: GenerateParams, principal: Principal, request_id: str = ""
    ) -> AsyncIterator[Delta]:
        """Streams the completion of `params` for `principal` (who must be able to see the
        adapter it names); the last delta has finish_reason and usage, and when the request is
        captured its capture id: `request_id` (the HTTP completion id), else a new one.

        Raises:
            UnavailableError: while the engine is not ready, or when it fails mid-request.
            InvalidArgumentError, NotFoundError, FailedPreconditionError,
            ResourceExhaustedError: about the request or its adapter.
        """
        received = time.monotonic()
        label, outcome = self._adapters.label(""), "ok"
        try:
            requested = qualify_read(principal, params.adapter, "adapter") if params.adapter else ""
            label = self._adapters.label(requested)
            if not self.ready():
                raise UnavailableError("the inference engine is not ready; retry shortly")
            capture = self._capturing(principal, requested, params, request_id)
            with self._in_flight.hold(principal.tenant):
                async for delta in self._serve(params, requested, received, label, capture):
                    yield delta
        except AdapterdError as exc:
            outcome = exc.reason
            raise
        except (asyncio.CancelledError, GeneratorExit):  # the client went away
            outcome = "cancelled"
            raise
        except Exception:
            outcome = "internal"
            raise
        finally:
            self._metrics.generation_requests.labels(label, outcome).inc()

    def _capturing(
        self, principal: Principal, requested: str, params: GenerateParams, request_id: str
    ) -> "_Capturing | None":
        """What the request collects for its capture, when its tenant's policy chose it."""
        if self._capture is None:
            return None
        policy = self._capture.decide(principal.tenant, requested)
        if policy is None:
            return None
        return _Capturing(request_id or new_request_id("gen"), policy, params, self._capture)

    async def _serve(
        self,
        params: GenerateParams,
        requested: str,
        received: float,
        label: str,
        capture: "_Capturing | None",
    ) -> AsyncIterator[Delta]:
        # Tokenizing a long prompt is CPU work on client input: off the event loop.
        prompt = await asyncio.to_thread(self._prompt_ids, params)
        async with self._adapters.lease(requested) as adapter:
            request = GenerationRequest(
                request_id=uuid.uuid4().hex,
                prompt_token_ids=prompt,
                sampling=Sampling(**params.sampling.model_dump()),
                adapter=None if adapter is None else adapter.slot,
                json_schema=params.json_schema,
                prompt_logprobs=params.prompt_logprobs,
            )
            version = "" if adapter is None else adapter.ref
            async for delta in self._run(request, version, received, label, capture):
                yield delta

    async def _run(
        self,
        request: GenerationRequest,
        version: str,
        received: float,
        label: str,
        capture: "_Capturing | None",
    ) -> AsyncIterator[Delta]:
        metrics = self._metrics
        metrics.prompt_tokens.labels(label).inc(len(request.prompt_token_ids))
        generated, previous = 0, None
        try:
            async for chunk in self._engine.generate(request):
                now = time.monotonic()
                if chunk.token_ids:
                    if previous is None:
                        metrics.ttft.labels(label).observe(now - received)
                    else:
                        metrics.inter_token.labels(label).observe(now - previous)
                    previous = now
                generated += len(chunk.token_ids)
                metrics.generated_tokens.labels(label).inc(len(chunk.token_ids))
                last = chunk.finish_reason is not None
                usage = Usage(len(request.prompt_token_ids), generated) if last else None
                capture_id = ""
                if capture is not None:
                    capture.texts.append(chunk.text)
                    if usage is not None:
                        capture.finish(version, chunk.finish_reason or "", usage, received, label)
                        capture_id = capture.id
                yield Delta(
                    text=chunk.text,
                    token_ids=chunk.token_ids,
                    adapter_version=version,
                    finish_reason=chunk.finish_reason,
                    usage=usage,
                    prompt_logprobs=chunk.prompt_logprobs,
                    capture_id=capture_id,
                )
        except EngineError as exc:
            raise UnavailableError(f"the inference engine failed: {exc}") from exc
        metrics.generation_latency.labels(label).observe(time.monotonic() - received)

    async def complete(
        self,
        adapter: str,
        prompt_ids: Sequence[int],
        sampling: Sampling,
        *,
        json_schema: dict[str, Any] | None = None,
        prompt_logprobs: bool = False,
    ) -> Completion:
        """One whole completion for the service itself (evaluations): token ids in, after
        client traffic in the engine's queue, and outside the per-adapter request metrics,
        which describe client traffic.

        Raises:
            UnavailableError: while the engine is not ready, or when it fails.
            NotFoundError, FailedPreconditionError, ResourceExhaustedError: about the adapter.
        """
        if not self.ready():
            raise UnavailableError("the inference engine is not ready; retry shortly")
        texts: list[str] = []
        logprobs: tuple[PromptLogprob, ...] = ()
        finish = ""
        async with self._adapters.lease(adapter) as entry:
            request = GenerationRequest(
                request_id=uuid.uuid4().hex,
                prompt_token_ids=tuple(prompt_ids),
                sampling=sampling,
                adapter=None if entry is None else entry.slot,
                json_schema=json_schema,
                prompt_logprobs=prompt_logprobs,
                priority=INTERNAL_PRIORITY,
            )
            try:
                async for chunk in self._engine.generate(request):
                    texts.append(chunk.text)
                    logprobs = logprobs or chunk.prompt_logprobs
                    finish = chunk.finish_reason or finish
            except EngineError as exc:
                raise UnavailableError(f"the inference engine failed: {exc}") from exc
        return Completion("".join(texts), finish, logprobs)


class _Capturing:
    """What a captured request collects while it streams, handed to the recorder at its end."""

    def __init__(
        self,
        capture_id: str,
        policy: CapturePolicy,
        params: GenerateParams,
        recorder: CaptureRecorder,
    ) -> None:
        self.id = capture_id
        self.policy = policy
        self.params = params
        self.recorder = recorder
        self.texts: list[str] = []

    def finish(
        self, version: str, finish_reason: str, usage: Usage, received: float, label: str
    ) -> None:
        """Records the finished request (unredacted: the recorder redacts it)."""
        params, now = self.params, time.time()
        request: dict[str, Any] = (
            {"messages": [m.model_dump() for m in params.messages]}
            if params.messages is not None
            else {"prompt": params.prompt}
        )
        request["sampling"] = params.sampling.model_dump(mode="json")
        request["json_schema"] = params.json_schema
        capture = Capture(
            id=self.id,
            tenant=self.policy.tenant,
            target=self.policy.target,
            adapter_version=version,
            request=request,
            answer="".join(self.texts),
            finish_reason=finish_reason,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            latency_seconds=time.monotonic() - received,
            redacted={},
            created=now,
            expires=now + self.policy.retention_seconds,
        )
        self.recorder.record(capture, label)
