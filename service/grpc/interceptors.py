"""Server interceptors: error mapping with RPC metrics, and authentication with authorization.

Both wrap the method handler that grpc.aio resolved, so they see every call of every kind
(unary or streaming on either side) and run in the handler's own task (context variables set
here are visible to the servicer).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

import grpc
from google.protobuf.message import DecodeError
from grpc import aio

from service.auth import ANONYMOUS_ADMIN, Principal, TokenTable, current_principal
from service.authz import Access, access_of, authorize
from service.errors import AdapterdError, InvalidArgumentError
from service.grpc.status import status_code_for
from service.metrics import Metrics

logger = logging.getLogger(__name__)

MAX_DETAILS = 4000

# The grpc stubs make these generic; at run time they are plain classes, hence the strings.
Context: TypeAlias = "aio.ServicerContext[Any, Any]"
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Continuation: TypeAlias = "Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]]"
# A servicer method: (request or request iterator, context) -> response, or a response stream.
Behavior = Callable[..., Any]
# Wraps a behavior: (method name, behavior) -> behavior with the same calling convention.
Around = Callable[[str, Behavior], Behavior]


@dataclass(frozen=True)
class _Undecodable:
    """What a request that protobuf could not parse becomes, so that the error interceptor can
    answer INVALID_ARGUMENT (grpc itself answers UNKNOWN, naming a library exception)."""

    error: str


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def decode(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError as exc:
            return _Undecodable(str(exc))

    return decode


def _decoded(request: Any) -> Any:
    if isinstance(request, _Undecodable):
        raise InvalidArgumentError(
            "request: cannot be decoded: nested deeper than protobuf allows (100 levels), or "
            "not the method's message"
        )
    return request


async def _decoded_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        yield _decoded(request)


def _wrap_handler(
    handler: Handler | None,
    method: str,
    around_unary: Around,
    around_stream: Around,
    tolerant: bool = False,
) -> Handler | None:
    if handler is None:
        return None
    deserializer = handler.request_deserializer
    codec = {
        "request_deserializer": _tolerant(deserializer) if tolerant else deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            around_unary(method, handler.unary_unary), **codec
        )
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(
            around_unary(method, handler.stream_unary), **codec
        )
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            around_stream(method, handler.unary_stream), **codec
        )
    if handler.stream_stream:
        return grpc.stream_stream_rpc_method_handler(
            around_stream(method, handler.stream_stream), **codec
        )
    return handler


async def _stream(behavior: Behavior, request: Any, context: Context) -> AsyncIterator[Any]:
    # A streaming behavior is either an async generator or a coroutine that writes itself.
    if inspect.isasyncgenfunction(behavior):
        async for response in behavior(request, context):
            yield response
    else:
        await behavior(request, context)


def _requests(request: Any) -> Any:
    """The request, or the request stream, with undecodable messages refused."""
    if hasattr(request, "__aiter__"):
        return _decoded_stream(request)
    return _decoded(request)


class ErrorInterceptor(aio.ServerInterceptor):
    """Maps domain errors to their status and counts every call by method and code.

    Anything that is not an AdapterdError is a bug: the client gets INTERNAL with a
    correlation id, the log gets the traceback under the same id.
    """

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Continuation,
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        return _wrap_handler(
            handler,
            handler_call_details.method,
            self._around_unary,
            self._around_stream,
            tolerant=True,
        )

    async def _fail(self, method: str, error: Exception, context: Context) -> None:
        if isinstance(error, AdapterdError):
            # Details travel in trailing metadata, which clients cap (8 KiB by default).
            details = str(error)
            if len(details) > MAX_DETAILS:
                details = f"{details[:MAX_DETAILS]}... ({len(details)} characters)"
            await context.abort(status_code_for(error), details)
        correlation = uuid.uuid4().hex[:12]
        logger.error("%s failed [correlation id %s]", method, correlation, exc_info=error)
        await context.abort(
            grpc.StatusCode.INTERNAL, f"internal error (correlation id {correlation})"
        )

    def _record(self, method: str, began: float, context: Context, cancelled: bool) -> None:
        code = context.code()
        if cancelled:  # the client went away or its deadline passed: no status was sent
            name = "CANCELLED"
        else:
            name = code.name if isinstance(code, grpc.StatusCode) else "OK"
        self._metrics.grpc_requests.labels(method, name).inc()
        self._metrics.grpc_latency.labels(method).observe(time.monotonic() - began)

    def _around_unary(self, method: str, behavior: Behavior) -> Behavior:
        async def run(request: Any, context: Context) -> Any:
            began, cancelled = time.monotonic(), False
            try:
                return await behavior(_requests(request), context)
            except asyncio.CancelledError:
                cancelled = True
                raise
            except aio.AbortError:
                raise
            except Exception as error:
                await self._fail(method, error, context)
            finally:
                self._record(method, began, context, cancelled)

        return run

    def _around_stream(self, method: str, behavior: Behavior) -> Behavior:
        async def run(request: Any, context: Context) -> AsyncIterator[Any]:
            began, cancelled = time.monotonic(), False
            try:
                async for response in _stream(behavior, _requests(request), context):
                    yield response
            except asyncio.CancelledError:
                cancelled = True
                raise
            except aio.AbortError:
                raise
            except Exception as error:
                await self._fail(method, error, context)
            finally:
                self._record(method, began, context, cancelled)

        return run


class AuthInterceptor(aio.ServerInterceptor):
    """Authenticates the caller (with `tokens`; with none, every caller is ANONYMOUS_ADMIN),
    checks it against the method's row of the policy table (`service.authz`) and exposes it to
    servicers. Public methods (health, reflection) answer without credentials.

    Must run inside ErrorInterceptor so that a refusal is mapped and counted like any error.
    """

    def __init__(self, tokens: TokenTable | None) -> None:
        self._tokens = tokens

    async def intercept_service(
        self,
        continuation: Continuation,
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if access_of(method) is Access.PUBLIC:
            return handler
        metadata = dict(handler_call_details.invocation_metadata or ())
        authorization = metadata.get("authorization")
        if isinstance(authorization, bytes):  # only "-bin" keys carry bytes; be safe anyway
            authorization = authorization.decode(errors="replace")
        return _wrap_handler(
            handler,
            method,
            lambda _, behavior: self._unary(method, authorization, behavior),
            lambda _, behavior: self._stream(method, authorization, behavior),
        )

    def _caller(self, method: str, authorization: str | None) -> Principal:
        principal = ANONYMOUS_ADMIN
        if self._tokens is not None:
            principal = self._tokens.authenticate(authorization)
        authorize(method, principal)
        return principal

    def _unary(self, method: str, authorization: str | None, behavior: Behavior) -> Behavior:
        async def run(request: Any, context: Context) -> Any:
            current_principal.set(self._caller(method, authorization))
            return await behavior(request, context)

        return run

    def _stream(self, method: str, authorization: str | None, behavior: Behavior) -> Behavior:
        async def run(request: Any, context: Context) -> AsyncIterator[Any]:
            current_principal.set(self._caller(method, authorization))
            async for response in _stream(behavior, request, context):
                yield response

        return run
