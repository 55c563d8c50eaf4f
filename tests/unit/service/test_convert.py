"""Between the proto and the domain: evaluation specs (enum names and values, both ways),
jobs, and chats with tools."""

from google.protobuf import json_format

from adapterd.v1 import evaluation_pb2, inference_pb2
from eval.spec import parse_eval_spec
from service.grpc.convert import (
    evaluation_fields,
    generate_params,
    generate_response,
    job_to_proto,
    stream_response,
)
from service.inference.generation import Delta
from service.jobs.model import Job, JobKind, JobState
from trainer.tools import ToolCall

MESSAGE = {
    "win_rate": {"judge": "JUDGE_LLM", "limit": 5},
    "safety": {"judge": "JUDGE_LLM", "categories": ["fraud"]},
    "rubric": {"judge": "JUDGE_URL", "judge_url": "gpt", "judge_model": "m",
               "dimensions": ["formatting"]},
    "gates": [
        {"metric": "GATE_METRIC_WIN_RATE_LOWER", "comparator": "COMPARATOR_GE",
         "threshold": 0.4},
        {"metric": "GATE_METRIC_LATENCY_P95_SECONDS", "comparator": "COMPARATOR_LT",
         "threshold": 2.0},
        {"metric": "GATE_METRIC_LATENCY_P95_SECONDS", "comparator": "COMPARATOR_LE",
         "factor": 3.0, "compare_to": {"metric": "GATE_METRIC_LATENCY_P50_SECONDS"}},
    ],
    "promote_alias": "prod",
}  # fmt: skip


def queued(kind, spec):
    return Job(
        id="job-1", tenant="t", kind=kind, state=JobState.QUEUED, spec=spec, spec_digest="",
        request_id="", priority=0, created=0.0, updated=0.0,
    )  # fmt: skip


def test_enum_names_become_the_specs_values_and_back():
    fields = evaluation_fields(json_format.ParseDict(MESSAGE, evaluation_pb2.EvaluationSpec()))
    spec = parse_eval_spec(fields, training=False)
    assert [g.key for g in spec.gates] == ["win_rate_lower", *["latency_p95_seconds"] * 2]
    assert [g.comparator.value for g in spec.gates] == [">=", "<", "<="]
    assert spec.gates[2].compare_to.key == "latency_p50_seconds"
    assert (spec.win_rate.judge, spec.safety.judge, spec.rubric.judge) == ("llm", "llm", "url")
    stored = spec.model_dump(mode="json", exclude_defaults=True)
    proto = job_to_proto(queued(JobKind.EVALUATE, {"adapter": "bot@1", "evaluation": stored}))
    assert proto.evaluate.adapter == "bot@1" and not proto.HasField("train")
    back = json_format.MessageToDict(proto.evaluate.evaluation, preserving_proto_field_name=True)
    assert back == MESSAGE


def test_an_unknown_enum_number_reaches_the_spec_as_a_value_it_refuses():
    message = evaluation_pb2.EvaluationSpec(win_rate=evaluation_pb2.WinRateSettings())
    message.gates.add(metric=99, comparator=evaluation_pb2.COMPARATOR_GE, threshold=1)
    fields = evaluation_fields(message)
    assert fields["gates"][0]["metric"] == "99"


def test_a_checkpoint_selection_converts_both_ways():
    message = {
        "schema_adherence": {"limit": 2},
        "checkpoints": {"select_by": {"metric": "GATE_METRIC_EVAL_LOSS"},
                        "goal": "SELECTION_GOAL_MAXIMIZE"},
    }  # fmt: skip
    fields = evaluation_fields(json_format.ParseDict(message, evaluation_pb2.EvaluationSpec()))
    spec = parse_eval_spec(fields, training=True)
    assert (spec.checkpoints.select_by.key, spec.checkpoints.goal) == ("eval_loss", "maximize")
    stored = spec.model_dump(mode="json", exclude_defaults=True)
    back = job_to_proto(queued(JobKind.TRAIN, {"adapter_name": "t/bot", "evaluation": stored}))
    back = back.train.evaluation
    assert json_format.MessageToDict(back, preserving_proto_field_name=True) == message


def test_a_chat_with_tools_converts_to_params_and_its_calls_back_to_the_proto():
    request = inference_pb2.GenerateRequest()
    request.chat.tools.add(name="add", parameters='{"type": "object", "properties": '
                           '{"a": {"type": "integer"}}}')  # fmt: skip
    request.chat.tool_choice = "add"
    request.chat.messages.add(role="user", content="1 + 1?")
    call = request.chat.messages.add(role="assistant").tool_calls.add()
    call.id, call.name, call.arguments = "c1", "add", '{"a": 1}'
    request.chat.messages.add(role="tool", content="2", tool_call_id="c1")
    params = generate_params(request)
    assert [t.name for t in params.forced] == ["add"]
    assert params.tools[0].parameters["properties"] == {"a": {"type": "integer"}}
    assert params.template_messages()[1]["tool_calls"][0]["function"]["arguments"] == {"a": 1}
    delta = Delta("", (1,), "", "tool_calls", tool_calls=(ToolCall("add", '{"a": 2}', "call_0"),))
    reply = generate_response([delta])
    assert reply.finish_reason == inference_pb2.FINISH_REASON_TOOL_CALLS
    assert [(c.id, c.name, c.arguments) for c in reply.tool_calls] == [
        ("call_0", "add", '{"a": 2}')
    ]
    assert list(stream_response(delta).tool_calls) == list(reply.tool_calls)
