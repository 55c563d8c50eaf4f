"""GenerateParams with tools: what a chat may offer and ask for, each refusal naming its field."""

import pytest

from service.errors import InvalidArgumentError
from service.inference.generation import GenerateParams

ADD = {"type": "function", "function": {"name": "add", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}}}  # fmt: skip
NOW = {"type": "function", "function": {"name": "now"}}
ASK = [{"role": "user", "content": "1 + 1?"}]
EARLIER = [
    *ASK,
    {"role": "assistant", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}}]},
    {"role": "tool", "content": "2", "tool_call_id": "c1"},
]  # fmt: skip


def params(**fields):
    return GenerateParams.parse({"messages": ASK, **fields})


def test_tool_choice_decides_what_the_model_sees_and_must_do():
    auto = params(tools=[ADD, NOW])
    assert [t.name for t in auto.offered] == ["add", "now"] and auto.forced == ()
    assert params(tools=[ADD, NOW], tool_choice="none").offered == ()
    assert [t.name for t in params(tools=[ADD, NOW], tool_choice="required").forced] == [
        "add",
        "now",
    ]
    assert [t.name for t in params(tools=[ADD, NOW], tool_choice="now").forced] == ["now"]
    assert not params().uses_tools and params(tools=[ADD]).uses_tools


def test_earlier_calls_render_with_their_arguments_as_objects():
    chat = GenerateParams.parse({"messages": EARLIER, "tools": [ADD]})
    assert chat.uses_tools
    assert chat.template_messages()[1] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"id": "c1", "type": "function",
                        "function": {"name": "add", "arguments": {"a": 1}}}],
    }  # fmt: skip


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"tools": [ADD], "tool_choice": "sub"}, "tool_choice: 'sub' is not auto"),
        ({"tool_choice": "required"}, "'required' needs tools"),
        ({"tools": [ADD], "json_schema": '{"type": "object"}'}, "not both"),
        ({"tools": [{"type": "function", "function": {"name": "none"}}]}, "'none'"),
        ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools[0].function.name"),
        ({"tools": [ADD], "messages": [*EARLIER[:1], {**EARLIER[1], "tool_calls": [
            {"function": {"name": "add", "arguments": '{"a": "x"}'}}]}, EARLIER[2]]},
         "messages[1].tool_calls[0].function.arguments"),
        ({"tools": [ADD], "messages": [{"role": "user", "content": "u", "tool_calls": [
            {"function": {"name": "add", "arguments": {"a": 1}}}]}]},
         "messages[0].tool_calls"),
    ],
)  # fmt: skip
def test_bad_tool_fields_are_invalid_arguments_naming_them(fields, named):
    with pytest.raises(InvalidArgumentError, match=named.replace("[", r"\[").replace("]", r"\]")):
        params(**fields)


def test_only_a_chat_offers_tools():
    with pytest.raises(InvalidArgumentError, match="only a chat may offer tools"):
        GenerateParams.parse({"prompt": "x", "tools": [ADD]})
