"""The OpenAI-compatible HTTP API on the real server (tiny model, shared `server`), driven by
the official `openai` client: same engine, adapters, aliases, tokens and metrics as gRPC."""

import http.client
import shutil
import urllib.request

import openai
import pytest

from adapterd.v1 import inference_pb2
from service.client.api import Client
from tests.support import ADMIN_TOKEN, USER_TOKEN


@pytest.fixture(scope="module")
def grpc_admin(server, tiny_adapter):
    with Client(server.target, ADMIN_TOKEN, timeout=120) as client:
        shutil.copytree(tiny_adapter, server.data_dir / "adapters" / "http-one")
        # The admin installs them in the user's tenant: the user of `api` sees only its own.
        client.load_adapter("acme/http-one", "http-one")
        client.set_alias("acme/http-prod", "acme/http-one@1")
        yield client


@pytest.fixture(scope="module")
def api(server, grpc_admin):
    return openai.OpenAI(base_url=server.http_url, api_key=USER_TOKEN, max_retries=0)


@pytest.fixture(scope="module")
def base_name(grpc_admin):
    return grpc_admin.server_info().base_model.name


def test_models_lists_the_base_model_adapters_and_aliases(api, base_name):
    ids = [m.id for m in api.models.list().data]
    assert ids[0] == base_name
    assert {"acme/http-one", "acme/http-prod"} <= set(ids)
    assert not [i for i in ids[1:] if not i.startswith(("acme/", "shared/"))]


def test_a_chat_completion_is_the_same_answer_as_grpc(api, grpc_admin, base_name):
    question = "Name three colours."
    for model, adapter in ((base_name, ""), ("http-prod", "acme/http-prod")):
        reply = api.chat.completions.create(
            model=model, messages=[{"role": "user", "content": question}],
            max_tokens=8, temperature=0,
        )  # fmt: skip
        request = inference_pb2.GenerateRequest(
            adapter=adapter, sampling=inference_pb2.SamplingParams(max_tokens=8)
        )
        request.chat.messages.add(role="user", content=question)
        expected = grpc_admin.generate(request)
        assert reply.choices[0].message.content == expected.text
        assert reply.usage.completion_tokens == expected.usage.completion_tokens
        assert reply.system_fingerprint == (expected.adapter_version or base_name)


def test_streamed_chunks_add_up_to_the_whole_completion(api):
    whole = api.completions.create(model="http-one", prompt="1, 2, 3,", max_tokens=8, temperature=0)
    chunks = list(
        api.completions.create(
            model="http-one", prompt="1, 2, 3,", max_tokens=8, temperature=0, stream=True
        )
    )
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason == "length"


def test_errors_have_the_right_status_and_name_the_problem(server, api):
    with pytest.raises(openai.NotFoundError, match="nobody"):
        api.chat.completions.create(model="nobody", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="temperature"):
        api.completions.create(model="http-one", prompt="hi", temperature=9)
    with pytest.raises(openai.BadRequestError, match="messages"):
        api.chat.completions.create(model="http-one", messages=[])
    for bad in ("x", None, {"schema": "x"}):
        with pytest.raises(openai.BadRequestError, match="response_format"):
            api.chat.completions.create(
                model="http-one", messages=[{"role": "user", "content": "hi"}],
                response_format={"type": "json_schema", "json_schema": bad},  # type: ignore[typeddict-item]
            )  # fmt: skip
    stranger = openai.OpenAI(base_url=server.http_url, api_key="not-a-token", max_retries=0)
    with pytest.raises(openai.AuthenticationError, match="unknown bearer token"):
        stranger.models.list()


def test_a_body_over_the_cap_is_refused_before_it_is_read(server):
    # The headers announce 5 MiB and no byte of it is sent: the answer comes all the same.
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    connection.putrequest("POST", "/v1/completions")
    for name, value in (
        ("Content-Type", "application/json"),
        ("Authorization", f"Bearer {USER_TOKEN}"),
        ("Content-Length", str(5 << 20)),
    ):
        connection.putheader(name, value)
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 413
    assert "body: larger than 4194304 bytes" in response.read().decode()
    connection.close()


def test_http_requests_are_counted_by_route_and_in_the_adapters_series(server, api):
    api.completions.create(model="http-prod", prompt="Hello", max_tokens=2)
    page = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    assert 'adapterd_http_requests_total{code="200",path="/v1/completions"}' in page
    assert 'adapterd_http_requests_total{code="404",path="/v1/chat/completions"}' in page
    assert 'adapterd_generated_tokens_total{adapter="acme/http-prod"}' in page
