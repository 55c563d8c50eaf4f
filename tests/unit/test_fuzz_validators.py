"""The in-process half of the fuzz run: 800 random inputs through the validators every RPC and
route calls first. Each refusal is the validator's own error (which the error table maps to
INVALID_ARGUMENT, NOT_FOUND or PERMISSION_DENIED), never anything that would become INTERNAL.
The over-the-wire half is tests/integration/service/test_fuzz.py."""

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from eval.schema import check_schema
from eval.spec import EvalSpecError, parse_eval_spec
from eval.taskyaml import TaskYamlError, load_task_yaml
from service.auth import Principal, Role
from service.authz import qualify_read, qualify_write
from service.errors import InvalidArgumentError, NotFoundError, PermissionDeniedError
from service.http.openai_api import ChatRequest, params_of
from service.inference.generation import GenerateParams
from trainer.config import TrainConfigError, load_config

CASES = {
    "generation": 110, "tools": 40, "evaluation": 150, "task_yaml": 150, "json_schema": 100,
    "references": 100, "trainer_config": 100, "http_body": 50,
}  # fmt: skip
"""Cases per validator: 800 in all, with the 210 over the wire 1,010."""


def fuzz(name: str) -> settings:
    return settings(
        max_examples=CASES[name], deadline=None, derandomize=True,
        suppress_health_check=list(HealthCheck),
    )  # fmt: skip


scalars = (
    st.none() | st.booleans() | st.integers(-(10**20), 10**20)
    | st.floats(allow_nan=False) | st.text(max_size=30)
)  # fmt: skip
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)  # fmt: skip


def keyed(keys):
    return st.dictionaries(st.sampled_from(keys) | st.text(max_size=10), values, max_size=5)


@fuzz("generation")
@given(
    fields=keyed(["adapter", "messages", "prompt", "sampling", "json_schema", "prompt_logprobs",
                  "tools", "tool_choice"])
)  # fmt: skip
def test_generation_requests(fields):
    try:
        GenerateParams.parse(fields)
    except InvalidArgumentError as exc:
        assert str(exc)


names = st.sampled_from(["add", "now", "none", "a b", ""]) | st.text(max_size=8)
functions = st.fixed_dictionaries(
    {"name": names}, optional={"parameters": values, "description": values, "strict": values}
)
tools = st.lists(st.fixed_dictionaries({"type": st.just("function"), "function": functions})
                 | values, max_size=3)  # fmt: skip
calls = st.lists(
    st.fixed_dictionaries({"function": st.fixed_dictionaries(
        {"name": names}, optional={"arguments": values | st.text(max_size=20)})}) | values,
    max_size=3,
)  # fmt: skip
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant", "tool", "system"])},
        optional={"content": st.text(max_size=10), "tool_calls": calls,
                  "tool_call_id": values},
    ),
    min_size=1, max_size=4,
)  # fmt: skip


@fuzz("tools")
@given(chat=messages, offered=tools, choice=names | values)
def test_generation_requests_with_tools(chat, offered, choice):
    try:
        GenerateParams.parse({"messages": chat, "tools": offered, "tool_choice": choice})
    except InvalidArgumentError as exc:
        assert str(exc)


@fuzz("evaluation")
@given(fields=keyed(["benchmarks", "schema_adherence", "win_rate", "gates", "baseline",
                     "promote_alias"]))  # fmt: skip
def test_evaluation_specs(fields):
    try:
        parse_eval_spec(fields, training=False)
    except EvalSpecError as exc:
        assert str(exc)


TASK_KEYS = ["task", "dataset_path", "doc_to_text", "doc_to_target", "doc_to_choice",
             "metric_list", "filter_list", "generation_kwargs", "dataset_kwargs", "include",
             "num_fewshot", "repeats", "class", "process_docs", "description"]  # fmt: skip
templates = st.sampled_from([
    "{{ question }}", "{{ ''.__class__ }}", "{{ x|attr('y') }}", "{% for a in b %}", "{{",
    "{{ 'a' * 99999999 }}", "{{ range(10**9)|list }}", "{{ lipsum }}",
]) | st.text(max_size=40)  # fmt: skip


@fuzz("task_yaml")
@given(task=keyed(TASK_KEYS), doc_to_text=templates, raw=st.text(max_size=60))
def test_task_yamls(task, doc_to_text, raw):
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        for name, text in (("a.yaml", json.dumps({**task, "doc_to_text": doc_to_text})),
                           ("b.yaml", raw)):  # fmt: skip
            (root / name).write_text(text)
            try:
                load_task_yaml(root / name, root)
            except TaskYamlError as exc:
                assert str(exc).startswith(f"{name}: ")


@fuzz("json_schema")
@given(schema=values | keyed(["type", "pattern", "patternProperties", "properties", "items"]))
def test_json_schemas(schema):
    try:
        check_schema(schema)
    except ValueError as exc:
        assert str(exc)


@fuzz("references")
@given(text=st.text(max_size=80) | st.sampled_from(["globex/x", "shared/x@2", "a/b/c", "x@"]),
       admin=st.booleans())  # fmt: skip
def test_adapter_references(text, admin):
    principal = Principal("acme", Role.ADMIN if admin else Role.USER)
    for qualify in (qualify_read, qualify_write):
        try:
            qualified = qualify(principal, text, "adapter")
        except (InvalidArgumentError, NotFoundError, PermissionDeniedError) as exc:
            assert str(exc).startswith("adapter: ")
        else:
            assert "/" in qualified


@fuzz("trainer_config")
@given(config=keyed(["base_model", "output_dir", "data", "lora", "training", "quantization"]))
def test_trainer_configs(config):
    try:
        load_config(config)
    except TrainConfigError as exc:
        assert str(exc)


@fuzz("http_body")
@given(body=keyed(["model", "messages", "max_tokens", "temperature", "response_format",
                   "stop", "seed", "stream", "tools", "tool_choice"]))  # fmt: skip
def test_http_chat_bodies(body):
    try:
        params_of(ChatRequest.model_validate(body), "base")
    except (ValidationError, InvalidArgumentError) as exc:
        assert str(exc)


def test_the_run_is_800_cases():
    assert sum(CASES.values()) == 800
