"""The client library over two real gRPC servers: round_robin spreads calls, pick_first not."""

from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from service.client.api import Client


class CountingHealth(health.HealthServicer):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.set("", health_pb2.HealthCheckResponse.SERVING)

    def Check(self, request, context):  # noqa: N802 (gRPC's method name)
        self.calls += 1
        return super().Check(request, context)


@pytest.fixture
def two_servers():
    started = []
    for _ in range(2):
        server = grpc.server(futures.ThreadPoolExecutor(2))
        servicer = CountingHealth()
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        started.append((server, servicer, port))
    yield started
    for server, _, _ in started:
        server.stop(None)


def calls_per_server(servers, policy: str) -> list[int]:
    """Health checks each server answered of 10, once every subchannel had time to connect."""
    target = "ipv4:" + ",".join(f"127.0.0.1:{port}" for _, _, port in servers)
    with Client(target, timeout=10, load_balancing=policy) as client:
        client.wait_until_serving(timeout=10)
        for _ in range(20):
            client.health()
        for _, servicer, _ in servers:
            servicer.calls = 0
        assert [client.health() for _ in range(10)] == ["SERVING"] * 10
    return sorted(servicer.calls for _, servicer, _ in servers)


def test_round_robin_spreads_calls_over_every_address(two_servers):
    fewer, more = calls_per_server(two_servers, "round_robin")
    assert fewer + more == 10 and fewer >= 4


def test_pick_first_sends_every_call_to_one_address(two_servers):
    assert calls_per_server(two_servers, "pick_first") == [0, 10]
