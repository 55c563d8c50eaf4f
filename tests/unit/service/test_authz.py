"""The authorization table covers every RPC and route; tenant rights on names."""

import importlib
import pkgutil

import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

import adapterd.v1
from service.auth import Principal, Role
from service.authz import (
    POLICY,
    Access,
    authorize,
    can_read,
    qualify_read,
    qualify_write,
)
from service.errors import NotFoundError, PermissionDeniedError, UnauthenticatedError
from service.http.openai_api import build_openai_app, route_keys

ADMIN = Principal("ops", Role.ADMIN)
ACME = Principal("acme", Role.USER)


def grpc_methods() -> set[str]:
    """Every method of every service in adapterd's generated code, health and reflection."""
    files = [
        importlib.import_module(f"adapterd.v1.{m.name}").DESCRIPTOR
        for m in pkgutil.iter_modules(adapterd.v1.__path__)
        if m.name.endswith("_pb2")
    ]
    files += [health_pb2.DESCRIPTOR, reflection_pb2.DESCRIPTOR]
    return {
        f"/{service.full_name}/{method.name}"
        for file in files
        for service in file.services_by_name.values()
        for method in service.methods
    }


def http_routes() -> set[str]:
    app = build_openai_app(
        generator=None, adapters=None, captures=None, tokens=None, base_model="m", metrics=None,
        max_body_bytes=1,
    )  # type: ignore[arg-type]  # fmt: skip
    return set(route_keys(app))


def test_every_rpc_and_route_has_a_row_and_every_row_is_served():
    served = grpc_methods() | http_routes()
    assert len(served) >= 32
    assert served - set(POLICY) == set(), "an RPC or route without a row in service.authz.POLICY"
    stale = set(POLICY) - served - {"/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"}
    assert stale == set(), "a row for nothing the server serves"


def test_authorize_applies_the_row_and_refuses_what_has_none():
    authorize("/grpc.health.v1.Health/Check", None)
    authorize("/adapterd.v1.Jobs/SubmitJob", ACME)
    authorize("/adapterd.v1.Adapters/LoadAdapter", ADMIN)
    with pytest.raises(UnauthenticatedError):
        authorize("/adapterd.v1.Jobs/SubmitJob", None)
    with pytest.raises(PermissionDeniedError, match="needs the admin role"):
        authorize("/adapterd.v1.Adapters/LoadAdapter", ACME)
    with pytest.raises(PermissionDeniedError, match="not open to any caller"):
        authorize("/adapterd.v1.Jobs/DeleteEverything", ADMIN)
    assert {POLICY[k] for k in POLICY if k.startswith("/grpc.")} == {Access.PUBLIC}


def test_users_read_their_own_and_shared_and_change_only_their_own():
    assert can_read(ACME, "acme") and can_read(ACME, "shared") and not can_read(ACME, "globex")
    assert can_read(ADMIN, "globex")
    assert qualify_read(ACME, "bot@2", "adapter") == "acme/bot@2"
    assert qualify_read(ACME, "shared/bot", "adapter") == "shared/bot"
    with pytest.raises(NotFoundError, match="adapter: no adapter or alias 'globex/bot' is"):
        qualify_read(ACME, "globex/bot", "adapter")
    assert qualify_write(ACME, "bot", "train.adapter_name") == "acme/bot"
    for other in ("globex/bot", "shared/bot"):
        with pytest.raises(PermissionDeniedError, match=r"train\.adapter_name: .* own tenant"):
            qualify_write(ACME, other, "train.adapter_name")
    assert qualify_write(ADMIN, "shared/bot", "name") == "shared/bot"
