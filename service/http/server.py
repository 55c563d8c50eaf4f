"""Runs the HTTP API with uvicorn on the server's event loop, beside gRPC."""

import asyncio
import contextlib
import socket
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI

from service.errors import ConfigError


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """The App handles SIGTERM for every server it runs: uvicorn must not take it."""
        yield


class HttpServer:
    """uvicorn serving `app` on `host:port`."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        self._host, self._port = host, port
        config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
        self._server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Binds the port and starts serving in the background.

        Raises:
            ConfigError: naming --http-port when the port cannot be bound.
        """
        sock = socket.socket(socket.AF_INET6 if ":" in self._host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self._host, self._port))
        except OSError as exc:
            sock.close()
            raise ConfigError(
                f"--http-port {self._port}: cannot listen on {self._host}:{self._port} "
                f"({exc.strerror})"
            ) from None
        self._task = asyncio.create_task(self._server.serve([sock]), name="http")

    async def stop(self, grace: float) -> None:
        """Stops taking requests; lets running ones finish within `grace` seconds."""
        if self._task is None:
            return
        self._server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), grace)
        except TimeoutError:
            self._server.force_exit = True
            await self._task
