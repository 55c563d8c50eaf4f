"""Conversions between domain objects and adapterd.v1 protobuf messages, in one place."""

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp

from adapterd.v1 import (
    adapters_pb2,
    capture_pb2,
    common_pb2,
    evaluation_pb2,
    inference_pb2,
    jobs_pb2,
    server_pb2,
)
from eval.gates import Comparator
from eval.spec import JUDGED_SECTIONS
from service.adapters.downloads import Download
from service.adapters.manager import AdapterView
from service.adapters.registry import AdapterState
from service.auth import Principal, Role
from service.basemodel import BaseModel
from service.capture.model import (
    Capture,
    CaptureFilter,
    CapturePolicy,
    ExportFormat,
    Feedback,
    FlagFilter,
    thumbs_rating,
)
from service.errors import InvalidArgumentError
from service.inference.engine import EngineState
from service.inference.generation import Delta, GenerateParams
from service.jobs.model import Job, JobEvent, JobKind, JobState
from service.serverinfo import ServerInfo
from service.store.base import UploadRecord
from service.uploads import UploadKind
from trainer.hardware import Machine, PrecisionChoice
from trainer.layout import CheckpointSummary
from trainer.tools import ToolCall

_ENGINE_STATES = {
    EngineState.STARTING: server_pb2.ENGINE_STATE_STARTING,
    EngineState.READY: server_pb2.ENGINE_STATE_READY,
    EngineState.FAILED: server_pb2.ENGINE_STATE_FAILED,
    EngineState.STOPPING: server_pb2.ENGINE_STATE_STOPPING,
    EngineState.SLEEPING: server_pb2.ENGINE_STATE_SLEEPING,
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
        chat_template=model.chat_template,
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
        machine=machine_to_proto(info.machine),
    )


def _precision_to_proto(choice: PrecisionChoice | None) -> server_pb2.PrecisionInfo | None:
    if choice is None:
        return None
    return server_pb2.PrecisionInfo(
        dtype=choice.dtype, requested=choice.requested, reason=choice.reason
    )


def machine_to_proto(machine: Machine) -> server_pb2.MachineInfo:
    """Machine -> adapterd.v1.MachineInfo."""
    rates = machine.probe
    return server_pb2.MachineInfo(
        cpu_model=machine.cpu_model,
        device=machine.device,
        native_bf16=machine.native_bf16,
        engine=_precision_to_proto(machine.engine),
        trainer=_precision_to_proto(machine.trainer),
        engine_threads=machine.engine_threads or 0,
        trainer_threads=machine.trainer_threads or 0,
        probe_float32_gflops=rates.float32 / 1e9 if rates else 0.0,
        probe_bfloat16_gflops=rates.bfloat16 / 1e9 if rates else 0.0,
    )


_FINISH_REASONS = {
    None: inference_pb2.FINISH_REASON_UNSPECIFIED,
    "stop": inference_pb2.FINISH_REASON_STOP,
    "length": inference_pb2.FINISH_REASON_LENGTH,
    "abort": inference_pb2.FINISH_REASON_ABORT,
    "tool_calls": inference_pb2.FINISH_REASON_TOOL_CALLS,
}
_ADAPTER_STATES = {
    AdapterState.LOADING: adapters_pb2.ADAPTER_STATE_LOADING,
    AdapterState.READY: adapters_pb2.ADAPTER_STATE_READY,
    AdapterState.FAILED: adapters_pb2.ADAPTER_STATE_FAILED,
    AdapterState.UNLOADING: adapters_pb2.ADAPTER_STATE_UNLOADING,
}


def generate_params(request: inference_pb2.GenerateRequest) -> GenerateParams:
    """adapterd.v1.GenerateRequest -> validated GenerateParams (unset sampling fields take
    their defaults).

    Raises:
        InvalidArgumentError: naming the field and value.
    """
    sampling: dict[str, Any] = {
        field.name: value for field, value in request.sampling.ListFields() if field.name != "stop"
    }
    sampling["stop"] = tuple(request.sampling.stop)
    fields: dict[str, Any] = {
        "adapter": request.adapter,
        "sampling": sampling,
        "json_schema": request.json_schema,
        "prompt_logprobs": request.prompt_logprobs,
    }
    which = request.WhichOneof("input")
    if which == "chat":
        chat = request.chat
        fields["messages"] = [_message(m) for m in chat.messages]
        fields["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    "description": t.description,
                    "parameters": t.parameters or {},
                },
            }
            for t in chat.tools
        ]
        fields["tool_choice"] = chat.tool_choice or "auto"
    elif which == "prompt":
        fields["prompt"] = request.prompt
    return GenerateParams.parse(fields)


def _message(message: inference_pb2.ChatMessage) -> dict[str, Any]:
    fields: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        fields["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in message.tool_calls
        ]
    if message.tool_call_id:
        fields["tool_call_id"] = message.tool_call_id
    return fields


def _tool_calls(calls: Sequence[ToolCall]) -> list[inference_pb2.ToolCall]:
    return [inference_pb2.ToolCall(id=c.id, name=c.name, arguments=c.arguments) for c in calls]


def _prompt_tokens(delta: Delta) -> list[inference_pb2.PromptToken]:
    return [
        inference_pb2.PromptToken(
            token_id=t.token_id, text=t.text, logprob=t.logprob, is_top=t.is_top
        )
        for t in delta.prompt_logprobs
    ]


def _usage(delta: Delta) -> inference_pb2.Usage | None:
    if delta.usage is None:
        return None
    return inference_pb2.Usage(
        prompt_tokens=delta.usage.prompt_tokens, completion_tokens=delta.usage.completion_tokens
    )


def stream_response(delta: Delta) -> inference_pb2.GenerateStreamResponse:
    """A Delta -> adapterd.v1.GenerateStreamResponse."""
    return inference_pb2.GenerateStreamResponse(
        text=delta.text,
        token_ids=delta.token_ids,
        finish_reason=_FINISH_REASONS[delta.finish_reason],
        usage=_usage(delta),
        adapter_version=delta.adapter_version,
        prompt_tokens=_prompt_tokens(delta),
        capture_id=delta.capture_id,
        tool_calls=_tool_calls(delta.tool_calls),
    )


def generate_response(deltas: list[Delta]) -> inference_pb2.GenerateResponse:
    """A whole completion's deltas -> adapterd.v1.GenerateResponse."""
    last = deltas[-1]
    return inference_pb2.GenerateResponse(
        text="".join(d.text for d in deltas),
        finish_reason=_FINISH_REASONS[last.finish_reason],
        usage=_usage(last),
        adapter_version=last.adapter_version,
        token_ids=[t for d in deltas for t in d.token_ids],
        prompt_tokens=[p for d in deltas for p in _prompt_tokens(d)],
        capture_id=last.capture_id,
        tool_calls=_tool_calls(last.tool_calls),
    )


def _timestamp(seconds: float | None) -> Timestamp | None:
    if seconds is None:
        return None
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def checkpoint_to_proto(summary: CheckpointSummary) -> jobs_pb2.Checkpoint:
    """A checkpoint a job keeps -> adapterd.v1.Checkpoint."""
    return jobs_pb2.Checkpoint(
        step=summary.step,
        epoch=summary.epoch,
        train_loss=summary.loss,
        eval_loss=summary.eval_loss,
        stage=summary.stage,
        stage_end=summary.stage_end,
    )


def adapter_to_proto(view: AdapterView) -> adapters_pb2.AdapterInfo:
    """A registered version as clients see it -> adapterd.v1.AdapterInfo."""
    entry, aliases = view.entry, list(view.aliases)
    return adapters_pb2.AdapterInfo(
        name=entry.name,
        version=entry.version,
        ref=entry.ref,
        state=_ADAPTER_STATES[entry.state],
        base_model=entry.base_model,
        rank=entry.rank,
        pinned=entry.pinned or bool(aliases),
        last_used=_timestamp(entry.last_used),
        load_seconds=entry.load_seconds,
        residency=adapters_pb2.RESIDENCY_ENGINE if entry.resident else adapters_pb2.RESIDENCY_DISK,
        sha256=entry.sha256,
        aliases=aliases,
        error=entry.error,
        path=view.path,
        in_flight=entry.in_flight,
        created=_timestamp(entry.created),
    )


_JOB_STATES = {
    JobState.QUEUED: jobs_pb2.JOB_STATE_QUEUED,
    JobState.VALIDATING: jobs_pb2.JOB_STATE_VALIDATING,
    JobState.RUNNING: jobs_pb2.JOB_STATE_RUNNING,
    JobState.EVALUATION_PENDING: jobs_pb2.JOB_STATE_EVALUATION_PENDING,
    JobState.EVALUATING: jobs_pb2.JOB_STATE_EVALUATING,
    JobState.SUCCEEDED: jobs_pb2.JOB_STATE_SUCCEEDED,
    JobState.FAILED: jobs_pb2.JOB_STATE_FAILED,
    JobState.CANCELLED: jobs_pb2.JOB_STATE_CANCELLED,
}
_JOB_KINDS = {JobKind.TRAIN: jobs_pb2.JOB_KIND_TRAIN, JobKind.EVALUATE: jobs_pb2.JOB_KIND_EVALUATE}


def download_of(message: adapters_pb2.AdapterDownload) -> Download:
    """An ImportAdapter's archive to download."""
    return Download(message.source, message.path, message.sha256)


def _struct(values: dict[str, Any]) -> Struct:
    struct = Struct()
    struct.update(values)
    return struct


def message_fields(message: Message) -> dict[str, Any]:
    """A request message as a plain dict with its proto field names; unset fields absent."""
    return dict(json_format.MessageToDict(message, preserving_proto_field_name=True))


def evaluation_fields(message: evaluation_pb2.EvaluationSpec) -> dict[str, Any]:
    """An EvaluationSpec as eval.spec's fields: enum names become the domain's values
    (GATE_METRIC_WIN_RATE -> "win_rate", COMPARATOR_GE -> ">=", JUDGE_LLM -> "llm")."""
    fields = message_fields(message)
    selection = fields.get("checkpoints", {})
    metrics = [selection.get("select_by", {})]
    for gate in fields.get("gates", []):
        metrics += [gate, gate.get("compare_to", {})]
        if "comparator" in gate:
            name = str(gate["comparator"]).removeprefix("COMPARATOR_")
            gate["comparator"] = Comparator[name].value if name in Comparator.__members__ else name
    for named in metrics:
        if "metric" in named:  # an unknown number stays a number, for the spec to refuse
            named["metric"] = str(named["metric"]).removeprefix("GATE_METRIC_").lower()
    if "goal" in selection:
        selection["goal"] = str(selection["goal"]).removeprefix("SELECTION_GOAL_").lower()
    for section in JUDGED_SECTIONS:
        if "judge" in fields.get(section, {}):
            judge = str(fields[section]["judge"])
            fields[section]["judge"] = judge.removeprefix("JUDGE_").lower()
    return fields


def _evaluation_message_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """The inverse of evaluation_fields, for ParseDict."""

    def metric_ref(named: dict[str, Any]) -> dict[str, Any]:
        return {**named, "metric": "GATE_METRIC_" + named["metric"].upper()}

    gates = []
    for gate in fields.get("gates", []):
        comparator = "COMPARATOR_" + Comparator(gate["comparator"]).name
        converted = metric_ref(gate) | {"comparator": comparator}
        if gate.get("compare_to"):
            converted["compare_to"] = metric_ref(gate["compare_to"])
        gates.append(converted)
    fields = {**fields, "gates": gates}
    if "checkpoints" in fields:
        selection = {**fields["checkpoints"]}
        selection["select_by"] = metric_ref(selection["select_by"])
        if "goal" in selection:
            selection["goal"] = "SELECTION_GOAL_" + selection["goal"].upper()
        fields["checkpoints"] = selection
    for section in JUDGED_SECTIONS:
        if "judge" in fields.get(section, {}):
            fields[section] = {**fields[section]}
            fields[section]["judge"] = "JUDGE_" + fields[section]["judge"].upper()
    return fields


def _spec_with_evaluation(spec: dict[str, Any]) -> dict[str, Any]:
    if "evaluation" not in spec:
        return spec
    return {**spec, "evaluation": _evaluation_message_fields(spec["evaluation"])}


def job_to_proto(job: Job) -> jobs_pb2.Job:
    """A Job -> adapterd.v1.Job."""
    spec = _spec_with_evaluation(job.spec)
    return jobs_pb2.Job(
        id=job.id,
        tenant=job.tenant,
        kind=_JOB_KINDS[job.kind],
        state=_JOB_STATES[job.state],
        train=json_format.ParseDict(spec, jobs_pb2.TrainSpec())
        if job.kind is JobKind.TRAIN
        else None,
        evaluate=json_format.ParseDict(spec, jobs_pb2.EvaluateSpec())
        if job.kind is JobKind.EVALUATE
        else None,
        request_id=job.request_id,
        priority=job.priority,
        created=_timestamp(job.created),
        updated=_timestamp(job.updated),
        started=_timestamp(job.started),
        finished=_timestamp(job.finished),
        attempts=job.attempts,
        result=_struct(job.result),
        error_reason=job.error_reason,
        error_message=job.error_message,
        cancel_requested=job.cancel_requested,
    )


def job_filters(request: jobs_pb2.ListJobsRequest) -> tuple[list[JobState], list[JobKind]]:
    """The state and kind filters of a ListJobsRequest.

    Raises:
        InvalidArgumentError: for an unspecified or unknown enum value.
    """
    states = {v: k for k, v in _JOB_STATES.items()}
    kinds = {v: k for k, v in _JOB_KINDS.items()}
    for field, values, known in (
        ("states", request.states, states),
        ("kinds", request.kinds, kinds),
    ):
        if unknown := [v for v in values if v not in known]:
            raise InvalidArgumentError(f"{field}: {unknown} are not valid values")
    return [states[v] for v in request.states], [kinds[v] for v in request.kinds]


def event_to_proto(event: JobEvent) -> jobs_pb2.JobEvent:
    """A JobEvent -> adapterd.v1.JobEvent."""
    return jobs_pb2.JobEvent(
        seq=event.seq, time=_timestamp(event.time), kind=event.kind, data=_struct(event.data)
    )


_UPLOAD_KINDS: dict[int, UploadKind] = {
    jobs_pb2.UPLOAD_KIND_DATASET: UploadKind.DATASET,
    jobs_pb2.UPLOAD_KIND_TASK_ARCHIVE: UploadKind.TASK_ARCHIVE,
    jobs_pb2.UPLOAD_KIND_PROMPT_SET: UploadKind.PROMPT_SET,
    jobs_pb2.UPLOAD_KIND_JSON_SCHEMA: UploadKind.JSON_SCHEMA,
    jobs_pb2.UPLOAD_KIND_SAFETY_FAMILIES: UploadKind.SAFETY_FAMILIES,
    jobs_pb2.UPLOAD_KIND_HUMAN_RATINGS: UploadKind.HUMAN_RATINGS,
    jobs_pb2.UPLOAD_KIND_ADAPTER_ARCHIVE: UploadKind.ADAPTER_ARCHIVE,
}


def upload_kind(value: int) -> UploadKind:
    """adapterd.v1.UploadKind -> the domain's kind.

    Raises:
        InvalidArgumentError: for UNSPECIFIED or an unknown number.
    """
    if value not in _UPLOAD_KINDS:
        known = ", ".join(jobs_pb2.UploadKind.Name(k) for k in _UPLOAD_KINDS)
        raise InvalidArgumentError(f"header.kind: {value} is not one of {known}")
    return _UPLOAD_KINDS[value]


def upload_to_proto(record: UploadRecord, tenant_bytes: int) -> jobs_pb2.UploadResponse:
    """A stored upload -> adapterd.v1.UploadResponse."""
    kind = next(k for k, v in _UPLOAD_KINDS.items() if v.value == record.kind)
    return jobs_pb2.UploadResponse(
        upload_id=record.id,
        kind=jobs_pb2.UploadKind.Name(kind),
        size=record.size,
        sha256=record.sha256,
        files=record.files,
        tenant_bytes=tenant_bytes,
    )


async def upload_parts(messages: AsyncIterator[Any]) -> tuple[Any, AsyncIterator[bytes]]:
    """An upload stream (UploadRequest or UploadDatasetRequest) as its header and its chunks.

    Raises:
        InvalidArgumentError: when the first message is no header, or a later one is.
    """
    first = await anext(messages, None)
    if first is None or not first.HasField("header"):
        raise InvalidArgumentError("header: the first message must carry the header")

    async def chunks() -> AsyncIterator[bytes]:
        async for message in messages:
            if not message.HasField("chunk"):
                raise InvalidArgumentError("header: only the first message may be a header")
            yield message.chunk

    return first.header, chunks()


def capture_policy_to_proto(policy: CapturePolicy) -> capture_pb2.CapturePolicy:
    """CapturePolicy -> adapterd.v1.CapturePolicy."""
    return capture_pb2.CapturePolicy(
        tenant=policy.tenant,
        target=policy.target,
        rate=policy.rate,
        retention_seconds=policy.retention_seconds,
        created=_timestamp(policy.created),
        json_schema="" if policy.schema is None else json.dumps(policy.schema),
    )


def capture_to_proto(capture: Capture) -> capture_pb2.CapturedRequest:
    """Capture -> adapterd.v1.CapturedRequest."""
    feedback = capture.feedback
    return capture_pb2.CapturedRequest(
        id=capture.id,
        tenant=capture.tenant,
        target=capture.target,
        adapter_version=capture.adapter_version,
        request=_struct(capture.request),
        answer=capture.answer,
        finish_reason=capture.finish_reason,
        prompt_tokens=capture.prompt_tokens,
        completion_tokens=capture.completion_tokens,
        latency_seconds=capture.latency_seconds,
        redacted=capture.redacted,
        created=_timestamp(capture.created),
        expires=_timestamp(capture.expires),
        feedback=None
        if feedback is None
        else capture_pb2.Feedback(
            rating=feedback.rating or 0,
            flagged=feedback.flagged,
            flag_reason=feedback.flag_reason,
            correction=feedback.correction,
            time=_timestamp(feedback.time),
        ),
    )


_FLAG_FILTERS: dict[int, FlagFilter] = {
    capture_pb2.FLAG_FILTER_ANY: FlagFilter.ANY,
    capture_pb2.FLAG_FILTER_FLAGGED: FlagFilter.FLAGGED,
    capture_pb2.FLAG_FILTER_UNFLAGGED: FlagFilter.UNFLAGGED,
}
_EXPORT_FORMATS: dict[int, ExportFormat] = {
    capture_pb2.EXPORT_FORMAT_UNSPECIFIED: ExportFormat.SFT,
    capture_pb2.EXPORT_FORMAT_SFT: ExportFormat.SFT,
    capture_pb2.EXPORT_FORMAT_PREFERENCE: ExportFormat.PREFERENCE,
}


def _seconds(stamp: Timestamp, present: bool) -> float:
    return stamp.ToNanoseconds() / 1e9 if present else 0.0


def capture_filter(message: capture_pb2.CaptureFilter) -> CaptureFilter:
    """adapterd.v1.CaptureFilter -> CaptureFilter (the tenant is the service's to set).

    Raises:
        InvalidArgumentError: an unknown flag filter.
    """
    if message.flag not in _FLAG_FILTERS:
        raise InvalidArgumentError(f"filter.flag: {message.flag} is no FlagFilter")
    return CaptureFilter(
        tenant=None,
        target=message.target,
        since=_seconds(message.since, message.HasField("since")),
        until=_seconds(message.until, message.HasField("until")),
        min_rating=message.min_rating,
        flag=_FLAG_FILTERS[message.flag],
        with_correction=message.with_correction,
    )


def export_format(value: int) -> ExportFormat:
    """adapterd.v1.ExportFormat -> ExportFormat.

    Raises:
        InvalidArgumentError: an unknown value.
    """
    if value not in _EXPORT_FORMATS:
        raise InvalidArgumentError(f"format: {value} is no ExportFormat")
    return _EXPORT_FORMATS[value]


def feedback_of(request: capture_pb2.SubmitFeedbackRequest, now: float) -> Feedback:
    """adapterd.v1.SubmitFeedbackRequest -> Feedback (checked by the service)."""
    which = request.WhichOneof("rating")
    rating = None
    if which == "thumbs_up":
        rating = thumbs_rating(request.thumbs_up)
    elif which == "score":
        rating = request.score
    return Feedback(
        rating=rating,
        flagged=request.flagged,
        flag_reason=request.flag_reason,
        correction=request.correction if request.HasField("correction") else None,
        time=now,
    )
