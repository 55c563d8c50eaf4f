"""What every adapterd process does alike (`serve` and `worker`): its /metrics endpoint, and
running until SIGTERM or SIGINT."""

import asyncio
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server

from service.errors import ConfigError


class MetricsEndpoint:
    """Prometheus' /metrics page of one registry, served from its own thread."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self._registry, self._host, self._port = registry, host, port
        self._server: Any = None

    def start(self) -> None:
        """Raises ConfigError naming --metrics-port when the port cannot be bound."""
        try:
            self._server, _ = start_http_server(self._port, self._host, registry=self._registry)
        except OSError as exc:
            raise ConfigError(
                f"--metrics-port {self._port}: cannot listen on {self._host}:{self._port} "
                f"({exc.strerror})"
            ) from None

    async def stop(self) -> None:
        """Stops serving and frees the port (shutdown() waits for the thread's poll loop)."""
        if self._server is not None:
            await asyncio.to_thread(self._server.shutdown)
            self._server.server_close()
            self._server = None


async def run_until_signal(
    start: Callable[[], Awaitable[None]], stop: Callable[[], Awaitable[None]]
) -> None:
    """Runs `start`, then waits for SIGTERM or SIGINT, then runs `stop` (also after a failure)."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await start()
    try:
        await stopping.wait()
    finally:
        await stop()
