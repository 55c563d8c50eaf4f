"""Conversions between domain objects and adapterd.v1 protobuf messages, in one place."""

from adapterd.v1 import common_pb2, server_pb2
from service.auth import Principal, Role
from service.basemodel import BaseModel
from service.inference.engine import EngineState
from service.serverinfo import ServerInfo

_ENGINE_STATES = {
    EngineState.STARTING: server_pb2.ENGINE_STATE_STARTING,
    EngineState.READY: server_pb2.ENGINE_STATE_READY,
    EngineState.FAILED: server_pb2.ENGINE_STATE_FAILED,
    EngineState.STOPPING: server_pb2.ENGINE_STATE_STOPPING,
}

_ROLES = {Role.USER: common_pb2.ROLE_USER, Role.ADMIN: common_pb2.ROLE_ADMIN}


def base_model_to_proto(model: BaseModel) -> common_pb2.BaseModelInfo:
    """BaseModel -> adapterd.v1.BaseModelInfo."""
    return common_pb2.BaseModelInfo(
        name=model.name,
        weights_sha256=model.fingerprint.weights_sha256,
        chat_template_sha256=model.fingerprint.chat_template_sha256,
        parameters=model.fingerprint.parameters,
        architecture=model.fingerprint.architecture,
    )


def server_info_to_proto(info: ServerInfo, caller: Principal) -> server_pb2.GetServerInfoResponse:
    """ServerInfo and the caller -> adapterd.v1.GetServerInfoResponse."""
    return server_pb2.GetServerInfoResponse(
        version=info.version,
        base_model=base_model_to_proto(info.base_model),
        engine_state=_ENGINE_STATES[info.engine_state],
        max_loras=info.max_loras,
        max_lora_rank=info.max_lora_rank,
        libraries=[common_pb2.LibraryVersion(name=n, version=v) for n, v in info.libraries],
        caller_tenant=caller.tenant,
        caller_role=_ROLES[caller.role],
        auth_enabled=info.auth_enabled,
    )
