"""adapterd.v1.Adapters: register, list, pin, alias and unload adapters."""

from typing import Any

from grpc import aio

from adapterd.v1 import adapters_pb2, adapters_pb2_grpc
from service.adapters.manager import AdapterManager
from service.auth import Role, current_principal
from service.grpc.convert import adapter_to_proto


class AdaptersServicer(adapters_pb2_grpc.AdaptersServicer):
    """Thin: checks the caller's role, calls the manager, converts."""

    def __init__(self, manager: AdapterManager) -> None:
        self._manager = manager

    def _info(self, ref: str) -> adapters_pb2.AdapterInfo:
        entry = self._manager.registry.get(ref, "adapter")
        return adapter_to_proto(entry, self._manager.registry.aliases_of(entry))

    async def LoadAdapter(
        self, request: adapters_pb2.LoadAdapterRequest, context: aio.ServicerContext[Any, Any]
    ) -> adapters_pb2.LoadAdapterResponse:
        current_principal.get().require(Role.ADMIN)
        entry = await self._manager.load(request.name, request.path, request.pin)
        return adapters_pb2.LoadAdapterResponse(adapter=self._info(entry.ref))

    async def UnloadAdapter(
        self, request: adapters_pb2.UnloadAdapterRequest, context: aio.ServicerContext[Any, Any]
    ) -> adapters_pb2.UnloadAdapterResponse:
        current_principal.get().require(Role.ADMIN)
        return adapters_pb2.UnloadAdapterResponse(refs=await self._manager.unload(request.adapter))

    async def ListAdapters(
        self, request: adapters_pb2.ListAdaptersRequest, context: aio.ServicerContext[Any, Any]
    ) -> adapters_pb2.ListAdaptersResponse:
        registry = self._manager.registry
        entries = sorted(registry.versions.values(), key=lambda v: (v.name, v.version))
        return adapters_pb2.ListAdaptersResponse(
            adapters=[adapter_to_proto(v, registry.aliases_of(v)) for v in entries],
            engine_capacity=self._manager.capacity,
        )

    async def PinAdapter(
        self, request: adapters_pb2.PinAdapterRequest, context: aio.ServicerContext[Any, Any]
    ) -> adapters_pb2.PinAdapterResponse:
        current_principal.get().require(Role.ADMIN)
        entry = await self._manager.pin(request.adapter, request.pinned)
        return adapters_pb2.PinAdapterResponse(adapter=self._info(entry.ref))

    async def SetAlias(
        self, request: adapters_pb2.SetAliasRequest, context: aio.ServicerContext[Any, Any]
    ) -> adapters_pb2.SetAliasResponse:
        current_principal.get().require(Role.ADMIN)
        previous = await self._manager.set_alias(request.alias, request.target)
        return adapters_pb2.SetAliasResponse(target=request.target, previous=previous)
