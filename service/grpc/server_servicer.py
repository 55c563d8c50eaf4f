"""adapterd.v1.Server: describes the running server."""

from collections.abc import Callable
from typing import Any

from grpc import aio

from adapterd.v1 import server_pb2, server_pb2_grpc
from service.auth import current_principal
from service.grpc.convert import server_info_to_proto
from service.serverinfo import ServerInfo


class ServerServicer(server_pb2_grpc.ServerServicer):
    """Thin: asks the app for a snapshot and converts it."""

    def __init__(self, describe: Callable[[], ServerInfo]) -> None:
        self._describe = describe

    async def GetServerInfo(
        self, request: server_pb2.GetServerInfoRequest, context: aio.ServicerContext[Any, Any]
    ) -> server_pb2.GetServerInfoResponse:
        return server_info_to_proto(self._describe(), current_principal.get())
