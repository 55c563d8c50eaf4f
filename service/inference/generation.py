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
from dataclasses import dataclass, replace
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from eval.schema import check_schema
from service.adapters.manager import AdapterManager
from service.auth import Principal
from service.authz import qualify_read
from service.capture.model import Capture, CapturePolicy, new_request_id
from service.capture.recorder import CaptureRecorder
from service.errors import (
    AdapterdError,
    FailedPreconditionError,
    InvalidArgumentError,
    UnavailableError,
)
from service.inference.engine import (
    EngineError,
    EngineState,
    GenerationRequest,
    InferenceEngine,
    PromptLogprob,
    Sampling,
)
from service.inference.tool_calls import ToolCallStream
from service.metrics import Metrics
from service.quotas import PerTenant
from trainer.config import describe_validation_error
from trainer.masking import prompt_token_ids
from trainer.templates import renders_hermes_calls
from trainer.tools import (
    CALL_OPEN,
    MAX_TOOL_CALLS,
    Tool,
    ToolCall,
    ToolError,
    call_schema,
    read_tool_calls,
    read_tools,
    template_message,
)

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

    role: Literal["system", "user", "assistant", "tool"]
    content: str = Field("", max_length=MAX_PROMPT_CHARS)
    tool_calls: tuple[dict[str, Any], ...] = Field((), max_length=MAX_TOOL_CALLS)
    """An assistant's earlier calls, OpenAI's shape, naming the request's tools."""
    tool_call_id: str = Field("", max_length=64)
    """The call a tool message answers (OpenAI's field; the templates do not render it)."""


TOOL_CHOICES = ("auto", "none", "required")
"""`tool_choice` values other than a tool's name."""


class GenerateParams(_Strict):
    """A validated generation request."""

    adapter: str = ""
    """`[tenant/]name[@N]` or an alias; empty for the base model."""
    messages: tuple[ChatMessage, ...] | None = Field(None, max_length=MAX_MESSAGES)
    prompt: str | None = Field(None, max_length=MAX_PROMPT_CHARS)
    sampling: SamplingParams = SamplingParams()
    json_schema: dict[str, Any] | None = None
    prompt_logprobs: bool = False
    tools: tuple[Tool, ...] = ()
    """Functions the model may call (a chat's only); checked by `trainer.tools`."""
    tool_choice: str = "auto"
    """"auto" (text or calls), "none" (text: the tools are not shown), "required" (one call of
    any tool) or a tool's name (one call of it)."""

    @field_validator("tools", mode="before")
    @classmethod
    def _read_tools(cls, value: Any) -> Any:
        if not value:
            return ()
        tools = read_tools(value, "tools")  # ToolError is a ValueError: a field error
        reserved = [tool.name for tool in tools if tool.name in TOOL_CHOICES]
        if reserved:
            raise ValueError(f"a tool may not be named {reserved[0]!r} (a tool_choice value)")
        return tools

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
        if self.tools and self.messages is None:
            raise ValueError("tools: only a chat may offer tools")
        if self.tools and self.json_schema is not None:
            raise ValueError("json_schema: give tools or a json_schema, not both")
        names = {tool.name for tool in self.tools}
        if self.tool_choice not in TOOL_CHOICES and self.tool_choice not in names:
            offered = ", ".join(sorted(names)) or "no tools"
            raise ValueError(
                f"tool_choice: {self.tool_choice[:80]!r} is not auto, none, required or the "
                f"name of an offered tool ({offered})"
            )
        if self.tool_choice == "required" and not self.tools:
            raise ValueError("tool_choice: 'required' needs tools")
        self.template_messages()  # the earlier calls name offered tools with valid arguments
        return self

    @property
    def uses_tools(self) -> bool:
        """Whether the chat needs a template that renders tools: it offers some, or earlier
        messages call them or answer calls."""
        return bool(self.tools) or any(
            m.role == "tool" or m.tool_calls for m in self.messages or ()
        )

    @property
    def offered(self) -> tuple[Tool, ...]:
        """The tools the model sees (none with tool_choice "none")."""
        return () if self.tool_choice == "none" else self.tools

    @property
    def forced(self) -> tuple[Tool, ...]:
        """The tools one of which the answer must call (none unless required or named)."""
        if self.tool_choice == "required":
            return self.tools
        return tuple(tool for tool in self.tools if tool.name == self.tool_choice)

    def template_messages(self) -> list[dict[str, Any]]:
        """The chat as a chat template takes it, earlier calls' arguments as objects.

        Raises:
            ToolError: an earlier call names a tool not offered or has invalid arguments.
        """
        messages: list[dict[str, Any]] = []
        for index, message in enumerate(self.messages or ()):
            calls: tuple[ToolCall, ...] = ()
            if message.tool_calls:
                where = f"messages[{index}].tool_calls"
                if message.role != "assistant":
                    raise ToolError([(where, "wrong_role", f"'{where}': only an assistant calls")])
                calls = read_tool_calls(list(message.tool_calls), where, self.tools)
            messages.append(template_message(message.role, message.content, calls))
        return messages

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
    tool_calls: tuple[ToolCall, ...] = ()
    """On the last delta of an answer that calls tools (finish_reason "tool_calls")."""


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
        self._renders_tools = renders_hermes_calls(tokenizer)

    def ready(self) -> bool:
        """Whether the engine is warm and serving."""
        return self._engine_state() is EngineState.READY

    @property
    def renders_tools(self) -> bool:
        """Whether the server's chat template renders tools and calls as the Hermes blocks the
        answers are parsed by (`--chat-template chatml_tools`)."""
        return self._renders_tools

    def engine_state(self) -> EngineState:
        """The engine's state (FAILED: it will not come back in this process)."""
        return self._engine_state()

    def _prompt_ids(self, params: GenerateParams) -> tuple[int, ...]:
        if params.messages is not None:
            return self.chat_prompt_ids(
                params.template_messages(),
                params.sampling.max_tokens,
                params.offered,
                prefill=f"{CALL_OPEN}\n" if params.forced else "",
            )
        ids = self._tokenizer(params.prompt, add_special_tokens=False)["input_ids"]
        return self._fitting(ids, params.sampling.max_tokens)

    def chat_prompt_ids(
        self,
        messages: list[dict[str, Any]],
        max_tokens: int,
        tools: Sequence[Tool] = (),
        prefill: str = "",
    ) -> tuple[int, ...]:
        """A chat offering `tools` rendered as in training plus the assistant prefix and
        `prefill` (the start of the answer), tokenized.

        Raises:
            InvalidArgumentError: when it leaves no room for `max_tokens` in the engine.
        """
        ids = prompt_token_ids(self._tokenizer, messages, tools, prefill)
        return self._fitting(ids, max_tokens)

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
            if params.uses_tools and not self.renders_tools:
                raise FailedPreconditionError(
                    "tools: the server's chat template does not render tools and calls as "
                    "Hermes <tool_call> blocks; its operator can serve with --chat-template "
                    "chatml_tools"
                )
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
                json_schema=call_schema(params.forced) if params.forced else params.json_schema,
                prompt_logprobs=params.prompt_logprobs,
            )
            version = "" if adapter is None else adapter.ref
            calls = ToolCallStream(params.tools, bool(params.forced)) if params.offered else None
            if capture is not None and params.forced:  # the answer as the model wrote it
                capture.texts.append(f"{CALL_OPEN}\n")
            async for delta in self._run(request, version, received, label, capture):
                yield delta if calls is None else _with_calls(calls, delta)

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


def _with_calls(calls: ToolCallStream, delta: Delta) -> Delta:
    """`delta` with the text `calls` releases now; the last one with the answer's calls."""
    text = calls.feed(delta.text)
    if delta.finish_reason is None:
        return replace(delta, text=text)
    text += calls.finish()
    if not calls.calls:
        return replace(delta, text=text)
    # Cut off by max_tokens after a whole call, the answer still says it was cut.
    finish = "length" if delta.finish_reason == "length" else "tool_calls"
    return replace(delta, text=text, tool_calls=calls.calls, finish_reason=finish)


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
            {"messages": params.template_messages()}
            if params.messages is not None
            else {"prompt": params.prompt}
        )
        if params.tools:
            request["tools"] = [tool.as_dict() for tool in params.tools]
            request["tool_choice"] = params.tool_choice
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
