"""A thin synchronous client over adapterd's gRPC API, for adapterctl, the demo and tests."""

import time
from collections.abc import Callable
from types import TracebackType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from adapterd.v1 import server_pb2, server_pb2_grpc

STATUS_NAMES = health_pb2.HealthCheckResponse.ServingStatus.Name


class Client:
    """One channel to a server, with the caller's bearer token attached to every call."""

    def __init__(self, target: str, token: str | None = None, timeout: float = 30.0) -> None:
        self._channel = grpc.insecure_channel(target)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._timeout = timeout
        self.server = server_pb2_grpc.ServerStub(self._channel)
        self.health_stub = health_pb2_grpc.HealthStub(self._channel)

    def __enter__(self) -> "Client":
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Closes the channel."""
        self._channel.close()

    def server_info(self) -> server_pb2.GetServerInfoResponse:
        """GetServerInfo."""
        response: server_pb2.GetServerInfoResponse = self.server.GetServerInfo(
            server_pb2.GetServerInfoRequest(), metadata=self._metadata, timeout=self._timeout
        )
        return response

    def health(self, service: str = "") -> str:
        """The health status name of `service` ("" = overall), e.g. "SERVING"."""
        response = self.health_stub.Check(
            health_pb2.HealthCheckRequest(service=service), timeout=self._timeout
        )
        return str(STATUS_NAMES(response.status))

    def wait_until_serving(
        self,
        service: str = "",
        timeout: float = 300.0,
        give_up: Callable[[], bool] = lambda: False,
    ) -> list[str]:
        """Polls health until `service` is SERVING; returns the distinct statuses seen, in order.

        Args:
            service: health service name; "" is the overall status.
            timeout: seconds to wait in all.
            give_up: checked before each poll; True (say, the server process exited) stops it.

        Raises:
            TimeoutError: when it is not SERVING within `timeout` seconds.
            ConnectionAbortedError: when `give_up` returned True.
        """
        seen: list[str] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if give_up():
                raise ConnectionAbortedError(f"gave up waiting for {service or 'server'}: {seen}")
            try:
                status = self.health(service)
            except grpc.RpcError as exc:
                # Not listening yet, or too busy starting to answer in time.
                if exc.code() not in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                ):
                    raise
                status = "UNREACHABLE"
            if not seen or seen[-1] != status:
                seen.append(status)
            if status == "SERVING":
                return seen
            time.sleep(0.25)
        raise TimeoutError(f"{service or 'server'} not SERVING after {timeout:.0f} s: {seen}")
