"""The default model: converted correctly from its GGUF, and served by vLLM."""

import json

import jsonschema
import pytest

from adapterd.v1 import inference_pb2, server_pb2
from service.client.api import Client

pytestmark = [pytest.mark.default_model]


def test_converted_checkpoint_answers_like_the_original(default_model):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(default_model.path)
    model = AutoModelForCausalLM.from_pretrained(default_model.path, dtype=torch.bfloat16)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer
    assert "<|im_start|>" in (default_model.path / "chat_template.jinja").read_text()


@pytest.mark.engine
def test_default_server_serves_the_default_model(default_server, default_model):
    with Client(default_server.target) as client:
        info = client.server_info()
    assert info.engine_state == server_pb2.ENGINE_STATE_READY
    assert info.base_model.name == "smollm2-135m-instruct"
    assert info.base_model.weights_sha256 == default_model.fingerprint.weights_sha256
    assert info.base_model.parameters == 134_515_008


@pytest.mark.engine
def test_a_chat_through_grpc_gets_the_models_answer(default_server):
    request = inference_pb2.GenerateRequest(
        chat=inference_pb2.Chat(
            messages=[
                inference_pb2.ChatMessage(role="user", content="What is the capital of France?")
            ]
        ),
        sampling=inference_pb2.SamplingParams(max_tokens=16),
    )
    with Client(default_server.target, timeout=120) as client:
        reply = client.generate(request)
    assert "Paris" in reply.text
    assert reply.finish_reason in (
        inference_pb2.FINISH_REASON_STOP,
        inference_pb2.FINISH_REASON_LENGTH,
    )


@pytest.mark.engine
def test_structured_output_validates_against_the_schema(default_server):
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "population": {"type": "integer", "minimum": 0},
        },
        "required": ["city", "population"],
        "additionalProperties": False,
    }
    request = inference_pb2.GenerateRequest(
        chat=inference_pb2.Chat(
            messages=[
                inference_pb2.ChatMessage(
                    role="user",
                    content="Give the largest city of France and its population as JSON.",
                )
            ]
        ),
        sampling=inference_pb2.SamplingParams(max_tokens=64),
        json_schema=json.dumps(schema),
    )
    with Client(default_server.target, timeout=120) as client:
        reply = client.generate(request)
    answer = json.loads(reply.text)
    jsonschema.validate(answer, schema)
    assert reply.text == json.dumps(answer, separators=(",", ":"), ensure_ascii=False)  # compact
