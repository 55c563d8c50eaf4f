"""The OpenAI-compatible HTTP API: /v1/models, /v1/chat/completions, /v1/completions, and
/v1/feedback on a captured completion (named by its completion `id`).

A thin transport over the same `Generator` as gRPC: the request becomes `GenerateParams`
(`model` names an adapter, an alias, `[tenant/]name@N`, or the base model by its name), the
answer is OpenAI's JSON or its server-sent events. The same tokens file authenticates
(`Authorization: Bearer`), the same policy table (`service.authz`) says who may call each route,
the caller's tenant decides which adapters it sees, exactly as in gRPC; the same per-adapter
metrics count the requests, and domain errors map to HTTP statuses in one table with OpenAI's
error body. Bodies are capped before anything parses them (uvicorn has no cap of its own).
vLLM's own HTTP server is never exposed.
"""

import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import errors
from service.adapters.manager import AdapterManager
from service.auth import ANONYMOUS_ADMIN, TokenTable
from service.authz import POLICY, authorize
from service.capture.model import (
    MAX_CORRECTION_CHARS,
    MAX_FLAG_REASON_CHARS,
    Capture,
    Feedback,
    new_request_id,
    thumbs_rating,
)
from service.capture.service import CaptureService
from service.inference.generation import Delta, GenerateParams, Generator
from service.metrics import Metrics

HTTP_STATUS: dict[type[errors.AdapterdError], tuple[int, str]] = {
    errors.InvalidArgumentError: (400, "invalid_request_error"),
    errors.NotFoundError: (404, "not_found_error"),
    errors.FailedPreconditionError: (409, "conflict_error"),
    errors.ResourceExhaustedError: (429, "rate_limit_error"),
    errors.UnauthenticatedError: (401, "authentication_error"),
    errors.PermissionDeniedError: (403, "permission_error"),
    errors.UnavailableError: (503, "service_unavailable_error"),
}
"""Domain error -> (HTTP status, OpenAI error type); anything else is 500."""


class _Request(BaseModel):
    # OpenAI clients send fields adapterd ignores (user, n=1, logprobs=False, ...): allowed.
    model_config = ConfigDict(extra="allow")

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = 1.0
    top_p: float = 1.0
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    n: int = Field(1, ge=1, le=1)


class _Message(BaseModel):
    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = None
    """None (OpenAI's null) only beside tool_calls."""
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    def fields(self) -> dict[str, Any]:
        """The message as GenerateParams reads it."""
        fields: dict[str, Any] = {"role": self.role, "content": self.content or ""}
        if self.tool_calls:
            fields["tool_calls"] = self.tool_calls
        if self.tool_call_id:
            fields["tool_call_id"] = self.tool_call_id
        return fields


class ChatRequest(_Request):
    """POST /v1/chat/completions."""

    messages: list[_Message]
    max_completion_tokens: int | None = Field(None, ge=1)
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None


class CompletionRequest(_Request):
    """POST /v1/completions."""

    prompt: str
    max_tokens: int | None = Field(16, ge=1)


class FeedbackRequest(BaseModel):
    """POST /v1/feedback: the owner's feedback on a captured completion."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(max_length=128)
    """The completion's `id`."""
    rating: int | None = Field(None, ge=1, le=5)
    thumbs: Literal["up", "down"] | None = None
    flagged: bool = False
    flag_reason: str = Field("", max_length=MAX_FLAG_REASON_CHARS)
    correction: str | None = Field(None, max_length=MAX_CORRECTION_CHARS)

    def feedback(self, now: float) -> Feedback:
        """The domain's feedback (checked further by the service).

        Raises:
            InvalidArgumentError: both a rating and thumbs.
        """
        if self.rating is not None and self.thumbs is not None:
            raise errors.InvalidArgumentError("rating: give a rating or thumbs, not both")
        rating = self.rating
        if self.thumbs is not None:
            rating = thumbs_rating(self.thumbs == "up")
        return Feedback(rating, self.flagged, self.flag_reason, self.correction, now)


def feedback_response(capture: Capture) -> dict[str, Any]:
    """The body answering POST /v1/feedback: the feedback as stored (redacted). Pure."""
    given = capture.feedback
    return {
        "id": capture.id,
        "object": "feedback",
        "rating": given.rating if given else None,
        "flagged": given.flagged if given else False,
        "flag_reason": given.flag_reason if given else "",
        "correction": given.correction if given else None,
        "redacted": capture.redacted,
    }


def params_of(request: ChatRequest | CompletionRequest, base_model: str) -> GenerateParams:
    """The request as GenerateParams (validated there, errors naming the field). Pure.

    Raises:
        InvalidArgumentError: a field the engine cannot serve.
    """
    stop = [request.stop] if isinstance(request.stop, str) else request.stop or []
    sampling: dict[str, Any] = {
        "temperature": request.temperature,
        "top_p": request.top_p,
        "stop": tuple(stop),
        "seed": request.seed,
    }
    fields: dict[str, Any] = {"adapter": "" if request.model == base_model else request.model}
    if isinstance(request, ChatRequest):
        fields["messages"] = [m.fields() for m in request.messages]
        limit = request.max_completion_tokens or request.max_tokens
        fields["json_schema"] = _schema_of(request.response_format)
        fields["tools"] = request.tools or ()
        fields["tool_choice"] = _tool_choice(request.tool_choice)
    else:
        fields["prompt"] = request.prompt
        limit = request.max_tokens
    if limit is not None:
        sampling["max_tokens"] = limit
    fields["sampling"] = sampling
    return GenerateParams.parse(fields)


def _schema_of(response_format: dict[str, Any] | None) -> dict[str, Any] | None:
    if not response_format or response_format.get("type") == "text":
        return None
    if response_format.get("type") == "json_schema":
        wrapper = response_format.get("json_schema")
        schema = wrapper.get("schema") if isinstance(wrapper, dict) else None
        if isinstance(schema, dict):
            return schema
    raise errors.InvalidArgumentError(
        "response_format: only {'type': 'json_schema', 'json_schema': {'schema': {...}}} or "
        "'text' are supported"
    )


def _tool_choice(choice: str | dict[str, Any] | None) -> str:
    """OpenAI's tool_choice as GenerateParams reads it: a mode or a tool's name."""
    if choice is None or isinstance(choice, str):
        return choice or "auto"
    function = choice.get("function")
    if choice.get("type") == "function" and isinstance(function, dict):
        name = function.get("name")
        if isinstance(name, str):
            return name
    raise errors.InvalidArgumentError(
        "tool_choice: give 'auto', 'none', 'required' or {'type': 'function', 'function': "
        "{'name': ...}}"
    )


def _message(text: str, delta: Delta, streamed: bool) -> dict[str, Any]:
    """The assistant's message, or a stream's delta of it (whose calls carry their index),
    in OpenAI's shape."""
    if not delta.tool_calls:
        return {"role": "assistant", "content": text}
    calls = [
        {"index": i, **call.openai()} if streamed else call.openai()
        for i, call in enumerate(delta.tool_calls)
    ]
    return {"role": "assistant", "content": text or None, "tool_calls": calls}


def _error(exc: errors.AdapterdError) -> JSONResponse:
    status, kind = next(
        (HTTP_STATUS[c] for c in type(exc).__mro__ if c in HTTP_STATUS), (500, "internal_error")
    )
    return JSONResponse(
        {"error": {"message": str(exc), "type": kind, "code": exc.reason}}, status_code=status
    )


def _finish(delta: Delta) -> str | None:
    reasons = {"stop": "stop", "length": "length", "abort": "stop", "tool_calls": "tool_calls"}
    return reasons.get(delta.finish_reason) if delta.finish_reason else None


class BodyLimit:
    """ASGI middleware: refuses a body over `max_bytes` with 413 before the app reads any of
    it (by its Content-Length, or while it arrives chunked), and hands the app the whole body."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self._app = app
        self._max = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or ()).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self._max:
            await self._refuse(scope, receive, send)
            return
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self._max:
                await self._refuse(scope, receive, send)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self._app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = errors.InvalidArgumentError(f"body: larger than {self._max} bytes")
        response = JSONResponse(
            {
                "error": {
                    "message": str(error),
                    "type": "invalid_request_error",
                    "code": "too_large",
                }
            },
            status_code=413,
        )
        await response(scope, receive, send)


def build_openai_app(
    *,
    generator: Generator,
    adapters: AdapterManager,
    captures: CaptureService,
    tokens: TokenTable | None,
    base_model: str,
    metrics: Metrics,
    max_body_bytes: int,
    created: Callable[[], int] = lambda: int(time.time()),
) -> FastAPI:
    """The FastAPI application of the HTTP API."""
    app = FastAPI(title="adapterd OpenAI-compatible API", docs_url=None, redoc_url=None)

    @app.middleware("http")
    async def authorize_and_count(request: Request, call_next: Any) -> Any:
        began = time.monotonic()
        response: Any = None
        route = f"{request.method} {request.url.path}"
        try:
            principal = None
            if tokens is None:
                principal = ANONYMOUS_ADMIN
            elif request.headers.get("authorization"):
                principal = tokens.authenticate(request.headers.get("authorization"))
            if route in POLICY or route in routes:  # others are FastAPI's 404 or 405
                authorize(route, principal)
            request.state.principal = principal
        except errors.AdapterdError as exc:
            response = _error(exc)
        if response is None:
            response = await call_next(request)
        path = request.url.path if route in routes else "other"
        metrics.http_requests.labels(path, str(response.status_code)).inc()
        metrics.http_latency.labels(path).observe(time.monotonic() - began)
        return response

    @app.exception_handler(errors.AdapterdError)
    async def domain_error(request: Request, exc: errors.AdapterdError) -> JSONResponse:
        return _error(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        return _error(errors.InvalidArgumentError(problems))

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        names = [base_model, *adapters.model_names(request.state.principal)]
        now = created()
        return {
            "object": "list",
            "data": [
                {"id": name, "object": "model", "created": now, "owned_by": "adapterd"}
                for name in names
            ],
        }

    async def respond(
        request: Request, params: GenerateParams, model: str, stream: bool, chat: bool
    ) -> JSONResponse | StreamingResponse:
        completion_id = new_request_id("chatcmpl" if chat else "cmpl")
        deltas = generator.stream(params, request.state.principal, request_id=completion_id)
        if stream:
            first = await anext(deltas)  # errors before the first token are HTTP errors
            template = {
                "id": completion_id,
                "object": "chat.completion.chunk" if chat else "text_completion",
                "created": created(),
                "model": model,
            }
            return StreamingResponse(
                _events(first, deltas, template), media_type="text/event-stream"
            )
        parts = [delta async for delta in deltas]
        text, last = "".join(d.text for d in parts), parts[-1]
        usage = last.usage
        choice: dict[str, Any] = {"index": 0, "finish_reason": _finish(last)}
        if chat:
            choice["message"] = _message(text, last, streamed=False)
        else:
            choice["text"] = text
        return JSONResponse(
            {
                "id": completion_id,
                "object": "chat.completion" if chat else "text_completion",
                "created": created(),
                "model": model,
                "system_fingerprint": last.adapter_version or base_model,
                "choices": [choice],
                "usage": {
                    "prompt_tokens": usage.prompt_tokens if usage else 0,
                    "completion_tokens": usage.completion_tokens if usage else 0,
                    "total_tokens": (usage.prompt_tokens + usage.completion_tokens) if usage else 0,
                },
            }
        )

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(
        request: Request, body: ChatRequest
    ) -> JSONResponse | StreamingResponse:
        params = params_of(body, base_model)
        return await respond(request, params, body.model, body.stream, chat=True)

    @app.post("/v1/completions", response_model=None)
    async def completions(
        request: Request, body: CompletionRequest
    ) -> JSONResponse | StreamingResponse:
        params = params_of(body, base_model)
        return await respond(request, params, body.model, body.stream, chat=False)

    @app.post("/v1/feedback")
    async def feedback(request: Request, body: FeedbackRequest) -> dict[str, Any]:
        stored = await captures.feedback(
            request.state.principal, body.id, body.feedback(time.time())
        )
        return feedback_response(stored)

    routes = route_keys(app)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    return app


def route_keys(app: FastAPI) -> frozenset[str]:
    """ "METHOD /path" of every route the application serves (the rows `service.authz` needs)."""
    return frozenset(
        f"{method} {route.path}"
        for route in app.routes
        if isinstance(route, APIRoute)
        for method in route.methods
    )


async def _events(
    first: Delta, rest: AsyncIterator[Delta], template: dict[str, Any]
) -> AsyncIterator[str]:
    """OpenAI's server-sent events for a stream of deltas (each chunk `template` plus its
    choice), then [DONE]."""
    chat = template["object"] == "chat.completion.chunk"
    delta: Delta | None = first
    while delta is not None:
        choice: dict[str, Any] = {"index": 0, "finish_reason": _finish(delta)}
        if chat:
            choice["delta"] = _message(delta.text, delta, streamed=True)
        else:
            choice["text"] = delta.text
        yield f"data: {json.dumps({**template, 'choices': [choice]})}\n\n"
        delta = await anext(rest, None)
    yield "data: [DONE]\n\n"
