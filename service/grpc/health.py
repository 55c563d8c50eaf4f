"""Publishes adapterd's state on the standard grpc.health.v1 service.

Kubernetes probes ask it: a liveness probe asks `adapterd.v1.Server` (SERVING as soon as the
process listens, so warm-up never gets a pod killed), readiness asks the overall status ""
or an engine-backed service (NOT_SERVING until the engine is warm).
"""

from collections.abc import Iterable

from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio

from service.inference.engine import EngineState

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
OVERALL = ""


class HealthPublisher:
    """Keeps the health servicer's statuses in step with the engine's state."""

    def __init__(self, live: Iterable[str], engine_backed: Iterable[str]) -> None:
        """Args:
        live: services that serve whenever the process does.
        engine_backed: services that serve only while the engine is ready; the overall
            status "" is always among them.
        """
        self.servicer = health_aio.HealthServicer()
        self._live = tuple(live)
        self._engine_backed = (OVERALL, *engine_backed)

    async def start(self) -> None:
        """Publishes the initial statuses: live services SERVING, the rest NOT_SERVING."""
        for name in self._live:
            await self.servicer.set(name, SERVING)
        for name in self._engine_backed:
            await self.servicer.set(name, NOT_SERVING)

    async def on_engine_state(self, state: EngineState) -> None:
        """Engine-backed services follow the engine: SERVING exactly when it is READY."""
        status = SERVING if state is EngineState.READY else NOT_SERVING
        for name in self._engine_backed:
            await self.servicer.set(name, status)

    async def not_alive(self) -> None:
        """Liveness NOT_SERVING too: the engine will not come back in this process, so
        Kubernetes should restart the pod."""
        for name in self._live:
            await self.servicer.set(name, NOT_SERVING)

    async def shutdown(self) -> None:
        """Every service NOT_SERVING from now on, whatever else is reported later."""
        await self.servicer.enter_graceful_shutdown()
