"""adapterd.v1.Inference: completions from the base model or an adapter."""

from collections.abc import AsyncIterator
from typing import Any

from grpc import aio

from adapterd.v1 import inference_pb2, inference_pb2_grpc
from service.auth import current_principal
from service.grpc.convert import generate_params, generate_response, stream_response
from service.inference.generation import Generator


class InferenceServicer(inference_pb2_grpc.InferenceServicer):
    """Thin: converts, calls the generator, converts back."""

    def __init__(self, generator: Generator) -> None:
        self._generator = generator

    async def Generate(
        self, request: inference_pb2.GenerateRequest, context: aio.ServicerContext[Any, Any]
    ) -> inference_pb2.GenerateResponse:
        deltas = [
            d
            async for d in self._generator.stream(generate_params(request), current_principal.get())
        ]
        return generate_response(deltas)

    async def GenerateStream(
        self, request: inference_pb2.GenerateRequest, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[inference_pb2.GenerateStreamResponse]:
        async for delta in self._generator.stream(
            generate_params(request), current_principal.get()
        ):
            yield stream_response(delta)
