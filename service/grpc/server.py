"""Assembles the grpc.aio server: interceptors, servicers, health and reflection."""

from collections.abc import Callable

import grpc
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from adapterd.v1 import (
    adapters_pb2,
    adapters_pb2_grpc,
    capture_pb2,
    capture_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    server_pb2,
    server_pb2_grpc,
)
from service.adapters.imports import AdapterImports
from service.adapters.manager import AdapterManager
from service.auth import TokenTable
from service.capture.service import CaptureService
from service.errors import ConfigError
from service.grpc.adapters_servicer import AdaptersServicer
from service.grpc.capture_servicer import CaptureServicer
from service.grpc.health import HealthPublisher
from service.grpc.inference_servicer import InferenceServicer
from service.grpc.interceptors import AuthInterceptor, ErrorInterceptor
from service.grpc.jobs_servicer import JobsServicer
from service.grpc.server_servicer import ServerServicer
from service.inference.generation import Generator
from service.jobs.service import JobService
from service.metrics import Metrics
from service.serverinfo import ServerInfo
from service.uploads import UploadService

SERVER_SERVICE = server_pb2.DESCRIPTOR.services_by_name["Server"].full_name
INFERENCE_SERVICE = inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name
ADAPTERS_SERVICE = adapters_pb2.DESCRIPTOR.services_by_name["Adapters"].full_name
JOBS_SERVICE = jobs_pb2.DESCRIPTOR.services_by_name["Jobs"].full_name
CAPTURE_SERVICE = capture_pb2.DESCRIPTOR.services_by_name["Capture"].full_name
# Services that serve as soon as the process does, and those that need a warm engine.
LIVE_SERVICES = (SERVER_SERVICE, JOBS_SERVICE, CAPTURE_SERVICE)
ENGINE_BACKED_SERVICES = (INFERENCE_SERVICE, ADAPTERS_SERVICE)

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
"""Far above an upload chunk (the client sends 1 MiB); a bigger message is refused by grpc."""
MAX_CONCURRENT_STREAMS = 128
"""Per client connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS)."""


def build_grpc_server(  # noqa: PLR0917 (the parts it assembles)
    metrics: Metrics,
    tokens: TokenTable | None,
    health: HealthPublisher,
    describe: Callable[[], ServerInfo],
    generator: Generator,
    adapters: AdapterManager,
    imports: AdapterImports,
    jobs: JobService,
    uploads: UploadService,
    captures: CaptureService,
    max_concurrent_rpcs: int,
) -> aio.Server:
    """Creates the server with every adapterd service registered; not yet bound or started.
    Past `max_concurrent_rpcs` calls at once, grpc answers RESOURCE_EXHAUSTED by itself."""
    server = aio.server(
        interceptors=[ErrorInterceptor(metrics), AuthInterceptor(tokens)],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_concurrent_streams", MAX_CONCURRENT_STREAMS),
            ("grpc.so_reuseport", 0),
        ],
        maximum_concurrent_rpcs=max_concurrent_rpcs,
    )
    server_pb2_grpc.add_ServerServicer_to_server(ServerServicer(describe), server)
    inference_pb2_grpc.add_InferenceServicer_to_server(InferenceServicer(generator), server)
    adapters_pb2_grpc.add_AdaptersServicer_to_server(AdaptersServicer(adapters, imports), server)
    jobs_pb2_grpc.add_JobsServicer_to_server(JobsServicer(jobs, uploads), server)
    capture_pb2_grpc.add_CaptureServicer_to_server(CaptureServicer(captures), server)
    health_pb2_grpc.add_HealthServicer_to_server(health.servicer, server)
    reflection.enable_server_reflection(
        (
            SERVER_SERVICE,
            INFERENCE_SERVICE,
            ADAPTERS_SERVICE,
            JOBS_SERVICE,
            CAPTURE_SERVICE,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    return server


def bind(server: aio.Server, host: str, port: int, tls: tuple[bytes, bytes] | None = None) -> None:
    """Binds the server's port: TLS with `tls` = (certificate chain PEM, private key PEM),
    else plaintext.

    Raises:
        ConfigError: naming --port when the address cannot be bound (in use, bad host).
    """
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        if tls is None:
            server.add_insecure_port(address)
        else:
            server.add_secure_port(address, grpc.ssl_server_credentials([(tls[1], tls[0])]))
    except RuntimeError:
        raise ConfigError(
            f"--port {port}: cannot listen on {address} (in use, or --host {host!r} is not "
            "an address of this machine)"
        ) from None
