"""The composition root with a fake engine: health, errors, auth and shutdown over real gRPC."""

import asyncio
import json
import subprocess

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import ValidationError

from adapterd.v1 import common_pb2, server_pb2, server_pb2_grpc
from service.app import App
from service.auth import TokenTable
from service.basemodel import BaseModel
from service.grpc.server import build_grpc_server
from service.inference.engine import EngineState
from service.inference.fake import FakeEngine
from service.metrics import Metrics
from service.settings import ServerSettings
from tests.support import free_port
from trainer.fingerprint import ModelFingerprint

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
TOKEN = "t" * 24


@pytest.fixture
def make_app(tmp_path, tiny_model_dir):
    base = BaseModel(
        "tiny", tiny_model_dir, ModelFingerprint("w" * 64, "c" * 64, "LlamaForCausalLM", 7)
    )

    def make(engine, tokens=None, **settings):
        settings = ServerSettings(
            data_dir=tmp_path,
            port=free_port(),
            metrics_port=free_port(),
            http_port=free_port(),
            drain_grace_seconds=1,
            **settings,
        )
        return App(settings, base, engine, tokens, Metrics())

    return make


async def health(channel, service=""):
    stub = health_pb2_grpc.HealthStub(channel)
    return (await stub.Check(health_pb2.HealthCheckRequest(service=service))).status


async def wait_for(predicate, seconds=5.0):
    # Polling is the point here: the engine state has no event to wait on from outside.
    async with asyncio.timeout(seconds):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def test_health_is_not_serving_until_the_engine_is_warm(make_app):
    app = make_app(FakeEngine(start_delay=0.3))
    await app.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.settings.port}") as channel:
        assert await health(channel) == NOT_SERVING
        assert await health(channel, "adapterd.v1.Server") == SERVING  # liveness
        await wait_for(lambda: app.lifecycle.state is EngineState.READY)
        assert await health(channel) == SERVING
        info = await server_pb2_grpc.ServerStub(channel).GetServerInfo(
            server_pb2.GetServerInfoRequest()
        )
        assert info.engine_state == server_pb2.ENGINE_STATE_READY
        assert info.base_model.weights_sha256 == "w" * 64
        assert info.caller_role == common_pb2.ROLE_ADMIN and not info.auth_enabled
    await app.stop()


async def test_failed_engine_start_keeps_health_not_serving(make_app):
    app = make_app(FakeEngine(fail_start=True))
    await app.start()
    await wait_for(lambda: app.lifecycle.state is EngineState.FAILED)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.settings.port}") as channel:
        assert await health(channel) == NOT_SERVING
    assert app.metrics.engine_ready._value.get() == 0
    await app.stop()


async def test_stop_turns_health_off_and_shuts_the_engine_down(make_app):
    engine = FakeEngine()
    app = make_app(engine)
    await app.start()
    await wait_for(lambda: app.lifecycle.state is EngineState.READY)
    await app.stop()
    assert engine.shutdown_calls == 1
    assert app.lifecycle.state is EngineState.STOPPING
    assert app.metrics.engine_ready._value.get() == 0


async def test_unexpected_errors_become_internal_with_a_correlation_id(make_app, caplog):
    app = make_app(FakeEngine())

    def broken():
        raise KeyError("secret internals")

    app.grpc = build_grpc_server(
        app.metrics,
        None,
        app.health,
        broken,
        app.generator,
        app.adapters,
        app.imports,
        app.jobs,
        app.uploads,
        app.captures,
        64,
    )
    await app.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.settings.port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await server_pb2_grpc.ServerStub(channel).GetServerInfo(
                server_pb2.GetServerInfoRequest()
            )
    await app.stop()
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in caught.value.details()
    correlation = caught.value.details().split("correlation id ")[1].rstrip(")")
    assert any(correlation in record.getMessage() for record in caplog.records)
    counted = app.metrics.grpc_requests.labels("/adapterd.v1.Server/GetServerInfo", "INTERNAL")
    assert counted._value.get() == 1


async def test_auth_refuses_missing_and_unknown_tokens_but_not_health(make_app):
    tokens = TokenTable.parse(json.dumps([{"token": TOKEN, "tenant": "acme", "role": "user"}]), "t")
    app = make_app(FakeEngine(), tokens)
    await app.start()
    request = server_pb2.GetServerInfoRequest()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.settings.port}") as channel:
        stub = server_pb2_grpc.ServerStub(channel)
        for metadata in [(), (("authorization", "Bearer " + "x" * 24),)]:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.GetServerInfo(request, metadata=metadata)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        info = await stub.GetServerInfo(request, metadata=(("authorization", f"Bearer {TOKEN}"),))
        assert (info.caller_tenant, info.caller_role) == ("acme", common_pb2.ROLE_USER)
        assert info.auth_enabled
        assert await health(channel, "adapterd.v1.Server") == SERVING
    await app.stop()


async def test_a_call_the_client_cancels_is_counted_as_cancelled(make_app):
    app = make_app(FakeEngine())
    await app.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.settings.port}") as channel:
        call = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
        await call.read()  # the current status; the stream then waits for changes
        call.cancel()
    counted = app.metrics.grpc_requests.labels("/grpc.health.v1.Health/Watch", "CANCELLED")
    await wait_for(lambda: counted._value.get() == 1)
    assert app.metrics.grpc_requests.labels("/grpc.health.v1.Health/Watch", "OK")._value.get() == 0
    await app.stop()


@pytest.fixture
def self_signed(tmp_path):
    """A self-signed certificate for localhost and 127.0.0.1, and its key."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_with_a_certificate_the_server_speaks_tls_only(make_app, self_signed):
    cert, key = self_signed
    app = make_app(FakeEngine(), tls_cert_file=cert, tls_key_file=key)
    await app.start()
    target = f"127.0.0.1:{app.settings.port}"
    credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
    request = server_pb2.GetServerInfoRequest()
    async with grpc.aio.secure_channel(target, credentials) as channel:
        info = await server_pb2_grpc.ServerStub(channel).GetServerInfo(request)
        assert info.version
    async with grpc.aio.insecure_channel(target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await server_pb2_grpc.ServerStub(channel).GetServerInfo(request, timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    await app.stop()


def test_a_certificate_without_its_key_is_a_settings_error(tmp_path):
    with pytest.raises(ValidationError, match="--tls-cert-file and --tls-key-file go together"):
        ServerSettings(data_dir=tmp_path, tls_cert_file=tmp_path / "cert.pem")


async def test_while_the_engine_is_lent_to_a_trainer_it_sleeps_and_readiness_is_off(make_app):
    engine = FakeEngine()
    app = make_app(engine, engine_sleep_while_training=True)
    await app.start()
    await wait_for(lambda: app.lifecycle.state is EngineState.READY)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.settings.port}") as channel:
        async with app.lifecycle.lent():  # what the runner holds around a trainer
            assert engine.asleep and app.lifecycle.state is EngineState.SLEEPING
            assert await health(channel) == NOT_SERVING
            assert await health(channel, "adapterd.v1.Server") == SERVING  # alive, not killed
            info = await server_pb2_grpc.ServerStub(channel).GetServerInfo(
                server_pb2.GetServerInfoRequest()
            )
            assert info.engine_state == server_pb2.ENGINE_STATE_SLEEPING
        assert not engine.asleep and app.lifecycle.state is EngineState.READY
        assert await health(channel) == SERVING
    await app.stop()


def test_sleeping_while_training_is_refused_without_a_cuda_gpu(tmp_path):
    from service.app import build_app
    from service.errors import ConfigError

    settings = ServerSettings(data_dir=tmp_path, engine_sleep_while_training=True)
    with pytest.raises(ConfigError, match="--engine-sleep-while-training: vLLM's sleep mode"):
        build_app(settings)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field of the protobuf wire format."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def nested_struct(depth: int) -> bytes:
    """A Struct {"a": {"a": ...}} `depth` deep, encoded by hand: protobuf's own encoder refuses
    to go past its recursion limit, and the point is what the server does with one that does."""
    struct = b""
    for _ in range(depth):
        value = _field(5, struct)  # Value.struct_value
        struct = _field(1, _field(1, b"a") + _field(2, value))  # Struct.fields["a"]
    return struct


async def test_a_request_nested_past_protobufs_limit_is_invalid_argument(make_app):
    app = make_app(FakeEngine())
    await app.start()
    request = _field(1, _field(4, nested_struct(200)))  # SubmitJobRequest.train.training
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.settings.port}") as channel:
        call = channel.unary_unary("/adapterd.v1.Jobs/SubmitJob")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(request)
        assert await health(channel, "adapterd.v1.Server") == SERVING
    await app.stop()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert "nested" in caught.value.details()
