"""adapterd.v1.Capture: capture policies, captured requests, feedback and exports."""

import time
from typing import Any

from grpc import aio

from adapterd.v1 import capture_pb2, capture_pb2_grpc
from service.auth import current_principal
from service.capture.service import CaptureService
from service.grpc.convert import (
    capture_filter,
    capture_policy_to_proto,
    capture_to_proto,
    export_format,
    feedback_of,
)


class CaptureServicer(capture_pb2_grpc.CaptureServicer):
    """Thin: converts, calls the capture service with the caller, converts back."""

    def __init__(self, captures: CaptureService) -> None:
        self._captures = captures

    async def SetCapturePolicy(
        self, request: capture_pb2.SetCapturePolicyRequest, context: aio.ServicerContext[Any, Any]
    ) -> capture_pb2.CapturePolicy:
        policy = await self._captures.set_policy(
            current_principal.get(),
            request.target,
            request.rate,
            request.retention_seconds,
            request.schema_upload,
        )
        return capture_policy_to_proto(policy)

    async def ListCapturePolicies(
        self,
        request: capture_pb2.ListCapturePoliciesRequest,
        context: aio.ServicerContext[Any, Any],
    ) -> capture_pb2.ListCapturePoliciesResponse:
        policies = await self._captures.policies(current_principal.get())
        return capture_pb2.ListCapturePoliciesResponse(
            policies=[capture_policy_to_proto(p) for p in policies]
        )

    async def DeleteCapturePolicy(
        self,
        request: capture_pb2.DeleteCapturePolicyRequest,
        context: aio.ServicerContext[Any, Any],
    ) -> capture_pb2.DeleteCapturePolicyResponse:
        await self._captures.delete_policy(current_principal.get(), request.target)
        return capture_pb2.DeleteCapturePolicyResponse()

    async def GetCapture(
        self, request: capture_pb2.GetCaptureRequest, context: aio.ServicerContext[Any, Any]
    ) -> capture_pb2.CapturedRequest:
        capture = await self._captures.get(current_principal.get(), request.capture_id)
        return capture_to_proto(capture)

    async def ListCaptures(
        self, request: capture_pb2.ListCapturesRequest, context: aio.ServicerContext[Any, Any]
    ) -> capture_pb2.ListCapturesResponse:
        page = await self._captures.list(
            current_principal.get(),
            capture_filter(request.filter),
            request.page_size,
            request.page_token,
        )
        return capture_pb2.ListCapturesResponse(
            captures=[capture_to_proto(c) for c in page.captures],
            next_page_token=str(page.next_after) if page.next_after else "",
        )

    async def SubmitFeedback(
        self, request: capture_pb2.SubmitFeedbackRequest, context: aio.ServicerContext[Any, Any]
    ) -> capture_pb2.CapturedRequest:
        capture = await self._captures.feedback(
            current_principal.get(), request.capture_id, feedback_of(request, time.time())
        )
        return capture_to_proto(capture)

    async def ExportCaptures(
        self, request: capture_pb2.ExportCapturesRequest, context: aio.ServicerContext[Any, Any]
    ) -> capture_pb2.ExportCapturesResponse:
        record, rows, skipped = await self._captures.export(
            current_principal.get(),
            capture_filter(request.filter),
            export_format(request.format),
            min_rating=request.min_rating,
            corrections=request.corrections,
        )
        return capture_pb2.ExportCapturesResponse(upload_id=record.id, rows=rows, skipped=skipped)
