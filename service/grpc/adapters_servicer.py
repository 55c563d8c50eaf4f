"""adapterd.v1.Adapters: register, list, pin, alias and unload adapters."""

from typing import Any

from grpc import aio

from adapterd.v1 import adapters_pb2, adapters_pb2_grpc
from service.adapters.imports import AdapterImports
from service.adapters.manager import AdapterManager
from service.auth import current_principal
from service.grpc.convert import adapter_to_proto, download_of


class AdaptersServicer(adapters_pb2_grpc.AdaptersServicer):
    """Thin: calls the manager with the caller (who may call what: `service.authz`), converts."""

    def __init__(self, manager: AdapterManager, imports: AdapterImports) -> None:
        self._manager = manager
        self._imports = imports

    async def LoadAdapter(
        self, request: adapters_pb2.LoadAdapterRequest, context: aio.ServicerContext[Any, Any]
    ) -> adapters_pb2.LoadAdapterResponse:
        view = await self._manager.load_for(
            current_principal.get(), request.name, request.path, request.pin
        )
        return adapters_pb2.LoadAdapterResponse(adapter=adapter_to_proto(view))

    async def UnloadAdapter(
        self, request: adapters_pb2.UnloadAdapterRequest, context: aio.ServicerContext[Any, Any]
    ) -> adapters_pb2.UnloadAdapterResponse:
        refs = await self._manager.unload_for(current_principal.get(), request.adapter)
        return adapters_pb2.UnloadAdapterResponse(refs=refs)

    async def ListAdapters(
        self, request: adapters_pb2.ListAdaptersRequest, context: aio.ServicerContext[Any, Any]
    ) -> adapters_pb2.ListAdaptersResponse:
        views = self._manager.visible(current_principal.get())
        return adapters_pb2.ListAdaptersResponse(
            adapters=[adapter_to_proto(v) for v in views], engine_capacity=self._manager.capacity
        )

    async def PinAdapter(
        self, request: adapters_pb2.PinAdapterRequest, context: aio.ServicerContext[Any, Any]
    ) -> adapters_pb2.PinAdapterResponse:
        view = await self._manager.pin_for(current_principal.get(), request.adapter, request.pinned)
        return adapters_pb2.PinAdapterResponse(adapter=adapter_to_proto(view))

    async def SetAlias(
        self, request: adapters_pb2.SetAliasRequest, context: aio.ServicerContext[Any, Any]
    ) -> adapters_pb2.SetAliasResponse:
        target, previous = await self._manager.set_alias_for(
            current_principal.get(), request.alias, request.target
        )
        return adapters_pb2.SetAliasResponse(target=target, previous=previous)

    async def ImportAdapter(
        self, request: adapters_pb2.ImportAdapterRequest, context: aio.ServicerContext[Any, Any]
    ) -> adapters_pb2.ImportAdapterResponse:
        principal = current_principal.get()
        if request.WhichOneof("archive") == "download":
            download = download_of(request.download)
            view = await self._imports.import_download(principal, request.name, download)
        else:
            view = await self._imports.import_for(principal, request.name, request.upload_id)
        return adapters_pb2.ImportAdapterResponse(adapter=adapter_to_proto(view))
