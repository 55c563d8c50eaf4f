"""adapterd's Prometheus metrics, declared once on an injectable registry.

The page that `/metrics` serves holds this registry only: vLLM registers its own `vllm:*`
series on prometheus_client's global registry, and colons are reserved for recording rules.
Labels are bounded: RPC method names come from the protos, never from a request.
"""

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)

# Unary RPCs answer in milliseconds, streams and engine work take seconds.
RPC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    """Every metric adapterd exports; one instance per server."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.build_info = Info(
            "adapterd_build", "adapterd version and base model.", registry=self.registry
        )
        self.engine_ready = Gauge(
            "adapterd_engine_ready",
            "1 when the inference engine is warm and serving, else 0.",
            registry=self.registry,
        )
        self.engine_start_seconds = Gauge(
            "adapterd_engine_start_duration_seconds",
            "How long the last engine start took, warm-up included.",
            registry=self.registry,
        )
        self.grpc_requests = Counter(
            "adapterd_grpc_requests",
            "gRPC calls handled, by method and status code.",
            ["method", "code"],
            registry=self.registry,
        )
        self.grpc_latency = Histogram(
            "adapterd_grpc_request_duration_seconds",
            "Time from receiving a gRPC call to its status, by method.",
            ["method"],
            buckets=RPC_BUCKETS,
            registry=self.registry,
        )
