"""adapterd.v1.Jobs: datasets, and fine-tuning jobs submitted, followed and cancelled."""

from collections.abc import AsyncIterator
from typing import Any

from grpc import aio

from adapterd.v1 import jobs_pb2, jobs_pb2_grpc
from service.auth import current_principal
from service.grpc.convert import (
    adapter_to_proto,
    checkpoint_to_proto,
    evaluation_fields,
    event_to_proto,
    job_filters,
    job_to_proto,
    message_fields,
    upload_kind,
    upload_parts,
    upload_to_proto,
)
from service.jobs.service import JobService
from service.uploads import Announced, UploadKind, UploadService


class JobsServicer(jobs_pb2_grpc.JobsServicer):
    """Thin: converts, calls the job service with the caller, converts back."""

    def __init__(self, jobs: JobService, uploads: UploadService) -> None:
        self._jobs = jobs
        self._uploads = uploads

    async def UploadDataset(
        self,
        request_iterator: AsyncIterator[jobs_pb2.UploadDatasetRequest],
        context: aio.ServicerContext[Any, Any],
    ) -> jobs_pb2.UploadDatasetResponse:
        header, chunks = await upload_parts(request_iterator)
        announced = Announced(UploadKind.DATASET, header.file_name, header.size, header.sha256)
        record, _ = await self._uploads.upload(current_principal.get(), announced, chunks)
        return jobs_pb2.UploadDatasetResponse(
            dataset_id=record.id, size=record.size, sha256=record.sha256
        )

    async def Upload(
        self,
        request_iterator: AsyncIterator[jobs_pb2.UploadRequest],
        context: aio.ServicerContext[Any, Any],
    ) -> jobs_pb2.UploadResponse:
        header, chunks = await upload_parts(request_iterator)
        announced = Announced(
            upload_kind(header.kind), header.file_name, header.size, header.sha256
        )
        record, total = await self._uploads.upload(current_principal.get(), announced, chunks)
        return upload_to_proto(record, total)

    async def ValidateDataset(
        self, request: jobs_pb2.ValidateDatasetRequest, context: aio.ServicerContext[Any, Any]
    ) -> jobs_pb2.ValidateDatasetResponse:
        fields = message_fields(request.data)
        report = await self._jobs.validate(current_principal.get(), fields, request.method)
        response = jobs_pb2.ValidateDatasetResponse(valid=bool(report.get("ok")))
        response.report.update(report)
        return response

    async def SubmitJob(
        self, request: jobs_pb2.SubmitJobRequest, context: aio.ServicerContext[Any, Any]
    ) -> jobs_pb2.Job:
        spec = message_fields(request.train)
        if request.train.HasField("evaluation"):
            spec["evaluation"] = evaluation_fields(request.train.evaluation)
        job = await self._jobs.submit(
            current_principal.get(), spec, request.request_id, request.priority
        )
        return job_to_proto(job)

    async def GetJob(
        self, request: jobs_pb2.GetJobRequest, context: aio.ServicerContext[Any, Any]
    ) -> jobs_pb2.Job:
        return job_to_proto(await self._jobs.get(current_principal.get(), request.job_id))

    async def ListJobs(
        self, request: jobs_pb2.ListJobsRequest, context: aio.ServicerContext[Any, Any]
    ) -> jobs_pb2.ListJobsResponse:
        states, kinds = job_filters(request)
        page = await self._jobs.list(
            current_principal.get(), states, kinds, request.page_size, request.page_token
        )
        return jobs_pb2.ListJobsResponse(
            jobs=[job_to_proto(j) for j in page.jobs],
            next_page_token=str(page.next_after) if page.next_after else "",
        )

    async def CancelJob(
        self, request: jobs_pb2.CancelJobRequest, context: aio.ServicerContext[Any, Any]
    ) -> jobs_pb2.Job:
        return job_to_proto(await self._jobs.cancel(current_principal.get(), request.job_id))

    async def WatchJob(
        self, request: jobs_pb2.WatchJobRequest, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[jobs_pb2.JobEvent]:
        principal = current_principal.get()
        async for event in self._jobs.watch(principal, request.job_id, request.after_seq):
            yield event_to_proto(event)

    async def Evaluate(
        self, request: jobs_pb2.EvaluateRequest, context: aio.ServicerContext[Any, Any]
    ) -> jobs_pb2.Job:
        spec = {
            "adapter": request.spec.adapter,
            "evaluation": evaluation_fields(request.spec.evaluation),
        }
        job = await self._jobs.evaluate(
            current_principal.get(), spec, request.request_id, request.priority
        )
        return job_to_proto(job)

    async def GetEvaluationReport(
        self, request: jobs_pb2.GetEvaluationReportRequest, context: aio.ServicerContext[Any, Any]
    ) -> jobs_pb2.EvaluationReport:
        report, html = await self._jobs.report(current_principal.get(), request.job_id)
        response = jobs_pb2.EvaluationReport(html=html)
        response.report.update(report)
        return response

    async def GetHumanEvalSheet(
        self, request: jobs_pb2.GetHumanEvalSheetRequest, context: aio.ServicerContext[Any, Any]
    ) -> jobs_pb2.HumanEvalSheet:
        jsonl, html, items = await self._jobs.human_sheet(current_principal.get(), request.job_id)
        return jobs_pb2.HumanEvalSheet(jsonl=jsonl, html=html, items=items)

    async def ImportHumanRatings(
        self, request: jobs_pb2.ImportHumanRatingsRequest, context: aio.ServicerContext[Any, Any]
    ) -> jobs_pb2.HumanRatingsResult:
        summary = await self._jobs.import_ratings(
            current_principal.get(), request.job_id, request.upload_id
        )
        response = jobs_pb2.HumanRatingsResult()
        response.evaluation.update(summary)
        return response

    async def ListCheckpoints(
        self, request: jobs_pb2.ListCheckpointsRequest, context: aio.ServicerContext[Any, Any]
    ) -> jobs_pb2.ListCheckpointsResponse:
        summaries = await self._jobs.checkpoints(current_principal.get(), request.job_id)
        return jobs_pb2.ListCheckpointsResponse(
            checkpoints=[checkpoint_to_proto(s) for s in summaries]
        )

    async def RegisterCheckpoint(
        self, request: jobs_pb2.RegisterCheckpointRequest, context: aio.ServicerContext[Any, Any]
    ) -> jobs_pb2.RegisterCheckpointResponse:
        view = await self._jobs.register_checkpoint(
            current_principal.get(), request.job_id, request.step, request.name
        )
        return jobs_pb2.RegisterCheckpointResponse(adapter=adapter_to_proto(view))
