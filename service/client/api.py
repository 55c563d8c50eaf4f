"""A thin synchronous client over adapterd's gRPC API, for adapterctl, the demo and tests."""

import hashlib
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

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

STATUS_NAMES = health_pb2.HealthCheckResponse.ServingStatus.Name
R = TypeVar("R")
LoadBalancing = Literal["pick_first", "round_robin"]
"""gRPC's load-balancing policies a client may pick."""


class Client:
    """One channel to a server, with the caller's bearer token attached to every call."""

    def __init__(
        self,
        target: str,
        token: str | None = None,
        timeout: float = 30.0,
        tls_ca: bytes | None = None,
        load_balancing: LoadBalancing = "pick_first",
    ) -> None:
        """`load_balancing` "round_robin" spreads calls over every address `target` resolves
        to (a headless Service's pods: `dns:///adapterd-grpc-headless:50051`); "pick_first",
        gRPC's default, sends them all to one."""
        self.target = target
        options = [("grpc.lb_policy_name", load_balancing)]
        self._channel = (
            grpc.insecure_channel(target, options=options)
            if tls_ca is None
            else grpc.secure_channel(
                target, grpc.ssl_channel_credentials(root_certificates=tls_ca), options=options
            )
        )
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._timeout = timeout
        self.server = server_pb2_grpc.ServerStub(self._channel)
        self.inference = inference_pb2_grpc.InferenceStub(self._channel)
        self.adapters = adapters_pb2_grpc.AdaptersStub(self._channel)
        self.jobs = jobs_pb2_grpc.JobsStub(self._channel)
        self.capture = capture_pb2_grpc.CaptureStub(self._channel)
        self.health_stub = health_pb2_grpc.HealthStub(self._channel)

    def __enter__(self) -> "Client":
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Closes the channel."""
        self._channel.close()

    def call(self, method: Callable[..., Any], request: Any, response: type[R]) -> R:
        """Calls a unary stub method with the token and the deadline; `response` is the reply's
        type (the generated stubs are untyped)."""
        reply = method(request, metadata=self._metadata, timeout=self._timeout)
        assert isinstance(reply, response)
        return reply

    def server_info(self) -> server_pb2.GetServerInfoResponse:
        """GetServerInfo."""
        return self.call(
            self.server.GetServerInfo,
            server_pb2.GetServerInfoRequest(),
            server_pb2.GetServerInfoResponse,
        )

    def generate(self, request: inference_pb2.GenerateRequest) -> inference_pb2.GenerateResponse:
        """Generate."""
        return self.call(self.inference.Generate, request, inference_pb2.GenerateResponse)

    def generate_stream(
        self, request: inference_pb2.GenerateRequest
    ) -> Iterator[inference_pb2.GenerateStreamResponse]:
        """GenerateStream: the deltas as they come."""
        stream: Iterator[inference_pb2.GenerateStreamResponse] = self.inference.GenerateStream(
            request, metadata=self._metadata, timeout=self._timeout
        )
        return stream

    def upload_dataset(self, path: Path, chunk_bytes: int = 1 << 20) -> str:
        """UploadDataset: streams the file in chunks; returns the dataset id."""
        data = path.read_bytes()
        header = jobs_pb2.DatasetHeader(
            file_name=path.name, size=len(data), sha256=hashlib.sha256(data).hexdigest()
        )
        chunks = (data[start : start + chunk_bytes] for start in range(0, len(data), chunk_bytes))
        return self.upload(header, chunks)

    def upload_file(
        self, path: Path, kind: jobs_pb2.UploadKind, chunk_bytes: int = 1 << 20
    ) -> jobs_pb2.UploadResponse:
        """Upload: streams a file of `kind` (an adapterd.v1.UploadKind) in chunks."""
        return self.upload_bytes(path.name, path.read_bytes(), kind, chunk_bytes)

    def upload_bytes(
        self, file_name: str, data: bytes, kind: jobs_pb2.UploadKind, chunk_bytes: int = 1 << 20
    ) -> jobs_pb2.UploadResponse:
        """Upload: streams `data` as a file named `file_name` of `kind`, in chunks."""
        header = jobs_pb2.UploadHeader(
            kind=jobs_pb2.UploadKind.Name(kind),
            file_name=file_name,
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
        )

        def parts() -> Iterator[jobs_pb2.UploadRequest]:
            yield jobs_pb2.UploadRequest(header=header)
            for start in range(0, len(data), chunk_bytes):
                yield jobs_pb2.UploadRequest(chunk=data[start : start + chunk_bytes])

        return self.call(self.jobs.Upload, parts(), jobs_pb2.UploadResponse)

    def upload(self, header: jobs_pb2.DatasetHeader, chunks: Iterable[bytes]) -> str:
        """UploadDataset with the header as given (size and sha256 are the caller's claim)."""

        def parts() -> Iterator[jobs_pb2.UploadDatasetRequest]:
            yield jobs_pb2.UploadDatasetRequest(header=header)
            for chunk in chunks:
                yield jobs_pb2.UploadDatasetRequest(chunk=chunk)

        return self.call(
            self.jobs.UploadDataset, parts(), jobs_pb2.UploadDatasetResponse
        ).dataset_id

    def validate_dataset(
        self, data: jobs_pb2.DataSettings, method: str = ""
    ) -> jobs_pb2.ValidateDatasetResponse:
        """ValidateDataset."""
        request = jobs_pb2.ValidateDatasetRequest(data=data, method=method)
        return self.call(self.jobs.ValidateDataset, request, jobs_pb2.ValidateDatasetResponse)

    def submit_job(
        self, train: jobs_pb2.TrainSpec, request_id: str = "", priority: int = 0
    ) -> jobs_pb2.Job:
        """SubmitJob."""
        request = jobs_pb2.SubmitJobRequest(train=train, request_id=request_id, priority=priority)
        return self.call(self.jobs.SubmitJob, request, jobs_pb2.Job)

    def evaluate(
        self, spec: jobs_pb2.EvaluateSpec, request_id: str = "", priority: int = 0
    ) -> jobs_pb2.Job:
        """Evaluate."""
        request = jobs_pb2.EvaluateRequest(spec=spec, request_id=request_id, priority=priority)
        return self.call(self.jobs.Evaluate, request, jobs_pb2.Job)

    def evaluation_report(self, job_id: str) -> jobs_pb2.EvaluationReport:
        """GetEvaluationReport."""
        request = jobs_pb2.GetEvaluationReportRequest(job_id=job_id)
        return self.call(self.jobs.GetEvaluationReport, request, jobs_pb2.EvaluationReport)

    def human_sheet(self, job_id: str) -> jobs_pb2.HumanEvalSheet:
        """GetHumanEvalSheet."""
        request = jobs_pb2.GetHumanEvalSheetRequest(job_id=job_id)
        return self.call(self.jobs.GetHumanEvalSheet, request, jobs_pb2.HumanEvalSheet)

    def import_ratings(self, job_id: str, upload_id: str) -> jobs_pb2.HumanRatingsResult:
        """ImportHumanRatings."""
        request = jobs_pb2.ImportHumanRatingsRequest(job_id=job_id, upload_id=upload_id)
        return self.call(self.jobs.ImportHumanRatings, request, jobs_pb2.HumanRatingsResult)

    def get_job(self, job_id: str) -> jobs_pb2.Job:
        """GetJob."""
        return self.call(self.jobs.GetJob, jobs_pb2.GetJobRequest(job_id=job_id), jobs_pb2.Job)

    def list_jobs(self, request: jobs_pb2.ListJobsRequest) -> jobs_pb2.ListJobsResponse:
        """ListJobs."""
        return self.call(self.jobs.ListJobs, request, jobs_pb2.ListJobsResponse)

    def cancel_job(self, job_id: str) -> jobs_pb2.Job:
        """CancelJob."""
        request = jobs_pb2.CancelJobRequest(job_id=job_id)
        return self.call(self.jobs.CancelJob, request, jobs_pb2.Job)

    def watch_job(self, job_id: str, after_seq: int = 0) -> Iterator[jobs_pb2.JobEvent]:
        """WatchJob: the events after `after_seq`, then live ones until the job ends (no
        deadline: a job may run for hours)."""
        request = jobs_pb2.WatchJobRequest(job_id=job_id, after_seq=after_seq)
        stream: Iterator[jobs_pb2.JobEvent] = self.jobs.WatchJob(request, metadata=self._metadata)
        return stream

    def list_checkpoints(self, job_id: str) -> list[jobs_pb2.Checkpoint]:
        """ListCheckpoints: the checkpoints the job keeps, oldest first."""
        request = jobs_pb2.ListCheckpointsRequest(job_id=job_id)
        reply = self.call(self.jobs.ListCheckpoints, request, jobs_pb2.ListCheckpointsResponse)
        return list(reply.checkpoints)

    def register_checkpoint(
        self, job_id: str, step: int, name: str = ""
    ) -> adapters_pb2.AdapterInfo:
        """RegisterCheckpoint: the job's checkpoint after `step` as the next version of `name`
        ("": the job's adapter name)."""
        request = jobs_pb2.RegisterCheckpointRequest(job_id=job_id, step=step, name=name)
        return self.call(
            self.jobs.RegisterCheckpoint, request, jobs_pb2.RegisterCheckpointResponse
        ).adapter

    def load_adapter(self, name: str, path: str, pin: bool = False) -> adapters_pb2.AdapterInfo:
        """LoadAdapter: registers the adapter at `path` (under the adapter root) as `name`."""
        request = adapters_pb2.LoadAdapterRequest(name=name, path=path, pin=pin)
        return self.call(
            self.adapters.LoadAdapter, request, adapters_pb2.LoadAdapterResponse
        ).adapter

    def import_adapter(
        self, name: str, upload_id: str = "", download: adapters_pb2.AdapterDownload | None = None
    ) -> adapters_pb2.AdapterInfo:
        """ImportAdapter: registers the caller's adapter archive upload, or the archive the
        server downloads from an allowlisted source, as `name`."""
        request = adapters_pb2.ImportAdapterRequest(name=name)
        if download is not None:
            request.download.CopyFrom(download)
        else:
            request.upload_id = upload_id
        return self.call(
            self.adapters.ImportAdapter, request, adapters_pb2.ImportAdapterResponse
        ).adapter

    def unload_adapter(self, adapter: str) -> list[str]:
        """UnloadAdapter: "name@N" or every version of "name"; returns the refs removed."""
        request = adapters_pb2.UnloadAdapterRequest(adapter=adapter)
        reply = self.call(self.adapters.UnloadAdapter, request, adapters_pb2.UnloadAdapterResponse)
        return list(reply.refs)

    def list_adapters(self) -> adapters_pb2.ListAdaptersResponse:
        """ListAdapters."""
        return self.call(
            self.adapters.ListAdapters,
            adapters_pb2.ListAdaptersRequest(),
            adapters_pb2.ListAdaptersResponse,
        )

    def pin_adapter(self, adapter: str, pinned: bool = True) -> adapters_pb2.AdapterInfo:
        """PinAdapter."""
        request = adapters_pb2.PinAdapterRequest(adapter=adapter, pinned=pinned)
        return self.call(self.adapters.PinAdapter, request, adapters_pb2.PinAdapterResponse).adapter

    def set_alias(self, alias: str, target: str) -> adapters_pb2.SetAliasResponse:
        """SetAlias ("" target removes the alias)."""
        request = adapters_pb2.SetAliasRequest(alias=alias, target=target)
        return self.call(self.adapters.SetAlias, request, adapters_pb2.SetAliasResponse)

    def set_capture_policy(
        self, target: str, rate: float, retention_seconds: float, schema_upload: str = ""
    ) -> capture_pb2.CapturePolicy:
        """SetCapturePolicy."""
        request = capture_pb2.SetCapturePolicyRequest(
            target=target, rate=rate, retention_seconds=retention_seconds,
            schema_upload=schema_upload,
        )  # fmt: skip
        return self.call(self.capture.SetCapturePolicy, request, capture_pb2.CapturePolicy)

    def capture_policies(self) -> list[capture_pb2.CapturePolicy]:
        """ListCapturePolicies."""
        return list(
            self.call(
                self.capture.ListCapturePolicies,
                capture_pb2.ListCapturePoliciesRequest(),
                capture_pb2.ListCapturePoliciesResponse,
            ).policies
        )

    def delete_capture_policy(self, target: str) -> None:
        """DeleteCapturePolicy."""
        self.call(
            self.capture.DeleteCapturePolicy,
            capture_pb2.DeleteCapturePolicyRequest(target=target),
            capture_pb2.DeleteCapturePolicyResponse,
        )

    def get_capture(self, capture_id: str) -> capture_pb2.CapturedRequest:
        """GetCapture."""
        request = capture_pb2.GetCaptureRequest(capture_id=capture_id)
        return self.call(self.capture.GetCapture, request, capture_pb2.CapturedRequest)

    def list_captures(
        self, request: capture_pb2.ListCapturesRequest
    ) -> capture_pb2.ListCapturesResponse:
        """ListCaptures."""
        return self.call(self.capture.ListCaptures, request, capture_pb2.ListCapturesResponse)

    def submit_feedback(
        self, request: capture_pb2.SubmitFeedbackRequest
    ) -> capture_pb2.CapturedRequest:
        """SubmitFeedback."""
        return self.call(self.capture.SubmitFeedback, request, capture_pb2.CapturedRequest)

    def export_captures(
        self, request: capture_pb2.ExportCapturesRequest
    ) -> capture_pb2.ExportCapturesResponse:
        """ExportCaptures."""
        return self.call(self.capture.ExportCaptures, request, capture_pb2.ExportCapturesResponse)

    def health(self, service: str = "") -> str:
        """The health status name of `service` ("" = overall), e.g. "SERVING"."""
        response = self.health_stub.Check(
            health_pb2.HealthCheckRequest(service=service), timeout=self._timeout
        )
        return str(STATUS_NAMES(response.status))

    def wait_until_serving(
        self,
        service: str = "",
        timeout: float = 300.0,
        give_up: Callable[[], bool] = lambda: False,
    ) -> list[str]:
        """Polls health until `service` is SERVING; returns the distinct statuses seen, in order.

        Args:
            service: health service name; "" is the overall status.
            timeout: seconds to wait in all.
            give_up: checked before each poll; True (say, the server process exited) stops it.

        Raises:
            TimeoutError: when it is not SERVING within `timeout` seconds.
            ConnectionAbortedError: when `give_up` returned True.
        """
        seen: list[str] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if give_up():
                raise ConnectionAbortedError(f"gave up waiting for {service or 'server'}: {seen}")
            try:
                status = self.health(service)
            except grpc.RpcError as exc:
                # Not listening yet, or too busy starting to answer in time.
                if exc.code() not in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                ):
                    raise
                status = "UNREACHABLE"
            if not seen or seen[-1] != status:
                seen.append(status)
            if status == "SERVING":
                return seen
            time.sleep(0.25)
        raise TimeoutError(f"{service or 'server'} not SERVING after {timeout:.0f} s: {seen}")
