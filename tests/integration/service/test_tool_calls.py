"""Tool calls served: a server on the tiny model with `--chat-template chatml_tools`, driven by
the `openai` client and gRPC. The tiny model is random, so a forced call (named or required)
shows the constrained decoding and the parse; `auto` can only show that text is kept. The
session's server (the model's own template) shows the refusal."""

import hashlib
import json
import shutil

import grpc
import openai
import pytest
from google.protobuf import json_format
from jsonschema import Draft202012Validator

from adapterd.v1 import evaluation_pb2, inference_pb2, jobs_pb2
from service.client.api import Client
from tests.support import ADMIN_TOKEN, USER_TOKEN, ServerProcess
from trainer.templates import CHATML_TOOLS

pytestmark = pytest.mark.engine

PARAMETERS = {
    "type": "object",
    "properties": {"op": {"enum": ["add", "sub"]}, "negate": {"type": "boolean"}},
    "required": ["op", "negate"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "calc", "description": "Arithmetic.",
                                      "parameters": PARAMETERS}},
    {"type": "function", "function": {"name": "now", "parameters": {
        "type": "object", "properties": {}, "additionalProperties": False}}},
]  # fmt: skip
ASK = [{"role": "user", "content": "What is 2 + 3?"}]


@pytest.fixture(scope="module")
def tools_server(tmp_path_factory, tiny_model_dir, tiny_adapter):
    data_dir = tmp_path_factory.mktemp("tool-calls")
    shutil.copytree(tiny_adapter, data_dir / "adapters" / "model-template")
    server = ServerProcess(
        data_dir, str(tiny_model_dir), extra_flags=["--chat-template", "chatml_tools"]
    ).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def api(tools_server):
    return openai.OpenAI(base_url=tools_server.http_url, api_key="none", max_retries=0)


@pytest.fixture(scope="module")
def base_name(tools_server):
    with Client(tools_server.target, None, timeout=60) as client:
        return client.server_info().base_model.name


def test_server_info_names_the_template_and_its_hash(tools_server, server):
    with Client(tools_server.target, None, timeout=60) as client:
        tools = client.server_info().base_model
    with Client(server.target, USER_TOKEN, timeout=60) as client:
        model = client.server_info().base_model
    assert (tools.chat_template, model.chat_template) == ("chatml_tools", "model")
    assert tools.chat_template_sha256 == hashlib.sha256(CHATML_TOOLS.encode()).hexdigest()
    assert model.chat_template_sha256 != tools.chat_template_sha256
    assert model.weights_sha256 == tools.weights_sha256


def test_a_named_tool_choice_answers_with_a_valid_call_over_http(api, base_name):
    reply = api.chat.completions.create(
        model=base_name, messages=ASK, tools=TOOLS, max_tokens=48, temperature=0,
        tool_choice={"type": "function", "function": {"name": "calc"}},
    )  # fmt: skip
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls", choice.message.content
    [call] = choice.message.tool_calls
    assert (call.id[:5], call.type, call.function.name) == ("call_", "function", "calc")
    Draft202012Validator(PARAMETERS).validate(json.loads(call.function.arguments))
    assert not choice.message.content


def test_a_streamed_call_arrives_whole_in_the_last_chunk_and_never_as_text(api, base_name):
    stream = api.chat.completions.create(
        model=base_name, messages=ASK, tools=TOOLS, max_tokens=48, temperature=0,
        tool_choice="required", stream=True,
    )  # fmt: skip
    chunks = list(stream)
    assert all("<tool_call>" not in (c.choices[0].delta.content or "") for c in chunks)
    last = chunks[-1].choices[0]
    assert last.finish_reason == "tool_calls"
    [call] = last.delta.tool_calls
    assert call.function.name in {"calc", "now"}
    json.loads(call.function.arguments)


def test_grpc_serves_the_same_call_and_a_history_of_calls_renders(tools_server, api, base_name):
    request = inference_pb2.GenerateRequest(sampling=inference_pb2.SamplingParams(max_tokens=48))
    chat = request.chat
    for tool in TOOLS:
        function = tool["function"]
        chat.tools.add(name=function["name"], parameters=json.dumps(function["parameters"]))
    chat.tool_choice = "calc"
    chat.messages.add(role="user", content=ASK[0]["content"])
    with Client(tools_server.target, None, timeout=60) as client:
        reply = client.generate(request)
        [call] = reply.tool_calls
        assert reply.finish_reason == inference_pb2.FINISH_REASON_TOOL_CALLS
        http = api.chat.completions.create(
            model=base_name, messages=ASK, tools=TOOLS, max_tokens=48, temperature=0,
            tool_choice={"type": "function", "function": {"name": "calc"}},
        )  # fmt: skip
        assert call.arguments == http.choices[0].message.tool_calls[0].function.arguments
        # The call and its result as history: rendered, answered in text (auto, random model).
        chat.messages.add(role="assistant").tool_calls.add(
            id="call_0", name="calc", arguments=call.arguments
        )
        chat.messages.add(role="tool", content="5", tool_call_id="call_0")
        chat.tool_choice = "none"  # the tools are not shown; the history still renders
        request.prompt_logprobs = True
        after = client.generate(request)
    assert after.finish_reason != inference_pb2.FINISH_REASON_TOOL_CALLS
    prompt = "".join(token.text for token in after.prompt_tokens)
    assert f'<tool_call>\n{{"name": "calc", "arguments": {call.arguments}}}\n</tool_call>' in prompt
    assert "<tool_response>\n5\n</tool_response>" in prompt and "<tools>" not in prompt


def test_bad_tools_are_invalid_arguments_naming_the_field(api, base_name):
    broken = [{"type": "function", "function": {"name": "calc", "parameters": {"type": "nope"}}}]
    with pytest.raises(openai.BadRequestError, match=r"tools\[0\].function.parameters"):
        api.chat.completions.create(model=base_name, messages=ASK, tools=broken, max_tokens=4)
    with pytest.raises(openai.BadRequestError, match="tool_choice: 'sum' is not"):
        api.chat.completions.create(
            model=base_name, messages=ASK, tools=TOOLS, max_tokens=4, tool_choice="sum"
        )


def test_an_adapter_trained_under_the_models_template_is_refused_naming_it(tools_server):
    with (
        Client(tools_server.target, None, timeout=60) as client,
        pytest.raises(grpc.RpcError) as caught,
    ):
        client.load_adapter("model-template", "model-template")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "under a different chat template (--chat-template)" in caught.value.details()


def test_a_template_without_tools_refuses_them_naming_the_setting(server):
    request = inference_pb2.GenerateRequest(sampling=inference_pb2.SamplingParams(max_tokens=4))
    request.chat.messages.add(role="user", content="hi")
    request.chat.tools.add(name="now")
    with (
        Client(server.target, USER_TOKEN, timeout=60) as client,
        pytest.raises(grpc.RpcError) as caught,
    ):
        client.generate(request)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "--chat-template chatml_tools" in caught.value.details()


def evaluate_tool_calls(client):
    spec = jobs_pb2.EvaluateSpec(adapter="", evaluation=json_format.ParseDict(
        {"tool_calls": {"limit": 4, "max_tokens": 24},
         "gates": [{"metric": "GATE_METRIC_TOOL_CALL_VALID_RATE", "comparator": "COMPARATOR_GE",
                    "threshold": 0.5}]},
        evaluation_pb2.EvaluationSpec(),
    ))  # fmt: skip
    job = client.evaluate(spec)
    list(client.watch_job(job.id))
    return client.get_job(job.id)


def test_an_evaluation_scores_tool_call_validity_and_gates_on_it(tools_server):
    with Client(tools_server.target, None, timeout=120) as client:
        done = evaluate_tool_calls(client)
        assert done.state == jobs_pb2.JOB_STATE_SUCCEEDED, done.error_message
        report = json_format.MessageToDict(client.evaluation_report(done.id).report)
    details = report["details"]["candidate"]["tool_calls"]
    assert details["total"] == 4
    valid = report["scores"]["candidate"]["tool_call_valid_rate"]
    assert valid == details["valid_rate"] and 0 <= valid <= details["parse_rate"] <= 1
    assert len(details["failures"]) == round(4 * (1 - valid))
    [gate] = report["gates"]
    assert gate["passed"] == (valid >= 0.5)


def test_an_evaluation_of_tool_calls_on_a_template_without_tools_fails_naming_it(server):
    with Client(server.target, ADMIN_TOKEN, timeout=120) as client:
        done = evaluate_tool_calls(client)
    assert done.state == jobs_pb2.JOB_STATE_FAILED
    assert "--chat-template chatml_tools" in done.error_message
